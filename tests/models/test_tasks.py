"""Task plumbing: the LR schedule and plain-data hyperparameters in checkpoints."""

from __future__ import annotations

import functools

import pytest
import torch

from models.tasks import WarmupCosine, as_factory, to_plain, warmup_cosine


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    ramp = [f(s) for s in range(11)]
    assert ramp == sorted(ramp) and ramp[0] < 0.1 and ramp[10] == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110)
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.55)
    with pytest.raises(ValueError, match="trainer.max_steps"):
        warmup_cosine(opt, warmup_steps=10, total_steps=-1)


def test_partials_become_plain_hydra_configs() -> None:
    opt = functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.98))
    plain = to_plain({"optimizer": opt, "n": 3, "name": None})
    assert plain == {
        "optimizer": {
            "_target_": "torch.optim.adamw.AdamW",
            "_partial_": True,
            "lr": 1e-3,
            "betas": [0.9, 0.98],
        },
        "n": 3,
        "name": None,
    }
    rebuilt = as_factory(plain["optimizer"])([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(rebuilt, torch.optim.AdamW) and tuple(rebuilt.defaults["betas"]) == (
        0.9,
        0.98,
    )


def test_warmup_fraction_follows_total_steps() -> None:
    for total, expected_warmup in ((1000, 10), (30000, 300)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
        sched = warmup_cosine(opt, total_steps=total, warmup_fraction=0.01)
        assert sched.lr_lambdas[0].warmup_steps == expected_warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(ValueError, match="exactly one of warmup_steps and warmup_fraction"):
        warmup_cosine(opt, total_steps=100, warmup_steps=5, warmup_fraction=0.01)
    with pytest.raises(ValueError, match="exactly one of warmup_steps and warmup_fraction"):
        warmup_cosine(opt, total_steps=100)
    with pytest.raises(ValueError, match="warmup_fraction must be in"):
        warmup_cosine(opt, total_steps=100, warmup_fraction=1.5)
