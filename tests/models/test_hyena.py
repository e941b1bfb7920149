"""Hyena operator and LM: shapes, causality, the paper's math, partial convolutions, presets,
parameter groups and the save_pretrained round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from models import HyenaConfig, HyenaLM, HyenaOperator, from_pretrained
from models.tasks import param_groups


def reference_operator(op: HyenaOperator, u: torch.Tensor) -> torch.Tensor:
    """The safari implementation's math, unfused: conv1d short filter, FFT long convolutions
    with the D skip inside each step, the first gate applied last."""
    L, d = u.shape[1], op.d_model
    taps = min(L, op.filter_len or L)
    z = op.in_proj(u).transpose(1, 2)
    K = op.short_filter.shape[1]
    z = F.conv1d(
        z, op.short_filter[:, None], op.short_filter_bias, padding=K - 1, groups=z.shape[1]
    )[..., :L]
    *x, v = z.split(d, dim=1)
    k = op.filter(taps).reshape(op.order - 1, d, taps)
    skip = op.filter.bias.reshape(op.order - 1, d)
    n = 2 * L
    for step, gate in enumerate(reversed(x[1:])):
        v = v * gate
        conv = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k[step], n=n), n=n)
        v = conv[..., :L] + v * skip[step][:, None]
    return op.out_proj((v * x[0]).transpose(1, 2))


def tiny_config(**overrides) -> HyenaConfig:
    base = dict(
        vocab_size=61,
        n_layer=2,
        d_model=16,
        d_inner=32,
        l_max=48,
        filter_order=8,
        emb_dim=3,
        embed_dropout=0.0,
    )
    return HyenaConfig(**(base | overrides))


@pytest.mark.parametrize(
    "order, d_model, L",
    [
        pytest.param(2, 16, 48, id="o2-d16-L48"),
        pytest.param(3, 8, 37, id="o3-d8-L37"),
        pytest.param(2, 12, 1, id="o2-d12-L1"),
    ],
)
def test_operator_shapes_and_reference(order: int, d_model: int, L: int) -> None:
    torch.manual_seed(0)
    op = HyenaOperator(d_model, l_max=48, order=order, filter_order=8).double()
    u = torch.randn(3, L, d_model, dtype=torch.float64)
    y = op(u)
    assert y.shape == (3, L, d_model)
    ref = reference_operator(op, u)
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10), (y - ref).abs().max()


def test_operator_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    op = HyenaOperator(8, l_max=32, order=3, filter_order=8)
    op(torch.randn(2, 32, 8)).square().sum().backward()
    missing = [n for n, p in op.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


@pytest.mark.parametrize("filter_len", [None, 8], ids=["full", "partial"])
def test_operator_is_causal(filter_len: int | None) -> None:
    torch.manual_seed(0)
    op = HyenaOperator(8, l_max=40, filter_order=8, filter_len=filter_len).double()
    u = torch.randn(2, 40, 8, dtype=torch.float64)
    t = 23
    u2 = u.clone()
    u2[:, t + 1 :] = torch.randn_like(u2[:, t + 1 :])
    y, y2 = op(u), op(u2)
    # FFT round-off spreads across the sequence: equal to float64 precision, not bitwise
    assert (y[:, : t + 1] - y2[:, : t + 1]).abs().max() < 1e-12
    assert (y[:, t + 1 :] - y2[:, t + 1 :]).abs().max() > 1e-3  # the change does propagate


def test_lm_is_causal() -> None:
    torch.manual_seed(0)
    model = HyenaLM(tiny_config()).double().eval()
    idx = torch.randint(0, 61, (2, 48))
    idx2 = idx.clone()
    idx2[:, 30:] = (idx2[:, 30:] + 1) % 61
    a, b = model(idx), model(idx2)
    assert a.shape == (2, 48, 64)  # vocab padded to a multiple of 8
    assert (a[:, :30] - b[:, :30]).abs().max() < 1e-12
    assert not torch.allclose(a[:, 30:], b[:, 30:])


def test_partial_conv_runs_past_l_max() -> None:
    torch.manual_seed(0)
    op = HyenaOperator(8, l_max=32, filter_order=8, filter_len=12).double()
    u = torch.randn(2, 100, 8, dtype=torch.float64)  # 3x past l_max
    y = op(u)
    assert y.shape == (2, 100, 8) and torch.isfinite(y).all()
    ref = reference_operator(op, u)  # a 12-tap filter over the whole sequence
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10)
    # lags >= filter_len are cut: the output at t ignores u[t - 12] (except through the short
    # conv of the gates, which reaches back 2 steps)
    u2 = u.clone()
    u2[:, 50] += 1.0
    diff = (op(u2) - y).abs().amax(dim=(0, 2))
    assert diff[50:62].min() > 1e-6 and diff[62 + 2 :].max() < 1e-12 and diff[:50].max() < 1e-12


def test_sequence_past_l_max_without_filter_len_names_the_knob() -> None:
    op = HyenaOperator(8, l_max=32, filter_order=8)
    with pytest.raises(
        ValueError,
        match=r"sequence length 33 exceeds l_max=32; set model\."
        r"filter_len to run past the training length",
    ):
        op(torch.randn(1, 33, 8))
    model = HyenaLM(tiny_config(l_max=16))
    with pytest.raises(ValueError, match="model.filter_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 64)


def test_filter_len_equal_to_l_max_matches_full_filter() -> None:
    torch.manual_seed(0)
    full = HyenaLM(tiny_config()).eval()
    partial = HyenaLM(tiny_config(filter_len=48)).eval()
    partial.load_state_dict(full.state_dict())
    idx = torch.randint(0, 61, (2, 40))
    assert torch.equal(full(idx), partial(idx))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="model.emb_dim"):
        tiny_config(emb_dim=4)
    with pytest.raises(ValueError, match="model.filter_len"):
        tiny_config(filter_len=49)
    with pytest.raises(ValueError, match="model.order"):
        tiny_config(order=1)
    with pytest.raises(ValueError, match="model.fftconv_backend"):
        tiny_config(fftconv_backend="cuda")
    with pytest.raises(ValueError, match="unknown model name"):
        HyenaConfig.from_name("hyena-xxl")


def test_presets() -> None:
    s = HyenaConfig.from_name("hyena-s")
    assert (s.d_model, s.n_layer, s.d_inner, s.l_max) == (864, 18, 1728, 2048)
    assert s.vocab_size == 50257 and s.padded_vocab_size == 50264
    assert HyenaConfig.from_name("hyena-s-4k").l_max == 4096
    with torch.device("meta"):
        n = HyenaLM(s).num_parameters()
    assert 150e6 < n < 156e6, n  # the paper's 153M
    tiny = HyenaConfig.from_name("hyena-tiny", filter_len=64)
    assert tiny.vocab_size == 256 and tiny.filter_len == 64 and tiny.name == "hyena-tiny"


def test_gpt2_init() -> None:
    torch.manual_seed(0)
    model = HyenaLM(tiny_config(n_layer=8, d_model=64, d_inner=256))
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    resid_std = 0.02 / (2 * 8) ** 0.5
    assert abs(model.blocks[0].mlp.fc2.weight.std().item() - resid_std) < 0.1 * resid_std
    assert abs(model.blocks[0].mixer.out_proj.weight.std().item() - resid_std) < 0.1 * resid_std
    assert abs(model.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002


def test_param_groups_honor_filter_flags() -> None:
    model = HyenaLM(tiny_config(filter_lr=1e-4, filter_weight_decay=0.0))
    groups = param_groups(model)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in groups)  # every parameter once
    assert len(by_id) == len(list(model.parameters()))  # the tied head is not counted twice
    filt = model.blocks[0].mixer.filter
    for p in filt.mlp.parameters():
        assert by_id[id(p)]["lr"] == 1e-4 and by_id[id(p)]["weight_decay"] == 0.0
    for p in (model.wte.weight, model.norm_f.weight, model.blocks[0].mlp.fc1.bias, filt.bias):
        assert by_id[id(p)]["weight_decay"] == 0.0 and "lr" not in by_id[id(p)]
    assert "weight_decay" not in by_id[id(model.blocks[0].mlp.fc1.weight)]  # optimizer default
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.1)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == [1e-4, 1e-3]


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = HyenaLM(tiny_config()).eval()
    out = model.save_pretrained(tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hyena-lm" and config["d_model"] == 16
    loaded = HyenaLM.from_pretrained(out).eval()
    assert loaded.lm_head.weight is loaded.wte.weight
    idx = torch.randint(0, 61, (2, 48))
    assert torch.equal(model(idx), loaded(idx))
    generic = from_pretrained(out).eval()
    assert torch.equal(model(idx), generic(idx))
    # a partial convolution chosen at load time runs past the training length
    longer = HyenaLM.from_pretrained(out, filter_len=16).eval()
    assert longer(torch.randint(0, 61, (1, 200))).shape == (1, 200, 64)


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        pytest.param("cpu", "aot_eager", id="cpu-aot_eager"),
        pytest.param("cuda", "aot_eager", id="cuda-aot_eager", marks=pytest.mark.gpu),
        pytest.param("cuda", "inductor", id="cuda-inductor", marks=pytest.mark.gpu),
    ],
)
def test_compiled_trunk_gradients_match_eager(device: str, backend: str) -> None:
    """torch.compile of the trunk (as train.py's task.compile and the throughput benchmark
    run it) gives every parameter its eager gradient; on CUDA the kernels are the Triton ones.
    Guards the bug where the compiled graph gave the whole mixer branch zero gradients."""
    torch.manual_seed(0)
    net = HyenaLM(tiny_config(n_layer=2, l_max=256)).to(device)
    tok = torch.randint(0, 61, (2, 257), device=device)
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        net.zero_grad(set_to_none=True)
        if compiled:
            net.hidden = torch.compile(net.hidden, backend=backend)
        loss = net.loss(tok[:, :-1], tok[:, 1:], reduction="mean")
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (loss_e, eager), (loss_c, comp) = runs
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for name, g in eager.items():
        assert g.abs().sum() > 0, name
        err = ((comp[name] - g).norm() / g.norm()).item()
        assert err < 1e-3, (name, err)
