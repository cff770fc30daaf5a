"""Summarise the EOS-fix re-measurement: per task, AdaFuse defaults against --set score_eos=false
(paired bootstrap, adafuse_lab.stats), and the defaults against the stale quality table's AdaFuse
run on the same questions (benchmarks/results/quality/qwen05_smollm2/adafuse_report_traces.txz).

    python benchmarks/results/eos_fix_cpu/summarize.py RUNS STALE_RUNS [--json summary.json]

RUNS holds <task>_default/ and <task>_eos_off/ (samples.jsonl or samples.jsonl.xz) and sits beside
data/ (the subset's source ids); STALE_RUNS is the unpacked tarball's runs/ folder. Prints the
markdown table; --json also writes every figure.
"""
import argparse
import json
from collections import Counter
from pathlib import Path

from adafuse_lab import metrics as M
from adafuse_lab.runs import read_samples
from adafuse_lab.stats import paired_diff, score_ci
from adafuse_lab.tasks import get_task

STALE = {"triviaqa": "triviaqa/adafuse-152e0bc2", "nq": "nq/adafuse-1ef5ed76"}
KEYS = ("lenient", "exact_match", "f1")


def samples(run: Path) -> list[dict]:
    """A run folder's records, from samples.jsonl or, as committed here, samples.jsonl.xz."""
    plain = run / "samples.jsonl"
    return read_samples(plain if plain.is_file() else run / "samples.jsonl.xz")


def overruled(trace) -> int:  # as benchmarks/qa_stops.py: an ending lost to its own text going on
    n = 0
    for rnd in trace or ():
        win = rnd["candidates"][rnd["winner"]]
        n += any(c["eos"] and not win["eos"] and win["text"].startswith(c["text"]) for c in rnd["candidates"])
    return n


def describe(task, recs):
    t = get_task(task)
    out = {k: score_ci(task, recs, k) for k in KEYS}
    out["lenient_official_no_cap"] = 100 * sum(M.lenient(r["answer"], r["references"], t.len_slack, cap=False)
                                               for r in recs) / len(recs)
    out["stops"] = dict(Counter(r["stats"].get("stopped_by") for r in recs))
    if all("trace" in r for r in recs):
        rounds = [overruled(r.get("trace")) for r in recs]
        out["overruled_stop_examples"] = sum(x > 0 for x in rounds)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("stale", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    summary = {}
    for task in ("triviaqa", "nq"):
        d = samples(a.runs / f"{task}_default")
        o = samples(a.runs / f"{task}_eos_off")
        assert [r["id"] for r in d] == [r["id"] for r in o]
        # the stale run's records for the same questions (its ids are the rows of the full dev file)
        stale_all = {r["question"]: r for r in samples(a.stale / STALE[task])}
        s = [dict(stale_all[r["question"]], id=r["id"]) for r in d]
        src = json.loads((a.runs.parent / "data" / task / "source_ids.json").read_text())["ids"]
        res = {"n": len(d), "dev_rows": f"{src[0]}..{src[len(d) - 1]}",
               "default": describe(task, d), "score_eos_false": describe(task, o),
               "stale_default_same_questions": describe(task, s),
               "eos_off_minus_default": {k: paired_diff(task, o, d, k) for k in KEYS},
               "default_minus_stale_default": {k: paired_diff(task, d, s, k) for k in KEYS},
               "same_prediction_default_eos_off": sum(x["prediction"] == y["prediction"] for x, y in zip(d, o)),
               "same_prediction_default_stale": sum(x["prediction"] == y["prediction"] for x, y in zip(d, s))}
        res["differing"] = [{"id": x["id"], "question": x["question"], "references": x["references"][:3],
                             "default": x["prediction"], "eos_off": y["prediction"]}
                            for x, y in zip(d, o) if x["prediction"] != y["prediction"]]
        summary[task] = res
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    f = lambda c: f"{c['value']:.1f} [{c['low']:.1f}, {c['high']:.1f}]"
    g = lambda c: f"{c['diff']:+.1f} [{c['low']:.1f}, {c['high']:.1f}] (p = {c['p_value']:.2f})"
    print("| task (n) | setting | lenient | EM | F1 | stops (stop/eos/budget) |")
    print("|---|---|---|---|---|---|")
    for task, r in summary.items():
        for name, key in (("stale table's AdaFuse, same questions", "stale_default_same_questions"),
                          ("defaults (fixed EOS scoring)", "default"), ("`score_eos=false`", "score_eos_false")):
            x = r[key]
            st = x["stops"]
            print(f"| {task} ({r['n']}) | {name} | {f(x['lenient'])} | {f(x['exact_match'])} | {f(x['f1'])} | "
                  f"{st.get('stop', 0)}/{st.get('eos', 0)}/{st.get('budget', 0)} |")
        print(f"| {task} ({r['n']}) | `score_eos=false` − defaults | {g(r['eos_off_minus_default']['lenient'])} | "
              f"{g(r['eos_off_minus_default']['exact_match'])} | {g(r['eos_off_minus_default']['f1'])} | "
              f"same prediction {r['same_prediction_default_eos_off']}/{r['n']} |")
        print(f"| {task} ({r['n']}) | defaults − stale | {g(r['default_minus_stale_default']['lenient'])} | "
              f"{g(r['default_minus_stale_default']['exact_match'])} | {g(r['default_minus_stale_default']['f1'])} | "
              f"same prediction {r['same_prediction_default_stale']}/{r['n']} |")


if __name__ == "__main__":
    main()
