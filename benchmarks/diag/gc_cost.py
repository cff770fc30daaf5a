"""What Python's cyclic garbage collector costs in a decoding run, by generation.

The demo members loaded (not decoding: they make the heap as large as a real run's, about
400k tracked objects), then tiny members decode, so the run is short on the CPU while each
full collection walks what a real one would. --no-freeze runs without decode's freezing of
the objects alive before it (decoding/__init__.py, _older_objects_frozen).

    python benchmarks/diag/gc_cost.py [--batch 64] [--tokens 256] [--no-freeze]
"""
import argparse
import contextlib
import gc
import time

import torch

from adafuse_lab import decoding
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.models import load_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--no-freeze", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    heap = [load_session(m) for m in ("qwen2.5-coder-0.5b", "smollm2-135m")]  # noqa: F841 (kept alive)
    members = [load_session(m) for m in ("tiny:bpe", "tiny:spm")]
    prompts = [f"Question: Tom has {i} apples and buys {i % 7 + 2} more. How many now?\nAnswer:"
               for i in range(args.batch)]
    decode("adafuse", members, prompts[:4], DecodeConfig(max_new_tokens=8, batch_size=4))  # warm-up
    if args.no_freeze:
        decoding._older_objects_frozen = contextlib.nullcontext
    gc.collect()
    spent, started = [0.0, 0.0, 0.0], [0.0]

    def timer(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
    before = [s["collections"] for s in gc.get_stats()]
    gc.callbacks.append(timer)
    start = time.perf_counter()
    decode("adafuse", members, prompts, DecodeConfig(max_new_tokens=args.tokens, batch_size=args.batch))
    wall = time.perf_counter() - start
    gc.callbacks.remove(timer)
    runs = [s["collections"] - b for s, b in zip(gc.get_stats(), before)]
    print(f"{'no freeze' if args.no_freeze else 'freeze'}: {len(gc.get_objects())} objects tracked after, wall {wall:.2f} s; "
          + ", ".join(f"generation {g}: {n} collections, {t:.3f} s" for g, (n, t) in enumerate(zip(runs, spent))))


if __name__ == "__main__":
    main()
