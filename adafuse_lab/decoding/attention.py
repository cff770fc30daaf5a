"""The attention of the engine's forwards.

Every engine forward runs SDPA without cuDNN (ATTENTION_KERNELS: cuDNN plans an execution
graph for every new key length, 2-3 ms of host time per layer call; BENCHMARKS.md).

Opt-in (`bench --attention additive`, or ADAFUSE_ATTENTION=additive): the streaming engine hands
its 4-D masks to SDPA already in the form SDPA would make of them. Given a boolean mask, SDPA turns
it into an additive one (0 where a key is read, -inf elsewhere) in every layer call, and the
memory-efficient kernel, the one that takes a mask, pads its rows to a multiple of 16 columns: a
few element-wise kernels per layer, one per attention call in lease 5's profile (BENCHMARKS.md).
`additive_mask` does both once per forward; the attention itself gets the same values.

Opt-in (`bench --attention cascade`, or ADAFUSE_ATTENTION=cascade): every query of a streaming
forward reads the first `shared` columns of the cache (the prompts, which the engine moves to the
front), so those need no mask. `cascade_sdpa` attends to them with the maskless flash kernel, to
the rest (prompt tails, answers, streams: a few hundred columns) with the mask, and merges the two
by their log-sum-exp. The masked part, which lease 5's profile found to be a third of the GPU
time, then covers a few hundred columns instead of the whole cache. Same attention up to rounding.

Opt-in (`bench --attention grouped`, or ADAFUSE_ATTENTION=grouped): grouped-query attention
without copies of the keys and values. With a mask, transformers' SDPA path repeats every
key/value head once per query head that reads it (repeat_kv): for qwen2.5-coder-0.5b (14 query
heads, 2 key/value heads) that writes and reads 7 copies of the whole fixed-width cache in every
layer of every forward. `grouped_sdpa` folds the query heads of one key/value head into the
query length instead, (B, H, T, D) -> (B, KVH, H/KVH * T, D), repeats the mask (T rows, not
the cache) to match, and calls SDPA once on the keys and values as they are. Each query row
still attends over the same keys with the same mask, so the result is the same attention.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
GROUPED = "adafuse_grouped_sdpa"  # the names under which transformers finds grouped_sdpa
CASCADE = "adafuse_cascade_sdpa"  # and cascade_sdpa
MODES = ("sdpa", "grouped", "additive", "cascade")
MASK_ALIGN = 16  # columns: the memory-efficient kernel's alignment for the mask's rows
# Fold only forwards of at most this many query tokens per row: the engine's decode steps feed
# far fewer (its CUDA graphs are captured for about 8 power-of-two buckets), a prompt's prefill
# feeds all of it; a longer step is still right, through transformers' path. Folding repeats
# the mask once per folded head: for a prefill of 1.5k-token prompts at batch 256 that is a
# 4 GB copy (more once SDPA turns it to floats), the most likely reason the batch-256 grouped
# benchmark ran out of memory (BENCHMARKS.md). transformers' path, which copies the keys and
# values of those same tokens instead, is no worse there.
FOLD_MAX_QUERIES = 128
mode = os.environ.get("ADAFUSE_ATTENTION", "sdpa")  # set by bench --attention
shared = 0  # mode "cascade": leading cache columns every query of the forward reads (set by the engine)


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature; falls back to its SDPA where folding does not apply."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    n_rep = getattr(module, "num_key_value_groups", 1)
    if (n_rep == 1 or attention_mask is None or attention_mask.ndim != 4 or kwargs.get("position_bias") is not None
            or query.shape[2] > FOLD_MAX_QUERIES):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q, m = _fold(query, attention_mask, key.shape[1])
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=m, dropout_p=dropout, scale=scaling)
    return _unfold(out, query), None


def _fold(query, mask, kvh: int):
    """The query heads of each key/value head folded into the query length, (B, H, T, D) ->
    (B, KVH, H/KVH * T, D) (head g * n_rep + r -> rows r * T ... r * T + T - 1 of group g), and
    the 4-D mask's rows to match."""
    b, h, t, d = query.shape
    mb, n_rep, width = mask.shape[0], h // kvh, mask.shape[-1]  # the mask's batch may broadcast
    if mask.shape[1] == 1:  # one mask for every head: repeat its t rows once per folded head
        mask = mask[:, :, None].expand(mb, 1, n_rep, t, width).reshape(mb, 1, n_rep * t, width)
    else:
        mask = mask.reshape(mb, kvh, n_rep * t, width)
    return query.reshape(b, kvh, n_rep * t, d), mask


