"""What AdaFuse's forwards carry: per member, the forwards by bucket (fed tokens per row, rounded
up), the widest row's length, the tokens fed by stream kind, and the token slots computed (pads
included). Real members on the CPU, GSM8K dev prompts; the counts, not the times, carry over to
a GPU (a forward's cost grows with its bucket: docs/engine_log.md, engine v9).

    python benchmarks/diag/fill.py [--data-dir ../shared/data] [--n 16] [--tokens 64] [--set KEY=VALUE]
"""
import argparse
import collections
import json

from adafuse_lab.cli import parse_sets
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.decoding.runtime import streams
from adafuse_lab.decoding.runtime.graphs import bucket
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE DecodeConfig fields (as the CLI's --set)")
    a = ap.parse_args()
    task = get_task("gsm8k")
    prompts = [task.prompt(e) for e in task.load(source="local", data_dir=a.data_dir, limit=a.n)]
    members = [load_session(m) for m in a.members.split(",")]
    seen = collections.defaultdict(list)  # runtime -> (bucket, widest row, tokens by kind) per forward
    plan_rows = streams.Runtime._plan_rows

    def recorded(self, cap):
        feeding, used = plan_rows(self, cap)
        if feeding:
            kinds = collections.Counter()
            for s in feeding:
                kinds[s.kind] += s.take
            seen[id(self)].append((bucket(max(used)), max(used), kinds, len(used)))
        return feeding, used
    streams.Runtime._plan_rows = recorded
    outs = decode("adafuse", members, prompts, DecodeConfig(batch_size=a.n, max_new_tokens=a.tokens, **parse_sets(a.set)))
    for name, rows in zip(a.members.split(","), seen.values()):
        fed = sum((r[2] for r in rows), collections.Counter())
        print(json.dumps({"member": name, "forwards": len(rows),
                          "buckets": dict(sorted(collections.Counter(r[0] for r in rows).items())),
                          "widest_row": dict(sorted(collections.Counter(r[1] for r in rows).items())),
                          "fed": sum(fed.values()), "fed_by_kind": dict(fed), "slots": sum(r[0] * r[3] for r in rows)}))
    print(json.dumps({"answers": [o.text for o in outs]}))


if __name__ == "__main__":
    main()
