"""A Triton kernel for the engine's attention: few new tokens per row over a wide cache, any mask.

SDPA's kernels tile the query by (row, head): with 1-16 new tokens per row most of each tile
is empty, and with a mask they also read K/V once per query head (docs/engine_log.md, engine v6).
Here one program takes a row's K/V head and every query that reads it: the G query heads of
the group times the T new tokens, G*T rows of one tile. It streams the row's cache columns
once, skips blocks of columns the mask hides from every query (free and dead columns), and
keeps an online softmax (flash-decoding without the split). The mask is the runtime's
(rows x 1 x T x width booleans), read per block of columns.

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
def _kernel(interpreted: bool):  # triton.jit reads TRITON_INTERPRET when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def tree_attention(Q, K, V, Mask, Out, scale,
                       sq_r, sq_h, sq_t, sk_r, sk_h, sk_w, sv_r, sv_h, sv_w, sm_r, sm_t, sm_w, so_r, so_h, so_t,
                       T, W, KV_HEADS,
                       G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        r, hk = pid // KV_HEADS, pid % KV_HEADS
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows: group head g, token t
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
        for n0 in range(0, W, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            inside = n < W
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
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(Out + r * so_r + head[:, None] * so_h + t[:, None] * so_t + d[None, :],
                 out.to(Out.dtype.element_ty), mask=live[:, None] & dm[None, :])

    return tree_attention


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                   block_n: int = 64, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """q: rows x H x T x D; k, v: rows x H_kv x W x D (H a multiple of H_kv); mask: booleans
    broadcastable to rows x 1 x T x W (True: may read). Returns rows x H x T x D."""
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
    grid = (R * kv_heads, triton.cdiv(G * T, block_m))
    _kernel(_interpreted())[grid](q, k, v, mask, out, scale,
                    q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    v.stride(0), v.stride(1), v.stride(2), mask.stride(0), mask.stride(2), mask.stride(3),
                    out.stride(0), out.stride(1), out.stride(2),
                    T, W, kv_heads, G=G, D=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                    BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    return out
