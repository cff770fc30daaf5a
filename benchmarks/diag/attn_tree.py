"""One attention layer as the engine calls it: SDPA backends against the triton tree kernel.

Rows x width of cache columns, T new tokens per row, a mask as a decode step has it: a
committed prefix of random length, a few stream columns, free columns at the end. Prints
microseconds per call for each backend and, for triton, a sweep of block size and warps (2
pipeline stages) and of the column chunks per row (splits), and the time to read the layer's
K/V once (the floor of this call).

    python benchmarks/diag/attn_tree.py [--rows 64] [--width 2304] [--heads 14] [--kv-heads 2] [--dim 64]
"""
import argparse
import json

import torch

from adafuse_lab.decoding.attention import BACKENDS
from adafuse_lab.decoding.attention.tree_kernel import tree_attention
from torch.nn.attention import sdpa_kernel


def timed(fn, reps=20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--width", type=int, default=2304)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    k = torch.randn(a.rows, a.kv_heads, a.width, a.dim, device=dev, dtype=dt, generator=g)
    v = torch.randn_like(k)
    copy = torch.empty_like(k)
    floor = timed(lambda: (copy.copy_(k), copy.copy_(v))) / 2  # read + write each: about one read of both
    results = {"shape": vars(a), "kv_read_us": round(floor, 1), "T": {}}
    for T in (1, 4, 16):
        q = torch.randn(a.rows, a.heads, T, a.dim, device=dev, dtype=dt, generator=g)
        mask = torch.zeros(a.rows, 1, T, a.width, dtype=torch.bool, device=dev)
        prefix = torch.randint(a.width // 2, a.width - 300, (a.rows,), device=dev)
        cols = torch.arange(a.width, device=dev)
        mask |= (cols[None, :] < prefix[:, None])[:, None, None, :]
        mask &= torch.rand(a.rows, 1, T, a.width, device=dev, generator=g) < 0.98
        mask[:, :, :, a.width - 300:a.width - 300 + T] = True
        row = {}
        for name in ("sdpa_gqa", "sdpa_fold"):
            b = BACKENDS[name]
            with sdpa_kernel(b.kernels):
                row[name] = round(timed(lambda: b.attend(None, q, k, v, mask, a.dim ** -0.5)), 1)
        ref = BACKENDS["sdpa_gqa"].attend(None, q, k, v, mask, a.dim ** -0.5).float()
        for bn in (32, 64):
            for w in (4, 8):
                run = lambda: tree_attention(q, k, v, mask, a.dim ** -0.5, block_n=bn, num_warps=w)
                try:
                    err = (run().float() - ref).abs().max().item()
                    row[f"triton_n{bn}_w{w}_s2"] = (round(timed(run), 1), round(err, 4))
                except Exception as e:  # a configuration that does not compile or fit
                    row[f"triton_n{bn}_w{w}_s2"] = repr(e)[:80]
        row["triton_default"] = round(timed(lambda: BACKENDS["triton"].attend(None, q, k, v, mask, a.dim ** -0.5)), 1)
        for sp in (1, 2, 4, 8, 16):  # column chunks per row (1: one program streams the whole row)
            row[f"triton_splits{sp}"] = round(timed(lambda: tree_attention(q, k, v, mask, a.dim ** -0.5, splits=sp)), 1)
        results["T"][T] = row
        best = min((x[0], n) for n, x in row.items() if isinstance(x, tuple))
        print(f"T={T}: sdpa_gqa {row['sdpa_gqa']} us, sdpa_fold {row['sdpa_fold']} us, triton default "
              f"{row['triton_default']} us, best {best}; by splits "
              f"{[row[f'triton_splits{sp}'] for sp in (1, 2, 4, 8, 16)]}; K/V read {floor:.1f} us", flush=True)
    if a.out:
        json.dump(results, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
