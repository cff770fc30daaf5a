"""Paired comparison over several slices of one task decoded as separate runs (run ids restart at
0000 in each slice's data folder): each slice's records get its folder name as an id prefix,
then the first setting against the second, as benchmarks/paired_runs.py does.

    python benchmarks/results/eos_fix_cpu/combine.py A1,A2 B1,B2   (A: first setting's slices)
"""
import json
import lzma
import sys
import tempfile
from pathlib import Path

from adafuse_lab.runs import read_samples
from adafuse_lab.stats import metric_keys, paired_diff, score_ci


def load(spec: str):
    runs = [Path(p) for p in spec.split(",")]
    tasks = {json.loads((r / "config.json").read_text())["task"] for r in runs}
    assert len(tasks) == 1, tasks
    recs = []
    for i, r in enumerate(runs):  # slice i of the task: ids as they are, prefixed by the slice
        recs += [{**x, "id": f"{i}:{x['id']}"} for x in samples(r)]
    return tasks.pop(), recs


def samples(run: Path) -> list:
    """A run's records; the committed runs keep them as samples.jsonl.xz."""
    if (run / "samples.jsonl").exists():
        return read_samples(run / "samples.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "samples.jsonl"
        plain.write_bytes(lzma.decompress((run / "samples.jsonl.xz").read_bytes()))
        return read_samples(plain)


(task, a), (_, b) = load(sys.argv[1]), load(sys.argv[2])
key = metric_keys(task)["example"]
for name, recs in ((sys.argv[1], a), (sys.argv[2], b)):
    s = score_ci(task, recs, key)
    print(f"{name}: n={s['n']} {key}={s['value']:.1f} [{s['low']:.1f}, {s['high']:.1f}]")
d = paired_diff(task, a, b, key)
first = {r["id"]: r["prediction"] for r in a}
same = sum(first.get(r["id"]) == r["prediction"] for r in b)
print(f"first - second: {d['diff']:+.1f} [{d['low']:.1f}, {d['high']:.1f}] p={d['p_value']:.3f} n={d['n']}, "
      f"same prediction {same}")
