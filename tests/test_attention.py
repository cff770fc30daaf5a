"""Grouped-query attention without key/value copies equals transformers' SDPA path."""
from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from adafuse_lab import paper_scale
from adafuse_lab.decoding import DecodeConfig, attention, decode
from adafuse_lab.models import load_session


class Module(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("kind", ["bool", "float", "per_head"])
def test_grouped_sdpa_equals_repeated_kv(t, kind):
    g = torch.Generator().manual_seed(t)
    b, kvh, groups, w, d = 3, 2, 3, 10, 8
    q = torch.randn(b, kvh * groups, t, d, generator=g)
    k, v = torch.randn(b, kvh, w, d, generator=g), torch.randn(b, kvh, w, d, generator=g)
    heads = kvh * groups if kind == "per_head" else 1
    keep = torch.rand(b, heads, t, w, generator=g) > 0.4
    keep[..., 0] = True  # every query row reads at least one key
    mask = keep if kind != "float" else torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    m = Module(groups)
    want, _ = sdpa_attention_forward(m, q, k, v, mask, scaling=0.3)
    got, _ = attention.grouped_sdpa(m, q, k, v, mask, scaling=0.3)
    assert got.shape == want.shape == (b, t, kvh * groups, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_long_queries_are_not_folded(monkeypatch):
    """Above FOLD_MAX_QUERIES query tokens per row (a prompt's prefill) the mask is not repeated:
    transformers' SDPA path runs, on the repeated keys and values, with the same result."""
    g = torch.Generator().manual_seed(0)
    b, kvh, groups, t, w, d = 2, 2, 3, 5, 7, 4
    q, k, v = torch.randn(b, kvh * groups, t, d, generator=g), torch.randn(b, kvh, w, d, generator=g), \
        torch.randn(b, kvh, w, d, generator=g)
    mask = torch.rand(b, 1, t, w, generator=g) > 0.3
    mask[..., 0] = True
    seen, real = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda query, *a, **kw: seen.append(tuple(query.shape)) or real(query, *a, **kw))
    m = Module(groups)
    want, _ = sdpa_attention_forward(m, q, k, v, mask, scaling=0.5)
    for limit, folded in ((t, (b, kvh, groups * t, d)), (t - 1, (b, kvh * groups, t, d))):
        monkeypatch.setattr(attention, "FOLD_MAX_QUERIES", limit)
        seen.clear()
        got, _ = attention.grouped_sdpa(m, q, k, v, mask, scaling=0.5)
        assert seen == [folded]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def counting(monkeypatch):
    calls = []
    real = attention.grouped_sdpa

    def wrapper(module, query, key, value, mask, *a, **kw):
        if mask is not None and mask.ndim == 4:  # folded, not handed back to SDPA
            calls.append(query.shape)
        return real(module, query, key, value, mask, *a, **kw)
    monkeypatch.setattr(attention, "grouped_sdpa", wrapper)
    return calls


def test_engine_decodes_the_same_with_grouped_attention(monkeypatch):
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, sliding_window=6)
    members = [load_session("tiny:bpe"), paper_scale.load_random("random:mistral-7b-v0.3+tiny:spm", **small)]
    assert all(m.model.config.num_key_value_heads < m.model.config.num_attention_heads for m in members)
    prompts = ["Question: What is the capital of France?\nAnswer:", "Question: Who wrote Hamlet?\nAnswer:"]
    cfg = DecodeConfig(max_new_tokens=10)
    ref = {meth: [o.text for o in decode(meth, members, prompts, cfg)] for meth in ("adafuse", "unite")}
    calls = counting(monkeypatch)
    monkeypatch.setattr(attention, "mode", "grouped")
    for meth, texts in ref.items():
        assert [o.text for o in decode(meth, members, prompts, cfg)] == texts, meth
    assert calls and any(shape[2] > 1 for shape in calls)  # folded forwards, also of several tokens per row
    assert all(m.model.config._attn_implementation == "sdpa" for m in members)  # and HF's own path is back


def test_unknown_attention_mode(monkeypatch):
    monkeypatch.setattr(attention, "mode", "flash")
    with pytest.raises(ValueError, match="attention mode 'flash'"):
        with attention.engine_attention(load_session("tiny:bpe").model):
            pass


