"""The EOS fix on the qwen2.5-coder-1.5b + 0.5b pair, one QA task: the new runs (defaults, score_eos
off) against each other and against the stale runs of the same questions (H100, old engine and
old EOS scoring: the quality table's AdaFuse run and the score_eos=false run).

    python benchmarks/results/eos_fix_cpu/qwen15/compare.py TASK NEW_DEFAULT NEW_OFF STALE_DEFAULT STALE_OFF [NAME]

Each argument is a samples.jsonl or samples.jsonl.xz, or several joined by commas (runs of
consecutive slices of the subset). A new run numbers its questions TASK-0000 ... within the
folder it decoded (data/, data_from64/, ...); that folder's TASK/source_ids.json, found through
the run's config.json (or, for a samples file without one beside it, data/), maps them to dev
ids, which the stale runs carry. Prints markdown rows and writes summary_TASK[_NAME].json
beside this script.
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


def load_new(paths: str, task: str) -> list[dict]:
    """A new run's records with dev ids (see the module docstring)."""
    out = []
    for p in paths.split(","):
        config = Path(p).parent / "config.json"
        data = Path(json.loads(config.read_text())["data_dir"]) if config.exists() else HERE.parent / "data"
        source = json.loads((data / task / "source_ids.json").read_text())["ids"]
        for r in read_samples(Path(p)):
            r["id"] = source[int(r["id"].split("-")[1])]
            out.append(r)
    return out


def main() -> None:
    task = sys.argv[1]
    new_def, new_off = (load_new(p, task) for p in sys.argv[2:4])
    stale_def, stale_off = (load(p) for p in sys.argv[4:6])
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
    name = f"_{sys.argv[6]}" if len(sys.argv) > 6 else ""
    (HERE / f"summary_{task}{name}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