def _unfold(out, query):
    """Folded attention output back to transformers' layout (B, T, H, D)."""
    b, h, t, _ = query.shape
    return out.reshape(b, h, t, out.shape[-1]).transpose(1, 2).contiguous()


def cascade_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature: the first `shared` columns without a mask,
    the rest with it, merged by log-sum-exp; transformers' SDPA where that does not apply (no
    shared columns, a sliding-window layer, a long forward)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    n = shared
    sliding = getattr(module, "sliding_window", None) or kwargs.get("sliding_window")
    if (not n or sliding or attention_mask is None or attention_mask.ndim != 4 or n >= key.shape[2]
            or kwargs.get("position_bias") is not None or query.shape[2] > FOLD_MAX_QUERIES):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    q, m = _fold(query, attention_mask[..., n:key.shape[2]], key.shape[1])
    out1, lse1 = _unmasked(q, key[:, :, :n], value[:, :, :n], scale)
    # the masked part in float32, as the SDPA kernels accumulate: it is small
    scores = torch.matmul(q.float(), key[:, :, n:].float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    lse2 = torch.logsumexp(scores, -1)  # finite: every query reads its own column, past the shared ones
    out2 = torch.matmul(torch.softmax(scores, -1), value[:, :, n:].float())
    lse = torch.logaddexp(lse1, lse2)
    out = out1.float() * (lse1 - lse).exp()[..., None] + out2 * (lse2 - lse).exp()[..., None]
    return _unfold(out.to(query.dtype), query), None


def _unmasked(q, k, v, scale):
    """Attention without a mask and its log-sum-exp per query row (B, H, L)."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    elif q.device.type == "cuda":  # flash has no float32
        out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
    else:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    return out[0], out[1][..., : q.shape[2]].float()  # the efficient kernel pads the rows of its log-sum-exp


@contextlib.contextmanager
def shared_columns(n: int):
    """Mode "cascade": the forwards inside read columns [0, n) for every query."""
    global shared
    shared = n
    try:
        yield
    finally:
        shared = 0


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: read) as SDPA's additive mask of `dtype`, with rows padded in memory
    to a multiple of MASK_ALIGN columns (the view keeps the mask's own width)."""
    width = mask.shape[-1]
    out = torch.zeros(*mask.shape[:-1], width + (-width) % MASK_ALIGN, dtype=dtype, device=mask.device)
    return out[..., :width].masked_fill_(~mask, float("-inf"))


@functools.cache  # once per process: engine_attention calls it at every swapped forward
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    # looked up at each call, so that the module's functions can be replaced (tests do)
    for name, fn in ((GROUPED, lambda *a, **k: grouped_sdpa(*a, **k)),
                     (CASCADE, lambda *a, **k: cascade_sdpa(*a, **k))):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)  # masks the model builds itself: as for SDPA


@contextlib.contextmanager
def engine_attention(model):
    """The attention for the forwards inside: SDPA without cuDNN, and in mode "grouped" grouped_sdpa
    in place of the model's SDPA (only inside: HF's own `generate` keeps its attention)."""
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r} (ADAFUSE_ATTENTION?) is not one of {', '.join(MODES)}")
    config = model.config
    swap = mode in ("grouped", "cascade") and config._attn_implementation == "sdpa"
    if swap:
        _register()
        config._attn_implementation = GROUPED if mode == "grouped" else CASCADE
    try:
        with sdpa_kernel(ATTENTION_KERNELS):
            yield
    finally:
        if swap:
            config._attn_implementation = "sdpa"