def test_additive_mask_is_sdpas_own_conversion_with_aligned_rows():
    mask = torch.rand(2, 1, 3, 21, generator=torch.Generator().manual_seed(0)) > 0.5
    add = attention.additive_mask(mask, torch.float32)
    assert add.shape == mask.shape and add.stride(-2) == 32 and add.stride(-2) % attention.MASK_ALIGN == 0
    assert torch.equal(add, torch.zeros(mask.shape).masked_fill(~mask, float("-inf")))
    from adafuse_lab.decoding.columns import _clone
    copy = _clone({"full_attention": add})["full_attention"]  # a graph's static input keeps the padded rows
    assert copy.stride() == add.stride() and torch.equal(copy, add) and copy.data_ptr() != add.data_ptr()
    wide = mask[:, :, :1].expand(2, 1, 3, 21)  # an expanded view is copied whole
    assert torch.equal(_clone(wide), wide) and _clone(wide).is_contiguous()
    q, k, v = (torch.randn(2, 2, n, 8, generator=torch.Generator().manual_seed(n)) for n in (3, 21, 21))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert torch.equal(sdpa(q, k, v, attn_mask=add), sdpa(q, k, v, attn_mask=mask))


def test_engine_decodes_the_same_with_additive_masks(monkeypatch):
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    prompts = ["Question: What is the capital of France?\nAnswer:", "Question: Who wrote Hamlet?\nAnswer:"]
    cfg = DecodeConfig(max_new_tokens=10)
    ref = {meth: [o.text for o in decode(meth, members, prompts, cfg)] for meth in ("adafuse", "sweetspan")}
    masks, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *a, **kw):
        masks.append(None if attn_mask is None else attn_mask.dtype)
        return real(q, k, v, attn_mask, *a, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(attention, "mode", "additive")
    for meth, texts in ref.items():
        assert [o.text for o in decode(meth, members, prompts, cfg)] == texts, meth
    assert torch.float32 in masks  # the streaming forwards got additive masks


@pytest.mark.parametrize("t", [1, 4])
@pytest.mark.parametrize("per_head", [False, True])
def test_cascade_sdpa_equals_sdpa_when_the_first_columns_are_shared(t, per_head, monkeypatch):
    g = torch.Generator().manual_seed(t)
    b, kvh, groups, w, d, n = 3, 2, 3, 12, 8, 5
    q = torch.randn(b, kvh * groups, t, d, generator=g)
    k, v = torch.randn(b, kvh, w, d, generator=g), torch.randn(b, kvh, w, d, generator=g)
    mask = torch.rand(b, kvh * groups if per_head else 1, t, w, generator=g) > 0.4
    mask[..., :n] = True  # every query reads the shared columns
    want, _ = sdpa_attention_forward(Module(groups), q, k, v, mask, scaling=0.3)
    with attention.shared_columns(n):
        got, _ = attention.cascade_sdpa(Module(groups), q, k, v, mask, scaling=0.3)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    calls = []
    monkeypatch.setattr(attention, "_unmasked", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    sliding = Module(groups)
    sliding.sliding_window = 4  # a sliding-window layer does not read every shared column: plain SDPA
    with attention.shared_columns(n):
        assert torch.equal(attention.cascade_sdpa(sliding, q, k, v, mask, scaling=0.3)[0], want)
    assert torch.equal(attention.cascade_sdpa(Module(groups), q, k, v, mask, scaling=0.3)[0], want)  # none shared
    assert not calls


def test_engine_decodes_the_same_with_cascade_attention(monkeypatch):
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    members = [load_session("tiny:bpe"), paper_scale.load_random("random:llama-3.1-8b+tiny:spm", **small)]
    prompts = ["Question: What is the capital of France, the country in western Europe?\nAnswer:",
               "Question: Who wrote the play Hamlet, about a prince?\nAnswer:"]  # different lengths: left padding
    cfg = DecodeConfig(max_new_tokens=10)
    ref = {meth: [o.text for o in decode(meth, members, prompts, cfg)] for meth in ("adafuse", "sweetspan")}
    seen, real = [], attention.cascade_sdpa

    def checked(module, query, key, value, mask, *a, **kw):
        if attention.shared and mask is not None and mask.ndim == 4:
            assert bool(mask[..., :attention.shared].all())  # the engine's promise: every query reads them
            seen.append(attention.shared)
        return real(module, query, key, value, mask, *a, **kw)
    unmasked, real_unmasked = [], attention._unmasked
    monkeypatch.setattr(attention, "_unmasked", lambda *a: unmasked.append(a[0].shape) or real_unmasked(*a))
    monkeypatch.setattr(attention, "cascade_sdpa", checked)
    monkeypatch.setattr(attention, "mode", "cascade")
    for meth, texts in ref.items():
        assert [o.text for o in decode(meth, members, prompts, cfg)] == texts, meth
    assert seen and min(seen) > 0 and len(unmasked) == len(seen)  # and each took the split path
    assert all(m.model.config._attn_implementation == "sdpa" for m in members)
