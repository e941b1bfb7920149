"""GPT baseline: shapes, causality, rotary positions, the gpt-s preset's size against hyena-s,
parameter groups, one training step through LanguageModelTask, the save_pretrained round trip."""

from __future__ import annotations

import functools
import json
import math

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.gpt import GPTLM, MODEL_TYPE, GPTConfig, apply_rotary, rotary_angles
from models.lm import HyenaLM
from models.tasks import LanguageModelTask, param_groups


def tiny_config(**overrides) -> GPTConfig:
    base = dict(
        vocab_size=61, n_layer=2, d_model=24, n_head=3, d_inner=40, l_max=48, embed_dropout=0.0
    )
    return GPTConfig(**(base | overrides))


def reference_attention(x: torch.Tensor, attn) -> torch.Tensor:
    """The attention's math written out: softmax(q k^T / sqrt(e) + causal mask) v, with the
    rotation of every feature pair as a complex multiplication."""
    B, Lx, d = x.shape
    h, e = attn.n_head, attn.head_dim
    q, k, v = attn.qkv(x).view(B, Lx, 3, h, e).permute(2, 0, 3, 1, 4)  # [B, h, L, e] each

    def rotate(t: torch.Tensor) -> torch.Tensor:
        pairs = torch.complex(t[..., : e // 2], t[..., e // 2 :])
        pos = torch.arange(Lx, dtype=t.dtype)[:, None]
        freq = 10000.0 ** (-torch.arange(0, e, 2, dtype=t.dtype) / e)
        rotated = pairs * torch.polar(torch.ones_like(pos * freq), pos * freq)
        return torch.cat([rotated.real, rotated.imag], dim=-1)

    q, k = rotate(q), rotate(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(e)  # [B, h, L, L]
    future = torch.ones(Lx, Lx, dtype=torch.bool).triu(1)
    y = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    return attn.out_proj(y.transpose(1, 2).reshape(B, Lx, d))


@pytest.mark.parametrize(
    "B, L, n_head, d_model",
    [
        pytest.param(2, 48, 3, 24, id="B2-L48-h3-e8"),
        pytest.param(3, 37, 2, 12, id="B3-L37-h2-e6"),
        pytest.param(1, 1, 4, 16, id="B1-L1-h4-e4"),
    ],
)
def test_attention_matches_written_out_math(B: int, L: int, n_head: int, d_model: int) -> None:
    torch.manual_seed(0)
    model = GPTLM(tiny_config(n_head=n_head, d_model=d_model)).double()
    attn = model.blocks[0].attn
    x = torch.randn(B, L, d_model, dtype=torch.float64)
    angles = rotary_angles(L, attn.head_dim, 10000.0, x.device).double()
    y = attn(x, angles.cos(), angles.sin())
    ref = reference_attention(x, attn)
    assert y.shape == (B, L, d_model)
    # the model's rotary angles are fp32 whatever the weights' dtype: ~1e-10 here, not 1e-16
    assert ((y - ref).norm() / ref.norm()).item() < 1e-8


def test_lm_shapes_and_any_length() -> None:
    torch.manual_seed(0)
    model = GPTLM(tiny_config()).eval()
    assert model.config.padded_vocab_size == 64
    for seq_len in (1, 48, 101):  # rotary positions: past l_max=48 too
        logits = model(torch.randint(0, 61, (2, seq_len)))
        assert logits.shape == (2, seq_len, 64) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"idx must be \[batch, seq_len\]"):
        model(torch.randint(0, 61, (2, 3, 4)))
    with pytest.raises(TypeError, match=r"idx must be integer token ids .*got torch.float32"):
        model(torch.randint(0, 61, (2, 3)).float())


@pytest.mark.parametrize("t", [0, 17, 46])
def test_lm_is_causal(t: int) -> None:
    torch.manual_seed(0)
    model = GPTLM(tiny_config()).eval()
    idx = torch.randint(0, 61, (2, 48))
    changed = idx.clone()
    changed[:, t + 1 :] = (idx[:, t + 1 :] + 1 + torch.randint(0, 59, (2, 47 - t))) % 61
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=1e-6, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().amax() > 1e-3  # the future did change


def test_positions_matter() -> None:
    """Rotary embeddings make the model order-aware: the last logits of a sequence and of the
    same tokens shuffled differ. One layer, since without positions its last output sees only
    the set of keys (from two layers on, the causal mask alone leaks order)."""
    torch.manual_seed(0)
    model = GPTLM(tiny_config(n_layer=1)).eval()
    idx = torch.randint(0, 61, (1, 20))
    shuffled = torch.cat([idx[:, :-1][:, torch.randperm(19)], idx[:, -1:]], dim=1)
    with torch.no_grad():
        assert (model(idx)[:, -1] - model(shuffled)[:, -1]).abs().amax() > 1e-4


def test_rotary_preserves_norm_and_relative_positions() -> None:
    torch.manual_seed(0)
    e, L = 8, 30
    angles = rotary_angles(L, e, 10000.0, torch.device("cpu")).double()
    cos, sin = angles.cos(), angles.sin()
    q, k = torch.randn(2, e, dtype=torch.float64).unbind(0)
    qr = apply_rotary(q.expand(1, 1, L, e), cos, sin)[0, 0]  # the same q at every position
    kr = apply_rotary(k.expand(1, 1, L, e), cos, sin)[0, 0]
    torch.testing.assert_close(qr.norm(dim=-1), q.norm().expand(L))
    scores = qr @ kr.T  # [L, L]: depends on the offset s - t only
    torch.testing.assert_close(scores[3, 7], scores[20, 24])
    torch.testing.assert_close(scores[10, 2], scores[25, 17])
    assert abs(scores[3, 7] - scores[3, 8]) > 1e-6


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = GPTLM(tiny_config())
    logits = model(torch.randint(0, 61, (2, 23)))
    F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 61, (46,))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_gpt_s_matches_hyena_s_in_size() -> None:
    config = GPTConfig.from_name("gpt-s")
    assert config.head_dim == 72 and config.head_dim % 8 == 0  # flash attention's head dims
    with torch.device("meta"):  # full size without allocating it
        gpt = GPTLM(config)
        hyena = HyenaLM.from_name("hyena-s")
    n_gpt, n_hyena = gpt.num_parameters(), hyena.num_parameters()
    print(f"gpt-s {n_gpt / 1e6:.2f}M parameters, hyena-s {n_hyena / 1e6:.2f}M")
    assert abs(n_gpt / n_hyena - 1) < 0.03, (n_gpt, n_hyena)
    h = hyena.config
    same = ("vocab_size", "padded_vocab_size", "n_layer", "d_model", "d_inner", "tie_embeddings")
    assert {k: getattr(config, k) for k in same} == {k: getattr(h, k) for k in same}
    assert gpt.lm_head.weight is gpt.wte.weight  # tied: counted once
    # the preset's length does not change the size (no learned position table)
    with torch.device("meta"):
        assert GPTLM.from_name("gpt-s", l_max=32768).num_parameters() == n_gpt


def test_config_validation_names_the_knob() -> None:
    with pytest.raises(ValueError, match="d_model=24 must be a multiple of model.n_head=5"):
        tiny_config(n_head=5)
    with pytest.raises(ValueError, match="head dim d_model / n_head = 3 must be even"):
        tiny_config(d_model=24, n_head=8)
    with pytest.raises(ValueError, match="model.n_layer must be a positive int; got 0"):
        tiny_config(n_layer=0)
    with pytest.raises(ValueError, match="model.attn_dropout must be in"):
        tiny_config(attn_dropout=1.0)
    with pytest.raises(ValueError, match="unknown model name 'gpt-xl'"):
        GPTConfig.from_name("gpt-xl")


def test_param_groups_split_decay() -> None:
    model = GPTLM(tiny_config())
    groups = param_groups(model)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert groups[1]["weight_decay"] == 0.0 and len(groups) == 2
    ids = {id(p) for p in decay}
    assert id(model.blocks[0].attn.qkv.weight) in ids and id(model.blocks[1].mlp.fc1.weight) in ids
    assert id(model.wte.weight) in {id(p) for p in no_decay}  # embedding (and the tied head)
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_parameters()


def test_one_training_step_through_language_model_task(tmp_path) -> None:
    torch.manual_seed(0)
    net = GPTLM(tiny_config())
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    task = LanguageModelTask(net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    tokens = torch.randint(0, 61, (4, 33))
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train_dataloaders=data)
    assert trainer.global_step == 1
    loss = float(trainer.callback_metrics["train/loss"])
    assert math.isfinite(loss) and abs(loss - math.log(64)) < 1.0  # near uniform at init
    moved = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(moved) == sorted(before)  # AdamW moved every parameter


def test_save_pretrained_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = GPTLM(tiny_config(attn_dropout=0.1)).eval()
    out = model.save_pretrained(tmp_path / "export")
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == MODEL_TYPE and raw["n_head"] == 3
    loaded = GPTLM.from_pretrained(out, attn_dropout=0.0).eval()
    assert loaded.config.attn_dropout == 0.0 and loaded.lm_head.weight is loaded.wte.weight
    idx = torch.randint(0, 61, (2, 19))
    assert torch.equal(model(idx), loaded(idx))
    with pytest.raises(FileNotFoundError, match="not a save_pretrained directory"):
        GPTLM.from_pretrained(tmp_path / "missing")
    # the generic loader (eval.py on an export folder) dispatches on model_type
    from models.hub import from_pretrained

    generic = from_pretrained(out).eval()
    assert isinstance(generic, GPTLM) and torch.equal(model(idx), generic(idx))


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"]
)
def test_cached_decoding_is_the_forward(dtype, tol) -> None:
    """Keys and values kept: a prefill, then positions one and three at a time (the three
    attend to each other causally, and to all before them), past l_max too (rotary
    positions): the logits of one forward over the whole sequence."""
    torch.manual_seed(0)
    model = GPTLM(tiny_config(initializer_range=0.2)).to(dtype).eval()
    idx = torch.randint(0, 61, (2, 70))  # l_max = 48
    with torch.no_grad():
        full = model(idx)
        for prefill in (1, 20):
            cache = model._new_cache()
            got, ends, t = [model._cached_logits(idx[:, :prefill], cache)], [prefill], prefill
            while t < idx.shape[1]:
                step = 3 if t % 2 else 1
                got.append(model._cached_logits(idx[:, t : t + step], cache))
                t = min(t + step, idx.shape[1])
                ends.append(t)
            assert cache["pos"] == idx.shape[1]
            ref = torch.stack([full[:, e - 1] for e in ends], dim=1)
            err = ((torch.stack(got, dim=1) - ref).norm() / ref.norm()).item()
            assert err < tol, f"prefill {prefill}: rel err {err:.2e}"


def test_generate_with_and_without_the_cache() -> None:
    """fp64, so that no argmax or draw can fall differently: greedy equals the argmax of a
    whole forward per token, cached or not; seeded sampling too; past l_max as well."""
    torch.manual_seed(0)
    model = GPTLM(tiny_config(initializer_range=0.2, embed_dropout=0.1)).double()
    idx = torch.randint(0, 61, (3, 30))
    out = model.generate(idx, 25, temperature=0.0)
    assert model.training and out.shape == (3, 55)  # the mode is restored
    assert torch.equal(out, model.generate(idx, 25, temperature=0.0, use_cache=False))
    ref = idx
    model.eval()
    with torch.no_grad():
        for _ in range(25):
            ref = torch.cat([ref, model(ref)[:, -1, :61].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)

    def draw(use_cache: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(4)
        return model.generate(idx, 25, top_p=0.9, generator=g, use_cache=use_cache)

    assert torch.equal(draw(True), draw(False))
