"""Seconds a run spends tokenizing its prompts before decoding: the context check of `run`
(runs._check_context), decode's input check, then each member's prompt ids as the runtime reads
them; one member, GSM8K dev prompts (about 1.4k tokens each), best of 5 fresh sessions.

    python benchmarks/diag/prompt_tokenize.py [--data-dir ../shared/data] [--n 64] [--member qwen2.5-coder-0.5b]
"""
import argparse
import dataclasses
import time

from adafuse_lab import runs
from adafuse_lab.decoding import DecodeConfig, check_inputs
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--member", default="qwen2.5-coder-0.5b")
    a = ap.parse_args()
    task = get_task("gsm8k")
    examples = task.load(source="local", data_dir=a.data_dir, limit=a.n)
    prompts = {e.id: task.prompt(e) for e in examples}
    base = load_session(a.member)
    times = []
    for _ in range(5):
        s = dataclasses.replace(base)  # a fresh session: no prompt ids kept from the last round
        start = time.perf_counter()
        runs._check_context([s], examples, prompts, 256)
        check_inputs("adafuse", [s], list(prompts.values()), DecodeConfig(), None)
        [s.encode_prompt(p) for p in prompts.values()]
        times.append(time.perf_counter() - start)
    tokens = sum(len(base.encode_prompt(p)) for p in prompts.values()) / len(prompts)
    print(f"{len(prompts)} prompts of {tokens:.0f} tokens on average: best {min(times):.3f} s, "
          f"all {[round(t, 3) for t in times]}")


if __name__ == "__main__":
    main()
