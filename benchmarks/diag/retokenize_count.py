"""How much re-tokenizing an AdaFuse run does: calls to Member.retokenize_tails, the texts they
tokenize, and the host seconds in them (early scoring re-tokenizes growing candidate texts
every step; docs/engine_log.md, engine v9). Real members on the CPU, GSM8K dev prompts.

    python benchmarks/diag/retokenize_count.py [--data-dir data] [--n 8] [--tokens 48] [--set KEY=VALUE]
"""
import argparse
import json
import time

from adafuse_lab.cli import parse_sets
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.decoding.runtime import member
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE DecodeConfig fields (as the CLI's --set)")
    a = ap.parse_args()
    task = get_task("gsm8k")
    prompts = [task.prompt(e) for e in task.load(source="local", data_dir=a.data_dir, limit=a.n)]
    members = [load_session(m) for m in a.members.split(",")]
    extra = parse_sets(a.set)
    count = {"calls": 0, "texts": 0, "seconds": 0.0}
    real = member.Member.retokenize_tails

    def counted(self, items):
        start = time.perf_counter()
        out = real(self, items)
        count["seconds"] += time.perf_counter() - start
        count["calls"] += 1
        count["texts"] += len(items)
        return out
    member.Member.retokenize_tails = counted
    outs = decode("adafuse", members, prompts, DecodeConfig(batch_size=a.n, max_new_tokens=a.tokens, **extra))
    print(json.dumps({**count, "seconds": round(count["seconds"], 3), "answers": [o.text for o in outs]}))


if __name__ == "__main__":
    main()
