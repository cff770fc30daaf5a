"""The backend interface, the two SDPA backends, and their registration with transformers."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import tree_kernel

NAME = "adafuse"  # the attention implementation name the engine's forwards run under


@dataclass
class StepMeta:
    """What one forward's tokens may read, as tensors on the member's device.

    Columns (rows x width): `committed` (part of the row's committed text), `pos` (the
    position id the column was fed with), `owner` (the stream that wrote an uncommitted
    column; -1 none). Queries (rows x T, the fed tokens at columns front .. front+T-1):
    `q_pos`, `q_owner`, `q_parent` (a second stream whose columns it reads: a branch reads
    the look-ahead it branched from), `q_limit` (committed columns at positions >= this are
    hidden: a scored candidate re-tokenizes the committed tail)."""
    committed: torch.Tensor
    pos: torch.Tensor
    owner: torch.Tensor
    front: int | torch.Tensor   # a 0-d tensor inside a captured graph (its static columns' first)
    q_pos: torch.Tensor
    q_owner: torch.Tensor
    q_parent: torch.Tensor
    q_limit: torch.Tensor
    window: int | None = None   # sliding window in positions (None: none)
    mixed: bool = False         # only some layers slide: the model takes one mask per layer type


def tree_mask(meta: StepMeta) -> torch.Tensor:
    """rows x T x width booleans: a token reads the visible committed columns, the columns of
    its own stream (and its parent's) up to itself, and always itself (a pad too: a row of
    only -inf would be NaN)."""
    R, T = meta.q_pos.shape
    width = meta.committed.shape[1]
    col = torch.arange(width, device=meta.pos.device)
    q_col = meta.front + torch.arange(T, device=meta.pos.device)
    owner = meta.owner[:, None, :]
    mask = meta.committed[:, None, :] & (meta.pos[:, None, :] < meta.q_limit[:, :, None])
    mine = (owner == meta.q_owner[:, :, None]) | (owner == meta.q_parent[:, :, None])
    mask |= mine & (col[None, None, :] <= q_col[None, :, None])
    mask |= col[None, None, :] == q_col[None, :, None]
    return mask


class AttentionBackend:
    """plan() once per forward, attend() per layer."""
    name = "base"
    kernels: list = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def plan(self, meta: StepMeta):
        """The attention mask handed to the model: 4-D booleans, or one per layer type."""
        mask = tree_mask(meta)
        if meta.window is None:
            return mask[:, None]
        near = mask & (meta.pos[:, None, :] > meta.q_pos[:, :, None] - meta.window)
        if meta.mixed:
            return {"full_attention": mask[:, None], "sliding_attention": near[:, None]}
        return near[:, None]

    def attend(self, module, q, k, v, mask, scaling):
        raise NotImplementedError


class Reference(AttentionBackend):
    name = "reference"
    kernels = [SDPBackend.MATH]

    def attend(self, module, q, k, v, mask, scaling):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)


class SdpaGqa(AttentionBackend):
    """SDPA with enable_gqa on the keys and values as they are. cuDNN is allowed: the engine's
    cache has a fixed width, so its execution plans are built once per shape."""
    name = "sdpa_gqa"
    kernels = [SDPBackend.CUDNN_ATTENTION, *AttentionBackend.kernels]

    def attend(self, module, q, k, v, mask, scaling):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=_grouped(module, q, k))


def _grouped(module, q, k) -> bool:
    """Do query heads share key/value heads? From the layer's config when it has one: under
    torch.compile with dynamic shapes a comparison of head counts can be symbolic, which SDPA's
    enable_gqa refuses (a graph break in every layer, seen on an H200)."""
    groups = getattr(module, "num_key_value_groups", None)
    return groups != 1 if isinstance(groups, int) else q.shape[1] != k.shape[1]


class SdpaFold(AttentionBackend):
    """The query heads that share a key/value head become extra query rows of that head, so
    the memory-efficient kernel (which takes a mask but not enable_gqa) reads each K/V head
    once, with no copies of the keys and values."""
    name = "sdpa_fold"
    kernels = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def attend(self, module, q, k, v, mask, scaling):
        B, H, T, D = q.shape
        G = H // k.shape[1]
        if G == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
        qf = q.reshape(B, k.shape[1], G * T, D)  # heads h*G..h*G+G-1 read K/V head h
        mf = mask.repeat(1, 1, G, 1) if mask.shape[1] == 1 else mask.reshape(B, k.shape[1], G * T, -1)
        out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mf, scale=scaling)
        return out.reshape(B, H, T, D)


class TritonTree(AttentionBackend):
    """tree_kernel.py: one program per row and K/V head over all the queries that read it."""
    name = "triton"

    def attend(self, module, q, k, v, mask, scaling):
        return tree_kernel.tree_attention(q, k, v, mask, scaling if scaling is not None else q.shape[-1] ** -0.5)


class ByLength(AttentionBackend):
    """One backend for forwards that feed one token per row, another for longer ones: for one
    token SDPA's kernel beats triton's, for several triton's beats SDPA's (BENCHMARKS.md, v7).
    Both take the same mask; a CUDA graph is captured per length, so each keeps one kernel."""

    def __init__(self, one: AttentionBackend, many: AttentionBackend):
        self.one, self.many = one, many
        self.name = f"{one.name}/{many.name}"
        self.kernels = one.kernels + [k for k in many.kernels if k not in one.kernels]  # SDPA's choice (triton ignores it)

    def attend(self, module, q, k, v, mask, scaling):
        return (self.one if q.shape[2] == 1 else self.many).attend(module, q, k, v, mask, scaling)


BACKENDS = {b.name: b for b in (Reference(), SdpaGqa(), SdpaFold(), TritonTree())}
# the candidates "auto" measures on CUDA
FAST = ("sdpa_gqa", "sdpa_fold") + (("triton",) if tree_kernel.available() else ())
LENGTHS = (1, 8)  # new tokens per row "auto" times: a greedy step, and a step of look-ahead and candidates
CHOSEN: dict = {}  # (model shape key) -> {"backend": name, "us": {name: {T: time}}}: what auto measured


def get_backend(name: str, device, model=None, rows: int = 64, width: int = 2048) -> AttentionBackend:
    """A backend by name. "auto": on CUDA, for one new token per row and for 8, the faster of
    FAST on one attention layer of this member's shape (rows x width; measured once per shape),
    the two combined by ByLength when they differ; elsewhere sdpa_gqa."""
    if name != "auto":
        return BACKENDS[name]
    if model is None or torch.device(device).type != "cuda":
        return BACKENDS["sdpa_gqa"]
    c = model.config
    heads = c.num_attention_heads
    shape = (heads, getattr(c, "num_key_value_heads", None) or heads,
             getattr(c, "head_dim", None) or c.hidden_size // heads, rows, width)
    if shape not in CHOSEN:
        us = {b: _time_layer(BACKENDS[b], *shape, device=device) for b in FAST}
        CHOSEN[shape] = {"backend": _fastest(us).name, "us": us}
    return _fastest(CHOSEN[shape]["us"])


def _fastest(us: dict) -> AttentionBackend:
    """From {backend: {new tokens: us}}: the fastest backend per length, one or a ByLength."""
    one, many = (min(us, key=lambda b: us[b][T]) for T in LENGTHS)
    return BACKENDS[one] if one == many else ByLength(BACKENDS[one], BACKENDS[many])


def _time_layer(backend, heads, kv_heads, dim, rows, width, device) -> dict:
    """Microseconds of one layer's attention per number of new tokens per row (LENGTHS), random
    data, a mask that hides a third of the columns."""
    out = {}
    torch.cuda.synchronize(device)  # no other batch's work in flight (batches_in_flight) in the timings
    gen = torch.Generator(device=device).manual_seed(0)
    for T in LENGTHS:
        q = torch.randn(rows, heads, T, dim, device=device, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(rows, kv_heads, width, dim, device=device, dtype=torch.bfloat16, generator=gen)
        v = torch.randn_like(k)
        mask = torch.rand(rows, 1, T, width, device=device, generator=gen) > 0.33
        with sdpa_kernel(backend.kernels):
            try:
                for _ in range(3):
                    backend.attend(None, q, k, v, mask, dim ** -0.5)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):
                    backend.attend(None, q, k, v, mask, dim ** -0.5)
                end.record()
                end.synchronize()
                out[T] = round(start.elapsed_time(end) * 100, 1)  # ms per 10 calls -> us per call
            except Exception:  # no kernel for this shape (SDPA), or it does not compile (triton)
                out[T] = float("inf")
    return out


_active: list[AttentionBackend] = []


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature; transformers' SDPA for what the backends
    do not model (attention sinks, position bias: no member of ours has them)."""
    if attention_mask is None or attention_mask.ndim != 4 or kwargs.get("s_aux") is not None \
            or kwargs.get("position_bias") is not None or not _active:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = _active[-1].attend(module, query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # a mask the model builds itself: as SDPA's


@contextlib.contextmanager
def use_backend(model, backend: AttentionBackend):
    """The forwards inside run their attention through `backend` (HF's own generate outside
    keeps the model's attention)."""
    config = model.config
    swap = config._attn_implementation in ("sdpa", "eager")
    if swap:
        _register()
        saved, config._attn_implementation = config._attn_implementation, NAME
    _active.append(backend)
    try:
        with sdpa_kernel(backend.kernels):
            yield
    finally:
        _active.pop()
        if swap:
            config._attn_implementation = saved
