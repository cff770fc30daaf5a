"""A Triton kernel for the engine's attention: few new tokens per row over a wide cache, any mask.

SDPA's kernels tile the query by (row, head): with 1-16 new tokens per row most of each tile
is empty, and with a mask they also read K/V once per query head (docs/engine_log.md, engine v6).
Here one program takes a row's K/V head and every query that reads it: the G query heads of
the group times the T new tokens, G*T rows of one tile. It streams the row's cache columns
once, skips blocks of columns the mask hides from every query (free and dead columns), and
keeps an online softmax. Where a batch starts fewer programs than the GPU has SMs, each row's
columns are split into chunks, one program each, whose partial softmaxes a second kernel merges
(flash-decoding's split). The mask is the runtime's (rows x 1 x T x width booleans), read per
block of columns.

Runs on CUDA; on the CPU only under Triton's interpreter (TRITON_INTERPRET=1, for tests).
"""
from __future__ import annotations

import functools
import os

import torch


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels(interpreted: bool):  # triton.jit reads TRITON_INTERPRET when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def tree_attention(Q, K, V, Mask, Out, Part, Best, Total, scale,
                       sq_r, sq_h, sq_t, sk_r, sk_h, sk_w, sv_r, sv_h, sv_w, sm_r, sm_t, sm_w, so_r, so_h, so_t,
                       T, W, KV_HEADS, CHUNK,
                       G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
        pid, mb, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        r, hk = pid // KV_HEADS, pid % KV_HEADS
        m = mb * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows: group head g, token t
        g, t = m // T, m % T
        live = m < G * T
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        head = hk * G + g
        q = tl.load(Q + r * sq_r + head[:, None] * sq_h + t[:, None] * sq_t + d[None, :],
                    mask=live[:, None] & dm[None, :], other=0.0)
        k_base, v_base = K + r * sk_r + hk * sk_h, V + r * sv_r + hk * sv_h
        m_base = Mask + r * sm_r + t[:, None] * sm_t
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        lo = split * CHUNK
        hi = tl.minimum(W, lo + CHUNK)
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            inside = n < hi
            seen = tl.load(m_base + n[None, :] * sm_w, mask=live[:, None] & inside[None, :], other=0) != 0
            if tl.max(seen.to(tl.int32)) > 0:  # a block nobody reads costs its mask only
                k = tl.load(k_base + n[:, None] * sk_w + d[None, :], mask=inside[:, None] & dm[None, :], other=0.0)
                s = tl.dot(q, tl.trans(k)) * scale
                s = tl.where(seen, s, float("-inf"))
                new = tl.maximum(best, tl.max(s, 1))
                safe = tl.where(new == float("-inf"), 0.0, new)
                p = tl.exp(s - safe[:, None])
                fade = tl.exp(best - safe)
                total = total * fade + tl.sum(p, 1)
                v = tl.load(v_base + n[:, None] * sv_w + d[None, :], mask=inside[:, None] & dm[None, :], other=0.0)
                acc = acc * fade[:, None] + tl.dot(p.to(v.dtype), v)
                best = new
        if SPLIT:  # this program's part of the row: the combine kernel merges the parts
            rows = (split * tl.num_programs(0) + pid) * tl.num_programs(1) * BLOCK_M + m
            tl.store(Part + rows[:, None] * BLOCK_D + d[None, :], acc)
            tl.store(Best + rows, best)
            tl.store(Total + rows, total)
        else:
            out = acc / tl.where(total > 0, total, 1.0)[:, None]
            tl.store(Out + r * so_r + head[:, None] * so_h + t[:, None] * so_t + d[None, :],
                     out.to(Out.dtype.element_ty), mask=live[:, None] & dm[None, :])

    @triton.jit
    def combine(Out, Part, Best, Total, so_r, so_h, so_t, T, KV_HEADS, SPLITS,
                G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
        """The parts of each query's softmax over the column chunks, merged (flash-decoding)."""
        pid, mb = tl.program_id(0), tl.program_id(1)
        r, hk = pid // KV_HEADS, pid % KV_HEADS
        m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        g, t = m // T, m % T
        live = m < G * T
        d = tl.arange(0, BLOCK_D)
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for split in range(0, SPLITS):
            rows = (split * tl.num_programs(0) + pid) * tl.num_programs(1) * BLOCK_M + m
            b = tl.load(Best + rows)
            new = tl.maximum(best, b)
            safe = tl.where(new == float("-inf"), 0.0, new)
            fade, here = tl.exp(best - safe), tl.exp(b - safe)
            total = total * fade + tl.load(Total + rows) * here
            acc = acc * fade[:, None] + tl.load(Part + rows[:, None] * BLOCK_D + d[None, :]) * here[:, None]
            best = new
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(Out + r * so_r + (hk * G + g)[:, None] * so_h + t[:, None] * so_t + d[None, :],
                 out.to(Out.dtype.element_ty), mask=live[:, None] & (d < D)[None, :])

    return tree_attention, combine


@functools.cache
def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def splits_for(programs: int, col_blocks: int, device) -> int:
    """Column chunks per (row, K/V head, query block): as many as it takes for one program per
    SM. Measured on an H100 (BENCHMARKS.md, engine v12): 64 rows of qwen's 2 K/V heads (128
    programs) gain 7-17% from 2 chunks; with a program per SM already (256 rows) chunks cost up
    to 14% at 16 new tokens per row."""
    return max(1, min(col_blocks, -(-_sms(device) // programs)))


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                   block_n: int = 64, num_warps: int = 4, num_stages: int = 2, splits: int | None = None) -> torch.Tensor:
    """q: rows x H x T x D; k, v: rows x H_kv x W x D (H a multiple of H_kv); mask: booleans
    broadcastable to rows x 1 x T x W (True: may read). Returns rows x H x T x D.
    splits: column chunks per row (None: splits_for's choice; 1: no combine step)."""
    import triton
    if q.device.type != "cuda" and not _interpreted():
        raise RuntimeError("the triton attention backend runs on CUDA (on the CPU only with TRITON_INTERPRET=1)")
    R, H, T, D = q.shape
    kv_heads, W = k.shape[1], k.shape[2]
    G = H // kv_heads
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    mask = mask.expand(R, 1, T, W)
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    out = torch.empty_like(q)
    block_m = max(16, min(128, triton.next_power_of_2(G * T)))
    block_d = max(16, triton.next_power_of_2(D))
    m_blocks = triton.cdiv(G * T, block_m)
    col_blocks = triton.cdiv(W, block_n)
    splits = splits or splits_for(R * kv_heads * m_blocks, col_blocks, q.device)
    chunk = triton.cdiv(col_blocks, splits) * block_n
    splits = triton.cdiv(W, chunk)  # no empty chunk at the end
    part = best = total = out  # one chunk: the parts are never written, the kernel writes out
    if splits > 1:
        rows = splits * R * kv_heads * m_blocks * block_m
        part = q.new_empty((rows, block_d), dtype=torch.float32)
        best, total = (q.new_empty(rows, dtype=torch.float32) for _ in range(2))
    attend, combine = _kernels(_interpreted())
    attend[(R * kv_heads, m_blocks, splits)](
        q, k, v, mask, out, part, best, total, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask.stride(0), mask.stride(2), mask.stride(3),
        out.stride(0), out.stride(1), out.stride(2),
        T, W, kv_heads, chunk, G=G, D=D, BLOCK_D=block_d,
        BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=splits > 1, num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        combine[(R * kv_heads, m_blocks)](out, part, best, total, out.stride(0), out.stride(1), out.stride(2),
                                          T, kv_heads, splits, G=G, D=D, BLOCK_D=block_d, BLOCK_M=block_m,
                                          num_warps=num_warps)
    return out
