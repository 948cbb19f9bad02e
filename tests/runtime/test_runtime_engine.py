"""The batch engine in-process on the tiny checkpoint: rows joining and leaving a running batch
produce exactly the tokens plain transformers' greedy generate produces for each prompt alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bloomz_api.options import ServeOptions
from bloomz_runtime import engine as engine_module
from bloomz_runtime.backends.base import ModelRunner
from bloomz_runtime.backends.cpu import CpuBackend
from bloomz_runtime.commands import Step
from bloomz_runtime.dist import DistContext
from bloomz_runtime.engine import BatchEngine

PROMPTS = [
    "DeepSpeed is a machine learning framework",
    "Hello",
    "The quick brown fox jumps over the lazy dog again and again",
    "one two",
    "Kubernetes runs containers in pods",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def runner(tiny_checkpoint: Path) -> ModelRunner:
    torch.set_num_threads(1)
    # screened_greedy=True: the screen runs here on every CPU, also where "auto" would leave it off.
    opts = ServeOptions(model=str(tiny_checkpoint), device="cpu", screened_greedy=True)
    return CpuBackend().load(opts, DistContext(0, 1, 0))


@pytest.fixture(scope="module")
def reference(runner: ModelRunner) -> list[list[int]]:
    """Plain transformers generate, one prompt at a time, eos ignored via a fixed length."""
    out = []
    for prompt in PROMPTS:
        ids = runner.tokenizer(prompt, return_tensors="pt")
        gen = runner.model.generate(
            **ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
        )
        out.append(gen[0, ids.input_ids.shape[1] :].tolist())
    return out


def run_staggered(
    runner: ModelRunner, kv_cache: bool, lengths: list[int], logits: bool = True
) -> dict[str, list[int]]:
    """Admit one prompt per step, each leaving after its own number of tokens."""
    engine = BatchEngine(runner, kv_cache=kv_cache)
    out: dict[str, list[int]] = {}
    pending = list(range(len(PROMPTS)))
    drop: tuple[str, ...] = ()
    while pending or engine.rows:
        admit = ()
        if pending:
            i = pending.pop(0)
            out[str(i)] = []
            admit = ((str(i), tuple(runner.tokenizer(PROMPTS[i]).input_ids)),)
        live = [r for r in engine.rows if r not in drop]
        step = Step(drop=drop, decode=tuple(out[r][-1] for r in live), admit=admit, logits=logits)
        scores = engine.apply(step)
        if scores is None:
            break
        assert engine.rows == live + [r for r, _ in admit]
        for row, token in zip(engine.rows, scores.greedy.tolist(), strict=True):
            out[row].append(token)
        drop = tuple(r for r in engine.rows if len(out[r]) >= lengths[int(r)])
        if drop and set(drop) == set(engine.rows) and not pending:
            engine.apply(Step(drop=drop))
    assert engine.rows == [] and engine.mask.shape[0] == 0
    return out


@pytest.mark.parametrize("mode", ["kv-cache", "screened-greedy", "static-shapes", "no-kv-cache"])
def test_rows_joining_and_leaving_match_solo_generate(
    runner: ModelRunner, reference: list[list[int]], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "static-shapes":
        # Attention over whole cache buffers (as on HPU), small chunks so buffers grow often.
        monkeypatch.setattr(runner, "static_shapes", True)
        monkeypatch.setattr(runner, "cache_chunk", 8)
    lengths = [NEW_TOKENS, 3, NEW_TOKENS, 7, NEW_TOKENS]
    out = run_staggered(runner, mode != "no-kv-cache", lengths, logits=mode != "screened-greedy")
    for i in range(len(PROMPTS)):
        assert out[str(i)] == reference[i][: lengths[i]], PROMPTS[i]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "apart"])
@pytest.mark.parametrize("logits", [True, False], ids=["float32-head", "screened-greedy"])
def test_newcomers_prefilled_in_the_decode_pass_match_solo_generate(
    runner: ModelRunner,
    reference: list[list[int]],
    fuse: bool,
    logits: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every step that both decodes and admits runs one forward pass when fused, two apart; the
    tokens are the same either way."""
    monkeypatch.setattr(engine_module, "fuses_prefill", lambda running, longest: fuse)
    passes: list[int] = []
    forward = runner.forward
    monkeypatch.setattr(runner, "forward", lambda *a, **k: passes.append(a[0].shape[0]) or forward(*a, **k))
    lengths = [NEW_TOKENS, 3, NEW_TOKENS, 7, NEW_TOKENS]
    out = run_staggered(runner, True, lengths, logits=logits)
    for i in range(len(PROMPTS)):
        assert out[str(i)] == reference[i][: lengths[i]], PROMPTS[i]
    # Steps 2 to 5 each admit one prompt beside 1, 2, 3 and 3 running rows (prompt 1 left after 3).
    mixed = [2, 3, 4, 4] if fuse else [1, 1, 2, 1, 3, 1, 3, 1]
    assert passes[1 : 1 + len(mixed)] == mixed


