"""The EOS fix on the qwen2.5-coder-1.5b + 0.5b pair, one QA task: the new runs (defaults, score_eos
off) against each other and against the stale runs of the same questions (H100, old engine and
old EOS scoring: the quality table's AdaFuse run and the score_eos=false run).

    python benchmarks/results/eos_fix_cpu/qwen15/compare.py TASK NEW_DEFAULT NEW_OFF STALE_DEFAULT STALE_OFF

Each argument is a samples.jsonl or samples.jsonl.xz, or several joined by commas (runs of
consecutive slices of the subset: data_from64 keeps the subset's ids). The new runs decode the subset folder
(ids TASK-0000 ... = dev rows 250 ...; data/TASK/source_ids.json maps them); the stale ones
carry dev ids. Prints markdown rows and writes summary_TASK.json beside this script.
"""
import json
import sys
from collections import Counter
from pathlib import Path

from adafuse_lab.runs import read_samples
from adafuse_lab.stats import paired_diff, score_ci

HERE = Path(__file__).resolve().parent


def load(paths: str) -> list[dict]:
    return [r for p in paths.split(",") for r in read_samples(Path(p))]


def main() -> None:
    task = sys.argv[1]
    source = json.loads((HERE.parent / f"data/{task}/source_ids.json").read_text())["ids"]
    new_def, new_off, stale_def, stale_off = (load(p) for p in sys.argv[2:6])
    for r in new_def + new_off:  # subset ids to dev ids
        r["id"] = source[int(r["id"].split("-")[1])]
    ids = {r["id"] for r in new_def}
    stale_def = [r for r in stale_def if r["id"] in ids]
    stale_off = [r for r in stale_off if r["id"] in ids]
    runs = {"defaults": new_def, "score_eos=false": new_off, "stale defaults": stale_def, "stale score_eos=false": stale_off}
    out = {"n": len(ids), "runs": {}, "diffs": {}}
    print("| run | lenient | EM | F1 | stops: stop rule / EOS / budget |\n|---|---|---|---|---|")
    for name, recs in runs.items():
        ci = {k: score_ci(task, recs, k) for k in ("lenient", "exact_match", "f1")}
        stops = Counter(r["stats"].get("stopped_by") for r in recs)
        out["runs"][name] = {"n": len(recs), **ci, "stops": dict(stops)}
        lc = ci["lenient"]
        print(f"| {name} | {lc['value']:.1f} [{lc['low']:.1f}, {lc['high']:.1f}] | {ci['exact_match']['value']:.1f} | "
              f"{ci['f1']['value']:.1f} | {stops['stop']} / {stops['eos']} / {stops['budget']} |")
    for a, b in (("score_eos=false", "defaults"), ("defaults", "stale defaults"),
                 ("score_eos=false", "stale score_eos=false")):
        d = paired_diff(task, runs[a], runs[b], "lenient")
        pb = {r["id"]: r["prediction"] for r in runs[b]}
        same = sum(r["prediction"] == pb.get(r["id"]) for r in runs[a])
        out["diffs"][f"{a} - {b}"] = {**d, "same_prediction": same}
        print(f"| {a} − {b} | {d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] | | | same prediction {same} / {d['n']} |")
    (HERE / f"summary_{task}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
