"""HyenaLM.generate and sample_logits: greedy, top-k/top-p, seeds, EOS, context cropping."""

from __future__ import annotations

import pytest
import torch

from models.lm import GRAPH_MIN_STEPS, HyenaConfig, HyenaLM, sample_logits

VOCAB = 61  # padded to 64: the padding rows must never be sampled


def tiny_model(**overrides) -> HyenaLM:
    config = dict(
        vocab_size=VOCAB,
        n_layer=2,
        d_model=32,
        d_inner=64,
        l_max=64,
        filter_order=16,
        emb_dim=3,
        embed_dropout=0.1,  # generate must switch it off (eval mode)
        fftconv_backend="torch",
    )
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(**(config | overrides)))


def prompts(batch: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def greedy_reference(model: HyenaLM, idx: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Argmax of the last position of a fresh full forward, n times."""
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -window:])[:, -1, :VOCAB]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


def test_greedy_equals_argmax_of_repeated_forwards() -> None:
    model = tiny_model().train()
    idx = prompts()
    out = model.generate(idx, 9, temperature=0.0)
    assert model.training  # the mode is restored
    assert out.shape == (3, 16) and torch.equal(out[:, :7], idx)
    assert torch.equal(out, greedy_reference(model, idx, 9, window=64))
    assert int(out.max()) < VOCAB


def test_top_k_1_equals_greedy() -> None:
    model = tiny_model()
    idx = prompts()
    greedy = model.generate(idx, 8, temperature=0.0)
    for temperature in (1.0, 0.5):
        g = torch.Generator().manual_seed(3)
        sampled = model.generate(idx, 8, temperature=temperature, top_k=1, generator=g)
        assert torch.equal(sampled, greedy)


def test_seeded_sampling_is_reproducible() -> None:
    model = tiny_model()
    idx = prompts()

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return model.generate(idx, 12, temperature=1.0, top_p=0.95, generator=g)

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, model.generate(idx, 12, temperature=0.0))  # it does sample


def test_rows_stop_at_eos_and_are_padded() -> None:
    model = tiny_model()
    idx = prompts(batch=4)
    free = model.generate(idx, 10, temperature=0.0)
    eos = int(free[0, 7 + 2])  # a token row 0 produces at its third step
    out = model.generate(idx, 10, temperature=0.0, eos_token_id=eos, pad_token_id=VOCAB - 1)
    assert out.shape == free.shape
    for row_free, row in zip(free[:, 7:].tolist(), out[:, 7:].tolist(), strict=True):
        if eos in row_free:
            stop = row_free.index(eos)
            assert row[: stop + 1] == row_free[: stop + 1]
            assert row[stop + 1 :] == [VOCAB - 1] * (len(row) - stop - 1)
        else:
            assert row == row_free
    # without pad_token_id the padding is eos itself; all rows stopped: still full length
    out = model.generate(idx[:1], 10, temperature=0.0, eos_token_id=eos)
    assert out.shape == (1, 17) and out[0, 7:].tolist() == free[0, 7:10].tolist() + [eos] * 7


def test_context_is_cropped_to_l_max() -> None:
    model = tiny_model(l_max=32)
    idx = prompts(batch=2, length=45)  # longer than l_max: the window slides
    assert model.context_window == 32
    out = model.generate(idx, 5, temperature=0.0)
    assert torch.equal(out, greedy_reference(model, idx, 5, window=32))


def test_partial_conv_window_is_exact() -> None:
    # larger weights than GPT-2's init, so that the oldest token's effect is well above rounding
    model = tiny_model(l_max=32, filter_len=5, short_filter=3, initializer_range=0.3).eval()
    window = model.context_window
    assert window == 2 * ((2 - 1) * (5 - 1) + 3 - 1) + 1  # n_layer * (taps + short - 2) + 1
    idx = prompts(batch=2, length=3 * window)
    with torch.no_grad():
        full = model(idx)[:, -1]
        cropped = model(idx[:, -window:])[:, -1]
        torch.testing.assert_close(cropped, full, rtol=0, atol=1e-4)
        changed = idx.clone()
        changed[:, -window] = (changed[:, -window] + 1) % VOCAB  # the oldest token it sees
        assert (model(changed)[:, -1] - full).abs().max() > 1e-3
        changed = idx.clone()
        changed[:, -window - 1] = (changed[:, -window - 1] + 1) % VOCAB  # just outside
        torch.testing.assert_close(model(changed)[:, -1], full, rtol=0, atol=1e-4)
    # past l_max: generation keeps going with the bounded window
    out = model.generate(idx, 4, temperature=0.0)
    assert torch.equal(out, greedy_reference(model, idx, 4, window=window))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="order2"),
        pytest.param({"order": 3}, id="order3"),
        pytest.param({"filter_len": 9, "l_max": 32}, id="partial"),
        pytest.param({"short_filter": 1}, id="short1"),
        pytest.param({"short_filter": 5, "order": 3, "filter_len": 20}, id="short5-order3"),
    ],
)
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"]
)
def test_cached_decoding_is_the_forward(overrides, dtype, tol) -> None:
    """Prefill, then positions decoded one at a time and three at once from the cache: the
    same logits as one forward over the whole sequence (positions past the prefill, which is
    shorter and longer than the short conv and the partial filter)."""
    model = tiny_model(initializer_range=0.2, **overrides).to(dtype).eval()
    length = 40 if model.config.filter_len is None else 60  # partial: past l_max = 32
    idx = prompts(batch=2, length=length, seed=4)
    with torch.no_grad():
        full = model(idx)[..., :VOCAB]  # [B, L, V]: the last position reads all before it
        for prefill in (2, 13):
            caches = model._new_cache()
            got = [model._cached_logits(idx[:, :prefill], caches)]
            t = prefill
            while t < length:
                step = 3 if t % 2 else 1  # several positions through one decode call, too
                got.append(model._cached_logits(idx[:, t : t + step], caches))
                t += step
            steps = [prefill]  # each call's logits are its last position's: steps[i] - 1
            t = prefill
            while t < length:
                steps.append(min(t + (3 if t % 2 else 1), length))
                t = steps[-1]
            ref = torch.stack([full[:, e - 1] for e in steps], dim=1)
            out = torch.stack(got, dim=1)[..., :VOCAB]
            err = ((out - ref).norm() / ref.norm()).item()
            assert err < tol, f"prefill {prefill}: rel err {err:.2e}"


@pytest.mark.parametrize(
    ("overrides", "length", "new"),
    [
        pytest.param({}, 7, 9, id="within-l_max"),
        pytest.param({"l_max": 32}, 20, 25, id="past-l_max-recomputes"),
        pytest.param({"l_max": 32, "filter_len": 6}, 20, 30, id="partial-past-l_max"),
        pytest.param({"l_max": 32}, 40, 3, id="prompt-past-l_max"),
    ],
)
def test_cache_and_recompute_generate_the_same(overrides, length, new) -> None:
    """use_cache (default) against a whole forward per token, in fp64 so that no argmax or
    sampling draw can fall differently: greedy, seeded sampling, and eos stops."""
    model = tiny_model(initializer_range=0.2, **overrides).double()
    idx = prompts(batch=3, length=length, seed=2)
    cached = model.generate(idx, new, temperature=0.0)
    assert torch.equal(cached, model.generate(idx, new, temperature=0.0, use_cache=False))
    window = model.context_window
    assert torch.equal(cached, greedy_reference(model, idx, new, window=window))

    def draw(use_cache: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(11)
        return model.generate(idx, new, top_k=30, top_p=0.9, generator=g, use_cache=use_cache)

    assert torch.equal(draw(True), draw(False))
    eos = int(cached[0, length + 1])
    assert torch.equal(
        model.generate(idx, new, temperature=0.0, eos_token_id=eos),
        model.generate(idx, new, temperature=0.0, eos_token_id=eos, use_cache=False),
    )


def test_cache_is_for_eval_mode_and_stops_at_l_max() -> None:
    model = tiny_model(mixer_dropout=0.1).train()
    with pytest.raises(ValueError, match="decodes in eval mode only"):
        model._cached_logits(prompts(), model._new_cache())
    model = tiny_model(l_max=32).eval()  # the forward refuses past l_max, and so does decoding
    caches = model._new_cache()
    model._cached_logits(prompts(length=30), caches)
    model._cached_logits(prompts(length=2), caches)  # positions 31 and 32: still within
    with pytest.raises(ValueError, match="decoding to position 33 exceeds l_max=32"):
        model._cached_logits(prompts(length=1), caches)
    with pytest.raises(TypeError, match="use_cache must be a bool; got 'yes'"):
        model.generate(prompts(), 2, use_cache="yes")


def test_sample_logits_support_and_frequencies() -> None:
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probs.log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)

    def freq(tokens: torch.Tensor) -> torch.Tensor:
        return torch.bincount(tokens, minlength=5).float() / len(tokens)

    plain = freq(sample_logits(logits, generator=g))
    torch.testing.assert_close(plain, probs, atol=0.015, rtol=0)
    top_k = freq(sample_logits(logits, top_k=2, generator=g))
    torch.testing.assert_close(top_k, torch.tensor([0.625, 0.375, 0, 0, 0]), atol=0.015, rtol=0)
    # nucleus 0.85: tokens 0, 1, 2 (the first two alone reach only 0.8)
    top_p = freq(sample_logits(logits, top_p=0.85, generator=g))
    torch.testing.assert_close(top_p, torch.tensor([5, 3, 1, 0, 0]) / 9, atol=0.015, rtol=0)
    cold = freq(sample_logits(logits, temperature=0.5, generator=g))
    torch.testing.assert_close(cold, (probs.log() / 0.5).softmax(0), atol=0.015, rtol=0)
    assert torch.equal(sample_logits(logits[:3], temperature=0.0), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"max_new_tokens": -1}, ValueError, "max_new_tokens", id="negative-n"),
        pytest.param({"max_new_tokens": 2.0}, TypeError, "max_new_tokens", id="float-n"),
        pytest.param({"temperature": -0.5}, ValueError, "temperature", id="temperature"),
        pytest.param({"top_k": 0}, ValueError, "top_k", id="top_k"),
        pytest.param({"top_p": 0.0}, ValueError, "top_p", id="top_p-0"),
        pytest.param({"top_p": 1.5}, ValueError, "top_p", id="top_p-1.5"),
        pytest.param({"eos_token_id": VOCAB}, ValueError, "eos_token_id", id="eos"),
        pytest.param({"pad_token_id": -1}, ValueError, "pad_token_id", id="pad"),
        pytest.param({"idx": torch.zeros(5, dtype=torch.long)}, ValueError, "idx", id="idx-1d"),
        pytest.param({"idx": torch.zeros(2, 0, dtype=torch.long)}, ValueError, "idx", id="empty"),
        pytest.param({"idx": torch.zeros(2, 3)}, TypeError, "idx must be int64", id="idx-float"),
        pytest.param({"idx": torch.full((1, 3), VOCAB)}, ValueError, "vocab_size=61", id="ids"),
        pytest.param({"cuda_graph": "on"}, TypeError, "cuda_graph must be None", id="graph-type"),
        pytest.param({"cuda_graph": True}, ValueError, "needs the model on a CUDA", id="graph-cpu"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match) -> None:
    model = tiny_model()
    args = {"idx": prompts(), "max_new_tokens": 2} | kwargs
    with pytest.raises(error, match=match):
        model.generate(args.pop("idx"), args.pop("max_new_tokens"), **args)


def _gpt(**overrides):
    from models.gpt import GPTLM, GPTConfig

    base = dict(vocab_size=VOCAB, n_layer=2, d_model=24, n_head=3, d_inner=48, l_max=48)
    torch.manual_seed(0)
    return GPTLM(GPTConfig(**(base | overrides)))


MODELS = {
    "hyena": lambda: tiny_model(initializer_range=0.2),
    "hyena-order3-partial": lambda: tiny_model(initializer_range=0.2, order=3, filter_len=9),
    "gpt": lambda: _gpt(initializer_range=0.2),
}


def _host_values(cache: dict) -> list[dict]:
    """Every value of the model's cache and of its blocks' that is not on the device."""
    dicts = [cache, *cache["layers"]]
    return [{k: v for k, v in d.items() if isinstance(v, (int, float, bool))} for d in dicts]


def _put_back(cache: dict, values: list[dict]) -> None:
    for d, kept in zip([cache, *cache["layers"]], values, strict=True):
        d.update(kept)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_decoding_step_needs_no_host_state(name) -> None:
    """What makes a step replayable as a CUDA graph (``_DecodeGraph``): its work depends on the
    cache's device state alone. Each step here runs with the host's values put back to those of
    the first decoded step (every value of the caches not on the device: a replay reruns
    nothing of the Python), then moved on as a replay does (``_advance_host``): the same logits
    as eager decoding, every position, and the same counts at the end (fp64). Fails if a step
    takes a position from the host."""
    model = MODELS[name]().double().eval()
    idx = prompts(batch=2, length=40, seed=8)
    prefill = 11
    with torch.no_grad():
        runs = []
        for frozen in (False, True):
            cache = model._new_cache(capacity=idx.shape[1], static=True)  # as on CUDA
            model._cached_logits(idx[:, :prefill], cache)
            first = _host_values(cache)
            got = []
            for t in range(prefill, idx.shape[1]):
                if frozen:
                    _put_back(cache, first)
                got.append(model._cached_logits(idx[:, t : t + 1], cache))
                if frozen:
                    _put_back(cache, first)
                    model._advance_host(cache, t - prefill + 1)
            runs.append(torch.stack(got, dim=1))
            assert cache["pos"] == idx.shape[1] and int(cache["step"]) == idx.shape[1]
            assert {layer["seen"] for layer in cache["layers"]} == {idx.shape[1]}
        full = model(idx)[:, prefill:]
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=0)
    torch.testing.assert_close(runs[0], full, rtol=1e-10, atol=1e-10)


def test_zero_new_tokens_returns_the_prompt() -> None:
    idx = prompts()
    assert torch.equal(tiny_model().generate(idx, 0), idx)


def test_hyena_s_8k_is_hyena_s_at_8k() -> None:
    s, s8k = HyenaConfig.from_name("hyena-s"), HyenaConfig.from_name("hyena-s-8k")
    assert s8k.l_max == 8192 and s8k.name == "hyena-s-8k"
    assert s8k.to_dict() | {"l_max": 2048, "name": "hyena-s"} == s.to_dict()


@pytest.mark.gpu
def test_generate_on_cuda() -> None:
    """On the GPU (Triton fftconv): greedy equals the argmax loop, seeded sampling on a CUDA
    generator repeats, and bf16 autocast runs."""
    model = tiny_model(fftconv_backend="auto").cuda()
    idx = prompts().cuda()
    out = model.generate(idx, 6, temperature=0.0)
    assert torch.equal(out, greedy_reference(model, idx, 6, window=64))

    def draw() -> torch.Tensor:
        g = torch.Generator(device="cuda").manual_seed(5)
        return model.generate(idx, 6, temperature=1.0, top_k=20, top_p=0.9, generator=g)

    assert torch.equal(draw(), draw())
    with pytest.raises(ValueError, match="generator is on cpu"):
        model.generate(idx, 1, generator=torch.Generator())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.generate(idx, 6, temperature=0.7, top_p=0.9)
    assert out.shape == (3, 13) and int(out.max()) < VOCAB


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("autocast", "tol"), [(False, 1e-4), (True, 3e-2)], ids=["fp32", "bf16-autocast"]
)
def test_cached_decoding_is_the_forward_on_cuda(autocast, tol) -> None:
    """On the GPU the prefill runs the Triton fftconv and decoding the direct sums: the logits
    of every decoded position against one forward (fp32: tf32x3 kernels; under bf16 autocast
    both round their matmuls to bf16, at different places)."""
    model = tiny_model(fftconv_backend="auto", initializer_range=0.2, l_max=128).cuda().eval()
    idx = prompts(batch=3, length=100, seed=6).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        full = model(idx)[..., :VOCAB].float()
        caches = model._new_cache()
        got = [model._cached_logits(idx[:, :37], caches)]
        got += [model._cached_logits(idx[:, t : t + 1], caches) for t in range(37, 100)]
    out = torch.stack(got, dim=1)[..., :VOCAB].float()
    ref = full[:, 36:]
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < tol, f"rel err {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_generate_replays_a_cuda_graph(name) -> None:
    """On the GPU ``generate`` captures a decoding step as a CUDA graph and replays it: the
    prefill, one eager step and the capture are the only ``_cached_logits`` calls; greedy fp32
    tokens and every step's logits equal eager decoding's (the same kernels); seeded sampling
    repeats; under bf16 autocast it runs; a generation too short for a capture runs eagerly."""
    model = MODELS[name]().cuda().eval()
    idx = prompts(batch=3, length=21, seed=3).cuda()
    calls = []
    original = model._cached_logits

    def counted(tokens, cache):
        calls.append(tokens.shape[1])
        return original(tokens, cache)

    model._cached_logits = counted
    eager = model.generate(idx, 12, temperature=0.0, cuda_graph=False)
    assert calls == [21] + [1] * 11
    calls.clear()
    graphed = model.generate(idx, 12, temperature=0.0)
    assert calls == [21, 1, 1], calls  # the prefill, the eager step, the capture
    assert torch.equal(graphed, eager)
    assert torch.equal(graphed, greedy_reference(model, idx, 12, window=model.context_window or 64))
    calls.clear()
    model.generate(idx, 1 + GRAPH_MIN_STEPS, temperature=0.0)
    assert calls == [21] + [1] * GRAPH_MIN_STEPS  # too few steps left after the eager one
    del model._cached_logits

    def draw(graph: bool) -> torch.Tensor:
        g = torch.Generator(device="cuda").manual_seed(7)
        return model.generate(idx, 12, top_k=20, top_p=0.9, generator=g, cuda_graph=graph)

    assert torch.equal(draw(True), draw(False))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.generate(idx, 12, temperature=0.7, top_p=0.9)
    assert out.shape == (3, 33) and int(out.max()) < VOCAB
    # the replayed logits themselves, step by step: a replay and an eager step on two caches
    from models.lm import _DecodeGraph

    with torch.no_grad():
        eager_cache, graph_cache = model._new_cache(capacity=40), model._new_cache(capacity=40)
        for cache in (eager_cache, graph_cache):
            model._cached_logits(idx, cache)
            model._cached_logits(idx[:, -1:], cache)
        replay = _DecodeGraph(model, graph_cache, idx[:, -1:])
        for t in range(10):
            token = idx[:, t : t + 1]
            want = model._cached_logits(token, eager_cache)
            torch.testing.assert_close(replay(token), want, rtol=1e-5, atol=1e-5)
        assert graph_cache["pos"] == eager_cache["pos"] == 32  # 21 + 1 + 10
        assert int(graph_cache["step"]) == 32