def test_a_fused_step_leaves_the_cache_as_joining_apart_does(
    runner: ModelRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No padding positions stay behind in the cache (later steps would copy and attend over them)."""
    caches = []
    for fuse in (True, False):
        monkeypatch.setattr(engine_module, "fuses_prefill", lambda running, longest, fuse=fuse: fuse)
        engine = BatchEngine(runner)
        engine.apply(Step(admit=(("a", (5, 6, 7, 8, 9, 10, 11, 12)),)))
        engine.apply(Step(decode=(13,)))
        engine.apply(Step(decode=(14,), admit=(("b", (20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)),)))
        caches.append((engine.mask, runner.cache_tensors(engine.cache)))
    (fused_mask, fused_kv), (apart_mask, apart_kv) = caches
    assert fused_mask.tolist() == apart_mask.tolist()
    assert fused_mask.shape == (2, 12)
    for (fk, fv), (ak, av) in zip(fused_kv, apart_kv, strict=True):
        assert fk.shape == ak.shape and fv.shape == av.shape
        used = fused_mask.bool()[:, None, :, None]
        assert torch.allclose(fk * used, ak * used, atol=1e-5) and torch.allclose(
            fv * used, av * used, atol=1e-5
        )


def test_the_tiny_cpu_runner_screens_greedy_steps(runner: ModelRunner) -> None:
    """So the greedy tests here run the int8-screened lm_head, not only the float32 one."""
    assert getattr(runner, "greedy_head", None) is not None


@pytest.mark.parametrize("logits", [True, False], ids=["float32-head", "screened-greedy"])
def test_prefill_of_several_prompts_at_once(
    runner: ModelRunner, reference: list[list[int]], logits: bool
) -> None:
    engine = BatchEngine(runner)
    admit = tuple((str(i), tuple(runner.tokenizer(p).input_ids)) for i, p in enumerate(PROMPTS))
    scores = engine.apply(Step(admit=admit, logits=logits))
    assert scores is not None
    assert (scores.logits is None) == (not logits)
    out = [[t] for t in scores.greedy.tolist()]
    for _ in range(NEW_TOKENS - 1):
        scores = engine.apply(Step(decode=tuple(o[-1] for o in out), logits=logits))
        assert scores is not None
        for o, t in zip(out, scores.greedy.tolist(), strict=True):
            o.append(t)
    assert out == reference


def test_decode_needs_one_token_per_row(runner: ModelRunner) -> None:
    engine = BatchEngine(runner)
    engine.apply(Step(admit=(("a", (5, 6)),)))
    with pytest.raises(RuntimeError, match="1 rows"):
        engine.apply(Step(decode=(1, 2)))


def test_lean_bloom_forward_equals_transformers(runner: ModelRunner) -> None:
    from bloomz_runtime.backends.bloom import BloomRunner, GrowingCache, bloom_forward, causal_padding_mask
    from bloomz_runtime.kvcache import left_pad_prompts

    assert isinstance(runner, BloomRunner)
    prompts = [runner.tokenizer(p).input_ids for p in PROMPTS]
    ids, mask = left_pad_prompts(prompts, runner.pad_id)
    model = runner.model
    with torch.inference_mode():
        hf = model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
        out = model.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        last, past = bloom_forward(model, ids, mask, None)
        # Same operations on the same shapes up to ln_f: identical hidden states.
        assert torch.equal(last, out.hidden_states[-1][:, -1, :])
        # lm_head on [B, hidden] instead of [B, S, hidden] may round differently, never by much.
        assert torch.allclose(model.lm_head(last), hf, atol=1e-5)
        assert torch.equal(model.lm_head(last).argmax(-1), hf.argmax(-1))
        # One decode step on top of the cache, against transformers with the whole sequence.
        nxt = hf.argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        hf2 = model(input_ids=torch.cat([ids, nxt], dim=1), attention_mask=mask2).logits[:, -1, :]
        last2, _ = bloom_forward(model, nxt, mask2, GrowingCache(past))
        assert torch.equal(hf2.argmax(-1), model.lm_head(last2).argmax(-1))
        assert torch.allclose(model.lm_head(last2), hf2, atol=1e-4)
    hf_mask = model.transformer._prepare_4d_causal_attention_mask_with_cache_position(
        mask, sequence_length=mask.shape[1], target_length=mask.shape[1], dtype=torch.float32,
        cache_position=torch.arange(mask.shape[1]), batch_size=mask.shape[0],
    )  # fmt: skip
    assert torch.equal(causal_padding_mask(mask, mask.shape[1], torch.float32), hf_mask)


def test_growing_cache_appends_in_place_and_grows() -> None:
    from bloomz_runtime.backends.bloom import GrowingCache

    g = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 5, 4, generator=g)
    cache = GrowingCache([(start, -start)])
    expected = start
    for _ in range(GrowingCache.CHUNK + 10):  # crosses a buffer boundary
        cache.reserve(1)
        new = torch.randn(2, 3, 1, 4, generator=g)
        keys, values = cache.append(0, new, -new)
        cache.length += 1
        expected = torch.cat([expected, new], dim=2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
    assert cache.keys[0].shape[2] % GrowingCache.CHUNK == 0
    ((k, v),) = cache.tensors()
    assert torch.equal(k, expected) and torch.equal(v, -expected)


def test_long_generation_matches_across_cache_growth(runner: ModelRunner) -> None:
    """150 new tokens: the cache buffers grow twice on the way."""
    ids = runner.tokenizer(PROMPTS[0], return_tensors="pt")
    ref = runner.model.generate(
        **ids, max_new_tokens=150, min_new_tokens=150, do_sample=False, eos_token_id=None
    )
    engine = BatchEngine(runner)
    scores = engine.apply(Step(admit=(("a", tuple(ids.input_ids[0].tolist())),), logits=False))
    out: list[int] = []
    while len(out) < 150:
        assert scores is not None
        out.append(int(scores.greedy))
        scores = engine.apply(Step(decode=(out[-1],), logits=False))
    assert out == ref[0, ids.input_ids.shape[1] :].tolist()
