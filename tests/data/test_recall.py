"""Associative recall: the examples, their determinism, resuming, the task's ignore_index, and
(slow) a small model learning the task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.nn import functional as F

from data.recall import IGNORE_INDEX, RecallDataModule, RecallDataset, RecallTokenizer
from models.tasks import LanguageModelTask

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def check_example(ds: RecallDataset, index: int) -> None:
    """Every property of one example, from its inputs and targets alone."""
    tok = ds.tokenizer
    inputs, targets = (t.numpy() for t in ds[index])
    assert inputs.shape == targets.shape == (ds.seq_len,)
    assert inputs.dtype == targets.dtype == np.int64
    p, n = ds.offset, ds.num_pairs
    assert (inputs[:p] == tok.pad_id).all()
    keys, values = inputs[p : p + 2 * n : 2], inputs[p + 1 : p + 2 * n : 2]
    assert ((0 <= keys) & (keys < tok.num_keys)).all()  # disjoint halves of the vocabulary
    assert ((tok.value_offset <= values) & (values < tok.sep_id)).all()
    assert inputs[-2] == tok.sep_id
    query = inputs[-1]
    assert query in keys  # the query key is one of the keys present
    mapping = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        assert mapping.setdefault(k, v) == v  # one value per key within an example
    answer = targets[-1]
    assert answer == mapping[int(query)]
    supervised = targets != IGNORE_INDEX
    if ds.targets == "answer":
        assert supervised.sum() == 1
    else:  # the value of every key seen before, predicted at the key's position
        seen: set[int] = set()
        expected = np.zeros(ds.seq_len, dtype=bool)
        for j, k in enumerate(keys.tolist()):
            expected[p + 2 * j] = k in seen
            seen.add(k)
        expected[-1] = True
        assert (supervised == expected).all()
        assert (
            targets[p : p + 2 * n : 2][expected[p : p + 2 * n : 2]]
            == values[expected[p : p + 2 * n : 2]]
        ).all()


@pytest.mark.parametrize(
    "seq_len, vocab_size, num_pairs, targets",
    [
        pytest.param(64, 10, None, "answer", id="L64-V10-full-answer"),
        pytest.param(97, 30, None, "recalls", id="L97-V30-full-recalls"),  # odd: one pad
        pytest.param(50, 7, 9, "recalls", id="L50-V7-P9-padded"),  # odd vocab: 2 keys, 3 values
        pytest.param(4, 4, None, "answer", id="L4-V4-smallest"),
    ],
)
def test_examples_are_well_formed(seq_len, vocab_size, num_pairs, targets) -> None:
    tok = RecallTokenizer(vocab_size)
    for split in ("train", "val", "test"):
        ds = RecallDataset(
            tok, seq_len, 40, num_pairs=num_pairs, split=split, seed=3, targets=targets
        )
        for index in range(40):
            check_example(ds, index)


def test_examples_are_deterministic_per_seed_split_index() -> None:
    a = RecallDataModule(seq_len=61, vocab_size=20, train_targets="recalls", seed=5)
    b = RecallDataModule(seq_len=61, vocab_size=20, train_targets="recalls", seed=5)
    c = RecallDataModule(seq_len=61, vocab_size=20, train_targets="recalls", seed=6)
    for split in ("train", "val", "test"):
        for index in (0, 7, 511):
            x, y = a.datasets[split][index]
            x2, y2 = b.datasets[split][index]
            assert torch.equal(x, x2) and torch.equal(y, y2)
            assert not torch.equal(x, c.datasets[split][index][0])  # another seed
    # splits and indices draw different examples
    firsts = [a.datasets[s][0][0] for s in ("train", "val", "test")] + [a.datasets["val"][1][0]]
    assert len({tuple(x.tolist()) for x in firsts}) == 4
    # val and test score the query's answer only, whatever the training targets
    assert (a.datasets["val"][0][1] != IGNORE_INDEX).sum() == 1
    assert (a.datasets["train"][0][1] != IGNORE_INDEX).sum() > 1


def test_answers_are_not_biased() -> None:
    """Over many examples every value answers about equally often (no position or token
    shortcut), and the answer is rarely the most recent value (the task needs the lookup)."""
    ds = RecallDataset(RecallTokenizer(12), 40, 1000, split="test", seed=0)
    answers = np.array([int(ds[i][1][-1]) for i in range(len(ds))])
    counts = np.bincount(answers - ds.tokenizer.value_offset, minlength=5)
    assert counts.min() > 140 and counts.max() < 260  # 5 values, 200 expected each
    last_value = np.array([int(ds[i][0][-3]) for i in range(len(ds))])
    assert (answers == last_value).mean() < 0.5


def test_tokenizer_round_trip_and_errors() -> None:
    tok = RecallTokenizer(10)
    assert (tok.num_keys, tok.num_values, tok.sep_id, tok.pad_id) == (4, 4, 8, 9)
    text = "k3 v1 k0 v2 => k3"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("_ k0 v3") == [9, 0, 7]
    with pytest.raises(ValueError, match="unknown recall token 'k4'"):
        tok.encode("k4")
    with pytest.raises(ValueError, match=r"\[0, 10\); got 10"):
        tok.decode([10])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"vocab_size": 3}, "data.vocab_size must be an int >= 4", id="vocab"),
        pytest.param({"seq_len": 3}, "data.seq_len must be >= 4", id="seq_len"),
        pytest.param({"seq_len": 20, "num_pairs": 10}, r"num_pairs must be in \[1, 9\]", id="np"),
        pytest.param({"num_pairs": 0}, "num_pairs must be in", id="np0"),
        pytest.param({"train_targets": "all"}, "train_targets must be one of", id="targets"),
        pytest.param({"val_examples": 0}, "data.val_examples must be a positive int", id="val"),
        pytest.param({"train_examples": 4, "batch_size": 8}, "fewer than one batch", id="few"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        RecallDataModule(**kwargs)


def test_training_order_resumes_mid_epoch() -> None:
    dm = RecallDataModule(seq_len=16, vocab_size=10, train_examples=40, batch_size=4, seed=2)
    reference = [x for x, _ in dm.train_dataloader()]
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = [x for x, _ in resumed]
    assert len(rest) == len(reference) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, reference[3:], strict=True))


class Fixed(torch.nn.Module):
    """A 'network' that returns fixed logits, to test the task's loss and accuracy."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_task_scores_only_supervised_targets() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 7)
    targets = torch.randint(0, 7, (3, 11))
    task = LanguageModelTask(Fixed(logits), optimizer=torch.optim.SGD)

    # plain LM batch: the mean over every position, as before
    loss, acc, n = task._step((torch.zeros(3, 11, dtype=torch.long), targets))
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    torch.testing.assert_close(acc, (logits.argmax(-1) == targets).float().mean())
    assert int(n) == 33

    # recall-style batch: only the non-ignored positions count
    mask = torch.zeros(3, 11, dtype=torch.bool)
    mask[:, -1] = True
    mask[1, 4] = True
    masked = targets.masked_fill(~mask, IGNORE_INDEX)
    masked[0, -1] = logits[0, -1].argmax()  # one hit for sure
    loss, acc, n = task._step((torch.zeros(3, 11, dtype=torch.long), masked))
    ref_loss = F.cross_entropy(logits[mask], masked[mask])
    ref_acc = (logits[mask].argmax(-1) == masked[mask]).float().mean()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(acc, ref_acc)
    assert int(n) == 4 and acc > 0

    # nothing supervised: zero loss with zero weight, never NaN
    loss, acc, n = task._step(
        (torch.zeros(3, 11, dtype=torch.long), torch.full_like(targets, -100))
    )
    assert float(loss) == 0.0 and int(n) == 0


