"""Float64 references for the FFT convolution: by direct summation or conv1d (no FFT), and
``conv_fft64`` through torch.fft for the GPU tests' long sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels.fftconv.plan import make_plan

# the kernels' relative-error targets (norm of the error over the norm of the float64
# reference), their dtypes by test id, and those as GPU test parameters
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_DTYPES = [pytest.param(d, id=name) for name, d in DTYPES.items()]


def centred(k: np.ndarray) -> np.ndarray:
    """A (2, H, M) forward/reverse pair -> (H, 2M-1) centred filter (lag 0 from both)."""
    if k.ndim == 2:
        return k
    fwd, rev = k[0], k[1]
    return np.concatenate([rev[:, 1:][:, ::-1], fwd[:, :1] + rev[:, :1], fwd[:, 1:]], axis=-1)


def conv_numpy(u, k, pregate=None, postgate=None, bias=None, mode="causal", freq_keep=1.0):
    """y = postgate * conv(u * pregate, k) + bias * (u * pregate), by direct summation."""
    u = np.asarray(u, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    B, H, L = u.shape
    v = u * pregate if pregate is not None else u.copy()
    z = np.empty_like(v)
    if freq_keep < 1.0:
        plan = make_plan(mode, L, k.shape[-1] if k.ndim == 2 else 2 * k.shape[-1] - 1, freq_keep)
        assert mode == "causal", "the numpy reference covers freq_keep for causal filters"
        n = plan.fft_size
        kf = np.fft.rfft(k[:, : plan.filter_len], n=n)
        kf[:, plan.keep_bins :] = 0
        z = np.fft.irfft(np.fft.rfft(v, n=n) * kf, n=n)[..., :L]
    else:
        kk = centred(k)
        for b in range(B):
            for h in range(H):
                full = np.convolve(v[b, h], kk[h])
                if mode == "causal":
                    z[b, h] = full[:L]
                elif mode == "circular":
                    out = full[:L].copy()
                    out[: L - 1] += full[L:]
                    z[b, h] = out
                else:
                    m = (kk.shape[-1] - 1) // 2
                    z[b, h] = full[m : m + L]
    y = z * postgate if postgate is not None else z
    if bias is not None:
        y = y + bias[None, :, None] * v
    return y


def conv_torch64(u, k, pregate=None, postgate=None, bias=None, mode="causal"):
    """The same function with torch ops in float64 (conv1d, no FFT), for reference gradients."""
    v = u * pregate if pregate is not None else u
    H, L = u.shape[1], u.shape[2]
    if mode == "bidirectional" and k.dim() == 3:
        fwd, rev = k[0], k[1]
        k = torch.cat([rev[:, 1:].flip(-1), fwd[:, :1] + rev[:, :1], fwd[:, 1:]], dim=-1)
    w = k.flip(-1)[:, None, :]
    if mode == "causal":
        z = F.conv1d(F.pad(v, (k.shape[-1] - 1, 0)), w, groups=H)[..., :L]
    elif mode == "circular":
        z = F.conv1d(torch.cat([v[..., 1:], v], dim=-1), w, groups=H)
    else:
        m = (k.shape[-1] - 1) // 2
        z = F.conv1d(F.pad(v, (m, m)), w, groups=H)
    y = z * postgate if postgate is not None else z
    if bias is not None:
        y = y + bias[:, None] * v
    return y


def conv_fft64(u, k, pre=None, post=None, bias=None, mode="causal"):
    """The convolution in float64 through torch.fft, any device, differentiable: linear
    convolution (size >= L + Lk - 1) windowed per mode; circular folds the linear result."""
    v = u * pre if pre is not None else u
    L = u.shape[-1]
    if mode == "bidirectional" and k.dim() == 3:
        fwd, rev = k[0], k[1]
        k = torch.cat([rev[:, 1:].flip(-1), fwd[:, :1] + rev[:, :1], fwd[:, 1:]], dim=-1)
    n = 1 << (L + k.shape[-1] - 2).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k, n=n), n=n)
    if mode == "circular":
        z = torch.cat([full[..., : L - 1] + full[..., L : 2 * L - 1], full[..., L - 1 : L]], -1)
    else:
        start = (k.shape[-1] - 1) // 2 if mode == "bidirectional" else 0
        z = full[..., start : start + L]
    y = z * post if post is not None else z
    return y + bias[:, None] * v if bias is not None else y


def spectrum_conv64(u, kf, n, pre=None, post=None, bias=None):
    """``(y, z)`` in float64 for a filter given as its size-n rfft ``kf``: ``z =
    irfft(rfft(u * pre, n) * kf)[:L]`` (the circular convolution of size n, first L samples),
    ``y = post * z + bias * (u * pre)``; absent gates and bias leave their terms out."""
    v = u.double() * pre.double() if pre is not None else u.double()
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * kf.to(torch.complex128), n=n)[..., : u.shape[-1]]
    y = z * post.double() if post is not None else z
    return (y + bias.double()[:, None] * v if bias is not None else y), z


def make_inputs(B, H, L, Lk, dtype, gated, pair=False, seed=0, device="cpu"):
    """Fresh random (u, k, pregate, postgate, bias); k is (2, H, Lk) when ``pair``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(device, dtype)
    # decaying filters, as trained long-conv filters are: keeps the output well-conditioned
    k = torch.randn((2, H, Lk) if pair else (H, Lk), generator=g, dtype=torch.float64)
    k = (k / (1.0 + torch.arange(Lk, dtype=torch.float64)) ** 0.5).float().to(device)
    pre = torch.randn(B, H, L, generator=g).to(device, dtype) if gated else None
    post = torch.randn(B, H, L, generator=g).to(device, dtype) if gated else None
    bias = torch.randn(H, generator=g).to(device) if gated else None
    return u, k, pre, post, bias


def to_numpy(x):
    return None if x is None else x.double().cpu().numpy()


def rel_err(out, ref) -> float:
    out = torch.as_tensor(out).double().cpu()
    ref = torch.as_tensor(ref).double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
