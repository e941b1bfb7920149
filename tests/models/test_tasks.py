"""Task plumbing: the LR schedule, plain-data hyperparameters in checkpoints, and the compiled
trunk (``compile=``)."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from models import HyenaLM
from models.tasks import (
    LanguageModelTask,
    WarmupCosine,
    as_factory,
    to_plain,
    warmup_cosine,
)


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


# ---------------------------------------------------------------------------------------------
# task.compile: torch.compile of the trunk


def _fit_tiny_hyena(
    compile_mode, steps=3, device="cpu", backend="torch", seq_len=32, **trainer_kwargs
):
    """A few batches of a small hyena-tiny through the task; returns (losses, net)."""
    torch.manual_seed(0)
    net = HyenaLM.from_name("hyena-tiny", l_max=seq_len, vocab_size=61, fftconv_backend=backend)
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    task = LanguageModelTask(
        net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), compile=compile_mode
    )
    batches = steps * trainer_kwargs.get("accumulate_grad_batches", 1)
    tokens = torch.randint(
        0, 61, (2 * batches, seq_len + 1), generator=torch.Generator().manual_seed(1)
    )
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2)
    losses: list[float] = []
    grads_at_start: dict[str, int | None] = {}

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            if not grads_at_start:
                for name, p in net.named_parameters():
                    grads_at_start[name] = None if p.grad is None else p.grad.data_ptr()

    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        **trainer_kwargs,
    )
    trainer.fit(task, train_dataloaders=data)
    net.grads_at_start = grads_at_start  # for the tests: where each .grad lived after batch 1
    net.initial = initial
    return losses, net


def assert_moved_alike(net, ref, tol):
    """Each parameter of ``net`` ended where ``ref``'s did, within ``tol`` of how far ``ref``'s
    moved (norms; compiled and eager differ by rounding, which Adam's normalised update spreads
    over the smallest gradients, so an elementwise bound would test the rounding)."""
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        moved = (q - ref.initial[name]).norm()
        assert moved > 0, name
        assert (p - q).norm() <= tol * moved, (name, float((p - q).norm() / moved))


def test_compile_mode_is_checked() -> None:
    net = HyenaLM.from_name("hyena-tiny", l_max=32, vocab_size=61)
    with pytest.raises(ValueError, match=r"compile must be None or one of .*'fast'"):
        LanguageModelTask(net, optimizer=torch.optim.SGD, compile="fast")


def test_compiled_trunk_trains_as_eager() -> None:
    """compile="default": the trunk goes through dynamo and inductor (a graph is compiled and
    ``net.hidden`` is the compiled callable), and three AdamW steps give eager's losses."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, _ = _fit_tiny_hyena(None)
    compiled, net = _fit_tiny_hyena("default")
    try:
        assert "hidden" in vars(net)  # the instance's compiled trunk, not the class's method
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
        assert len(compiled) == len(eager) == 3
        for a, b in zip(compiled, eager, strict=True):
            assert math.isfinite(a) and a == pytest.approx(b, rel=1e-4)
    finally:
        torch._dynamo.reset()


def test_graph_modes_keep_gradients_allocated_across_accumulation() -> None:
    """reduce-overhead (no graphs on CPU, the same task logic): two accumulated batches per
    step give eager's losses and parameters, and every .grad is the tensor that held the first
    batch's gradient, zeroed in place, never replaced (a graph replay would overwrite a .grad
    that is its output memory). Eager training replaces them (set to None at each step)."""
    eager, eager_net = _fit_tiny_hyena(None, steps=2, accumulate_grad_batches=2)
    graphs, graphs_net = _fit_tiny_hyena("reduce-overhead", steps=2, accumulate_grad_batches=2)
    try:
        assert len(graphs) == len(eager) == 4
        for a, b in zip(graphs, eager, strict=True):
            assert a == pytest.approx(b, rel=1e-4)
        for name, p in graphs_net.named_parameters():
            assert p.grad is not None and p.grad.data_ptr() == graphs_net.grads_at_start[name]
        assert_moved_alike(graphs_net, eager_net, 0.01)
        moved = [
            n
            for n, p in eager_net.named_parameters()
            if p.grad.data_ptr() != eager_net.grads_at_start[n]
        ]
        assert moved, "eager training kept its gradient tensors: the check above proves nothing"
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_reduce_overhead_trains_as_compiled_without_graphs() -> None:
    """compile="reduce-overhead" on the GPU with the triton kernels (L = 512: the fused
    kernels), two accumulated batches per step: the trunk's forward and backward replay as
    CUDA graphs. Against compile="default" (the same compiled code, launched one kernel at a
    time) the six losses and the parameters after three steps agree to rounding: the graphs'
    reuse of their output memory corrupts nothing, accumulated gradients included. Against
    eager, the first loss agrees to rounding and the rest as closely as compiled code can."""
    kw = dict(steps=3, device="gpu", backend="triton", seq_len=512, accumulate_grad_batches=2)
    runs = {}
    try:
        for mode in (None, "default", "reduce-overhead"):
            torch._dynamo.reset()
            runs[mode] = _fit_tiny_hyena(mode, **kw)
    finally:
        torch._dynamo.reset()
    (eager, eager_net), (plain, plain_net), (graphs, graphs_net) = runs.values()
    assert len(graphs) == len(plain) == len(eager) == 6
    assert all(math.isfinite(x) for x in graphs)
    assert graphs == pytest.approx(plain, rel=1e-5)
    assert_moved_alike(graphs_net, plain_net, 1e-3)
    assert graphs[0] == pytest.approx(eager[0], rel=1e-4)
    assert graphs == pytest.approx(eager, rel=1e-2)
    assert_moved_alike(graphs_net, eager_net, 0.05)