def run_experiment(output_dir: Path, overrides: list[str]) -> dict[str, float]:
    """``python train.py experiment=recall/hyena-tiny <overrides>``, in process; its metrics."""
    import train as train_entry

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["experiment=recall/hyena-tiny", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    metrics, _ = train_entry.train(cfg)
    print(metrics)
    return metrics


@pytest.mark.slow
def test_small_recall_is_learned(tmp_path) -> None:
    """hyena-tiny through the real experiment config, shrunk to seq_len 64 and 10 tokens (4 keys,
    4 values: chance is 25%), learns recall well above chance in about a minute on 2 cores."""
    metrics = run_experiment(
        tmp_path,
        [
            "trainer=cpu",
            "model.l_max=64",
            "data.vocab_size=10",
            "data.batch_size=32",
            "data.num_workers=0",
            "data.test_examples=512",
            "trainer.max_steps=250",
            "trainer.val_check_interval=250",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=8",
            "logger=[]",
            "callbacks=none",
            "export=false",
        ],
    )
    assert math.isfinite(metrics["test/loss"])
    assert metrics["test/acc"] > 0.8, metrics  # chance: 0.25


@pytest.mark.gpu
@pytest.mark.slow
def test_recall_experiment_solves_2k_on_gpu(tmp_path) -> None:
    """The experiment as shipped (2K tokens, vocab 20, 3000 steps): minutes on one GPU."""
    metrics = run_experiment(tmp_path, ["trainer=gpu", "export=false"])
    assert metrics["test/acc"] > 0.9, metrics  # chance: 1/9
