"""Forwards per answer token of AdaFuse, per prompt: how many steps a round costs beyond the
tokens it commits, with one member or several.

    python benchmarks/diag/steps_per_token.py [--members qwen2.5-coder-0.5b,smollm2-135m] [--prompts 8] [--shots 1] [--tokens 64]

GSM8K dev questions after the paper's demonstrations (host_profile.prompts), with the engine's
GPU path of reading scores (prefetch) switched on. Prints, per prompt, the answer's tokens in
the first member's tokenizer, the rounds, the rounds in which a member branched, and each
member's forwards; then the forwards per answer token over all prompts that used the whole budget,
and per member the reads of results that waited for the device (on a GPU each waits for every
forward queued before it) and the rows each prefetch queued.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from host_profile import prompts  # noqa: E402

from adafuse_lab.cli import parse_sets  # noqa: E402
from adafuse_lab.decoding import DecodeConfig, decode  # noqa: E402
from adafuse_lab.decoding.runtime import streams  # noqa: E402
from adafuse_lab.decoding.runtime.counters import COUNTS  # noqa: E402
from adafuse_lab.models import load_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE DecodeConfig fields (as the CLI's --set)")
    args = ap.parse_args()
    streams.PREFETCH_DEVICES = {"cuda", "cpu"}
    members = [load_session(m) for m in args.members.split(",")]
    cfg = DecodeConfig(max_new_tokens=args.tokens, batch_size=args.prompts, **parse_sets(args.set))
    rows = []  # rows of each prefetch: its peeks' slots
    peeks = streams.Runtime._peeks
    streams.Runtime._peeks = lambda self, slots, *a: (rows.append(len(slots)), peeks(self, slots, *a))[1]
    outs = decode("adafuse", members, prompts(args.prompts, args.shots), cfg)
    full = []
    for o in outs:
        tokens, forwards = o.stats["tokens"][0], o.stats["forwards"]
        branched = sum(1 for r in o.trace for m in r["members"] if m["branched"])
        print(f"tokens {tokens:4d}  rounds {len(o.trace):3d}  member branchings {branched:3d}  forwards {forwards}")
        if tokens >= args.tokens:
            full.append((tokens, forwards))
    if full:
        per = [sum(f[k] for _, f in full) / sum(t for t, _ in full) for k in range(len(members))]
        print(f"{len(full)} answers at the budget: forwards per answer token "
              + ", ".join(f"{m.name} {x:.2f}" for m, x in zip(members, per)))
    for m in dict.fromkeys(members):
        key = id(m.model)
        print(f"{m.name}: {COUNTS[key, 'forwards']} forwards, reads that waited: {COUNTS[key, 'sync_peeks']} peeks, "
              f"{COUNTS[key, 'sync_reads']} scores")
    print(f"peek rows per call (prefetches and waiting peeks): {sum(rows) / max(len(rows), 1):.1f}")


if __name__ == "__main__":
    main()
