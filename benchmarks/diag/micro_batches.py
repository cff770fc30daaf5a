"""Does a batch decoded as n micro-batches give the answers of one batch, and how fast?

    python benchmarks/diag/micro_batches.py --data-dir data [--limit 64] [--batch 64] [--tokens 256] [--micro 1,2,4]

Decodes the first `limit` GSM8K prompts once per micro_batches value (after a short warm-up)
and prints each one's wall time and how many answers equal those of the first value. In bf16
the parts' forwards have other shapes than the whole batch's, so a few answers may differ
by rounding; in fp32 on the CPU tests/test_decoding.py pins them equal.
"""
import argparse
import dataclasses
import json
import time

import torch

from adafuse_lab.cli import parse_sets
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--method", default="adafuse")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--micro", default="1,2,4")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE DecodeConfig fields (as the CLI's --set)")
    ap.add_argument("--out")
    args = ap.parse_args()
    members = [load_session(m) for m in args.models.split(",")]
    task = get_task("gsm8k")
    prompts = [task.prompt(e) for e in task.load(source="local", data_dir=args.data_dir, limit=args.limit)]
    cfg = DecodeConfig(max_new_tokens=args.tokens, batch_size=args.batch, **parse_sets(args.set))
    sync = torch.cuda.synchronize if members[0].device.type == "cuda" else (lambda: None)
    rows, first = [], None
    for n in [int(x) for x in args.micro.split(",")]:
        c = dataclasses.replace(cfg, micro_batches=n)
        decode(args.method, members, prompts[:2], dataclasses.replace(c, max_new_tokens=4, batch_size=2))
        sync()
        start = time.perf_counter()
        texts = [o.text for o in decode(args.method, members, prompts, c)]
        sync()
        wall = time.perf_counter() - start
        first = first or texts
        same = sum(a == b for a, b in zip(texts, first))
        rows.append({"micro_batches": n, "wall_s": round(wall, 3), "same_answers": same, "n": len(texts)})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if members[0].device.type == "cuda" else "cpu",
                       "method": args.method, "batch": args.batch, "tokens": args.tokens,
                       "config": cfg.to_dict(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
