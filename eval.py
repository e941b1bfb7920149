"""Evaluate or sample a model: ``python eval.py ckpt_path=<ckpt or exported dir> [...]``.

``ckpt_path`` is a Lightning checkpoint written by ``train.py`` (its run's model and data config
travel inside it; ``model.*``/``data.*`` on the command line still apply) or a
``save_pretrained`` folder. For a folder the data config is, in this order: a ``data=<name>``
given on the command line; the config of the training run the folder was exported from
(``<run>/.hydra/config.yaml`` next to ``<run>/export``), with ``data.*`` overrides; this run's
default data config.

A ``data.*`` key that this run's default data config (stdlib_text) lacks is given with ``++``
(e.g. ``++data.val_examples=64`` for a recall checkpoint), as Hydra requires for new keys.

Loss: prints the split's loss, perplexity and accuracy (``split=test|val``). ``seq_len``
evaluates at another length; past the model's ``l_max`` that needs a partial convolution:
``filter_len=<taps>``.

Sampling: ``sample.prompts`` (one prompt or a list; a prompt is text, encoded with the data
module's tokenizer, or a list of token ids; "" starts from the tokenizer's BOS/EOS token)
samples ``sample.num_samples`` continuations of ``sample.max_new_tokens`` tokens each per
prompt (``temperature`` 0 = greedy, ``top_k``, ``top_p``, ``seed``), cut at the tokenizer's EOS
when ``sample.stop_at_eos``, decoded and printed. ``sample_only=true`` skips the loss pass;
``output=<file.json>`` writes the metrics and samples. Quote prompts for the shell and Hydra:
``'sample.prompts=["def main(", "import "]'``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from models.hub import from_pretrained, is_pretrained_dir
from train import instantiate_callbacks, register_resolvers

register_resolvers()

SPLITS = ("test", "val")
RUN_CONFIG = Path(".hydra") / "config.yaml"  # where Hydra keeps a run's composed config


def _run_sections(
    cfg: DictConfig, ckpt_path: Path
) -> tuple[DictConfig, DictConfig, DictConfig, dict[str, Any] | None]:
    """(model, data, task) configs and the checkpoint's state dict (None for an exported dir)."""
    if is_pretrained_dir(ckpt_path):
        return cfg.model, _export_data_config(cfg, ckpt_path), cfg.task, None
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} is neither a checkpoint file nor a save_pretrained directory"
        )
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run = checkpoint.get("run_config")
    if run is None:  # a checkpoint from elsewhere: this run's config describes it
        return cfg.model, cfg.data, cfg.task, checkpoint["state_dict"]
    # the command line still wins: e.g. data.eval_batch_size=4 or model.fftconv_backend=torch
    sections = (
        OmegaConf.merge(run[k], command_line_overrides(k)) for k in ("model", "data", "task")
    )
    return *sections, checkpoint["state_dict"]


def command_line_overrides(section: str) -> DictConfig:
    """This run's ``<section>.key=value`` command-line overrides, as a config of ``section``."""
    if not HydraConfig.initialized():
        return OmegaConf.create()
    prefix = f"{section}."
    dotlist = [
        o.lstrip("+").removeprefix(prefix)
        for o in HydraConfig.get().overrides.task
        if o.lstrip("+").startswith(prefix)
    ]
    return OmegaConf.from_dotlist(dotlist)


def _group_chosen_on_command_line(group: str) -> bool:
    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").startswith(f"{group}=") for o in HydraConfig.get().overrides.task)


def _export_data_config(cfg: DictConfig, export_dir: Path) -> DictConfig:
    """The data config of an exported folder's training run (see the module docstring)."""
    run_file = export_dir.resolve().parent / RUN_CONFIG
    if _group_chosen_on_command_line("data") or not run_file.is_file():
        return cfg.data
    run = OmegaConf.load(run_file)
    if "data" not in run:
        return cfg.data
    # resolve the run's data section against this machine's paths (cache_dir), its own model
    with open_dict(run):
        run.paths = cfg.paths
    data = OmegaConf.create(OmegaConf.to_container(run.data, resolve=True))
    return OmegaConf.merge(data, command_line_overrides("data"))


