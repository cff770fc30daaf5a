"""Paired comparison of run folders of one task: each run's paper metric with its 95% interval,
then the first run minus each other run (paired bootstrap over the examples both hold: 95%
interval, p) and how many of those examples have the same prediction. Any task; qa_stops.py adds
stop counts for QA.

    python benchmarks/paired_runs.py RUN_A RUN_B [RUN_C ...]
"""
import argparse
import json
from pathlib import Path

from adafuse_lab.stats import metric_keys, paired_diff, score_ci
from adafuse_lab.runs import read_samples


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    cfgs = [json.loads((r / "config.json").read_text()) for r in args.runs]
    tasks = {c["task"] for c in cfgs}
    if len(tasks) != 1:
        raise SystemExit(f"error: the runs are of different tasks: {sorted(tasks)}")
    task = tasks.pop()
    keys = metric_keys(task)
    # the bootstraps give no spBLEU (nan), so translation is compared by BLEU, headline_key's fallback
    key = keys["example"] or keys["paper_fallback"]
    recs = [read_samples(r / "samples.jsonl") for r in args.runs]
    for run, cfg, rs in zip(args.runs, cfgs, recs):
        s = score_ci(task, rs, key)
        print(f"{run}: {cfg['method']} {cfg.get('decode') or {}} half={cfg.get('half')} n={s['n']} "
              f"{key}={s['value']:.1f} [{s['low']:.1f}, {s['high']:.1f}]")
    first = {r["id"]: r["prediction"] for r in recs[0]}
    for run, rs in zip(args.runs[1:], recs[1:]):
        d = paired_diff(task, recs[0], rs, key)
        same = sum(first.get(r["id"]) == r["prediction"] for r in rs)
        print(f"first - {run.name}: {d['diff']:+.1f} [{d['low']:.1f}, {d['high']:.1f}] p={d['p_value']:.3f} "
              f"n={d['n']}, same prediction {same}")


if __name__ == "__main__":
    main()