# ---------------------------------------------------------------------------------------------
# Sampling


def _prompts(sample_cfg: DictConfig) -> list[str | list[int]]:
    """``sample.prompts`` as a list of prompts (text, or token ids)."""
    prompts = sample_cfg.get("prompts")
    if prompts is None:
        return []
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, ListConfig | list):
        raise TypeError(f"sample.prompts must be a string or a list; got {prompts!r}")
    out: list[str | list[int]] = []
    for p in prompts:
        if isinstance(p, ListConfig | list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in p
        ):
            out.append([int(t) for t in p])
        elif isinstance(p, str):
            out.append(p)
        else:
            raise TypeError(
                f"each of sample.prompts must be text or a list of token ids; got {p!r}"
            )
    return out


def _token_id(tokenizer: Any, *attrs: str) -> int | None:
    for attr in attrs:
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Text to ids with a data module's tokenizer: ours, a transformers tokenizer (no special
    tokens added) or a ``tokenizers.Tokenizer``."""
    if "add_special_tokens" in inspect.signature(tokenizer.encode).parameters:
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(text)
    return [int(i) for i in getattr(ids, "ids", ids)]  # a tokenizers.Encoding carries .ids


def _check_sample_config(s: DictConfig) -> None:
    for name in ("max_new_tokens", "num_samples"):
        value = s.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sample.{name} must be an int >= 1; got {value!r}")
    if s.get("seed") is not None and (isinstance(s.seed, bool) or not isinstance(s.seed, int)):
        raise ValueError(f"sample.seed must be null or an int; got {s.seed!r}")


def sample(
    net: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | list[int]],
    sample_cfg: DictConfig,
    trainer: L.Trainer,
) -> list[dict[str, Any]]:
    """``sample_cfg.num_samples`` continuations of each prompt, on the trainer's device and in its
    precision. Each is a dict: prompt, sample index, completion text and ids, whether it
    stopped at EOS."""
    _check_sample_config(sample_cfg)
    if not hasattr(net, "generate"):
        raise TypeError(f"{type(net).__name__} cannot generate text (no generate method)")
    needs_text = any(isinstance(p, str) for p in prompts)
    if needs_text and tokenizer is None:
        raise ValueError(
            "text prompts need the data module's tokenizer, and this data module has none; "
            "give sample.prompts as lists of token ids"
        )
    start_id = _token_id(tokenizer, "bos_token_id", "eos_token_id", "eos_id")
    eos_id = _token_id(tokenizer, "eos_token_id", "eos_id") if sample_cfg.stop_at_eos else None
    device = trainer.strategy.root_device
    net = net.to(device)
    generator = None
    if sample_cfg.get("seed") is not None:
        generator = torch.Generator(device=device).manual_seed(sample_cfg.seed)

    results = []
    for prompt in prompts:
        ids = _encode(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            if start_id is None:
                raise ValueError(
                    "an empty prompt starts from the tokenizer's BOS/EOS token, and this "
                    "tokenizer has none; give a non-empty prompt"
                )
            ids = [start_id]
        idx = torch.tensor([ids] * sample_cfg.num_samples, dtype=torch.long, device=device)
        with trainer.precision_plugin.forward_context():
            out = net.generate(
                idx,
                sample_cfg.max_new_tokens,
                temperature=float(sample_cfg.temperature),
                top_k=sample_cfg.get("top_k"),
                top_p=sample_cfg.get("top_p"),
                eos_token_id=eos_id,
                generator=generator,
            )
        for j, row in enumerate(out[:, len(ids) :].tolist()):
            stopped = eos_id is not None and eos_id in row
            completion = row[: row.index(eos_id)] if stopped else row
            text = tokenizer.decode(completion) if tokenizer is not None else None
            results.append(
                {
                    "prompt": prompt,
                    "sample": j,
                    "completion": text,
                    "completion_ids": completion,
                    "stopped_at_eos": stopped,
                }
            )
    return results


def _print_samples(samples: list[dict[str, Any]]) -> None:
    for s in samples:
        prompt = s["prompt"] if isinstance(s["prompt"], str) else f"<ids {s['prompt']}>"
        body = s["completion"] if s["completion"] is not None else f"<ids {s['completion_ids']}>"
        end = " <eos>" if s["stopped_at_eos"] else ""
        print(f"--- sample {s['sample']} of {prompt!r}{end}\n{prompt}{body}", flush=True)


# ---------------------------------------------------------------------------------------------


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Loads the model from ``cfg.ckpt_path``; runs the ``cfg.split`` split (unless
    ``cfg.sample_only``) and samples from ``cfg.sample.prompts``."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {cfg.split!r}")
    sample_cfg = cfg.get("sample") or OmegaConf.create({})
    prompts = _prompts(sample_cfg)
    if cfg.get("sample_only") and not prompts:
        raise ValueError("sample_only=true needs sample.prompts (one prompt or a list)")
    if prompts:
        _check_sample_config(sample_cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = Path(cfg.ckpt_path)
    model_cfg, data_cfg, task_cfg, state_dict = _run_sections(cfg, ckpt_path)

    overrides = {"filter_len": cfg.filter_len} if cfg.get("filter_len") else {}
    if state_dict is None:
        net = from_pretrained(ckpt_path, **overrides)
    else:
        model_cfg = OmegaConf.merge(model_cfg, overrides)
        net = hydra.utils.instantiate(model_cfg)
    task = hydra.utils.instantiate(task_cfg, net=net)
    if state_dict is not None:
        task.load_state_dict(state_dict)

    l_max = getattr(getattr(net, "config", None), "l_max", None)
    seq_len = cfg.get("seq_len")
    if seq_len and l_max and seq_len > l_max and getattr(net.config, "filter_len", None) is None:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's l_max={l_max}; set filter_len=<taps> (a "
            f"partial convolution, e.g. filter_len={l_max}) to evaluate past the training length"
        )

    data_cfg = OmegaConf.merge(data_cfg, {})
    with open_dict(data_cfg):
        if cfg.get("seq_len"):
            data_cfg.seq_len = cfg.seq_len
        elif state_dict is None and hasattr(net, "config"):
            data_cfg.seq_len = net.config.l_max
        if cfg.get("batch_size"):
            data_cfg.eval_batch_size = cfg.batch_size
    datamodule: L.LightningDataModule = hydra.utils.instantiate(data_cfg)

    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=False
    )
    metrics: dict[str, float] = {}
    if not cfg.get("sample_only"):
        run = trainer.test if cfg.split == "test" else trainer.validate
        run(task, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        loss = metrics.get(f"{cfg.split}/loss", math.nan)
        acc = metrics.get(f"{cfg.split}/acc", math.nan)
        print(
            f"{cfg.split}/loss: {loss:.4f}  {cfg.split}/ppl: {math.exp(loss):.4f}  "
            f"{cfg.split}/acc: {acc:.4f}  (seq_len {data_cfg.seq_len}, {ckpt_path})",
            flush=True,
        )

    samples: list[dict[str, Any]] = []
    if prompts:
        tokenizer = getattr(datamodule, "tokenizer", None)
        samples = sample(net, tokenizer, prompts, sample_cfg, trainer)
        _print_samples(samples)

    if cfg.get("output"):
        report = {
            "ckpt_path": str(ckpt_path),
            "split": None if cfg.get("sample_only") else cfg.split,
            "seq_len": data_cfg.get("seq_len"),
            "filter_len": getattr(getattr(net, "config", None), "filter_len", None),
            "metrics": metrics,
            "sample_config": OmegaConf.to_container(sample_cfg, resolve=True),
            "samples": samples,
        }
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out.resolve()}", flush=True)
    return metrics, {
        "net": net,
        "task": task,
        "datamodule": datamodule,
        "trainer": trainer,
        "samples": samples,
    }


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
