"""Do QA answers stop? How often each run hits the token budget, what the lenient score is with
and without our length cap, and, for AdaFuse, how often a candidate that ends the answer loses
to the same words going on.

    python benchmarks/qa_stops.py W/runs/triviaqa/* [W/runs/squad/* ...] [--same-examples]

One line per run folder (config.json + samples.jsonl): task, method, members, decode settings,
examples, stops by cause, lenient % (ours, with the 2*gold+2 cap) and lenient % by the official
rule alone (cap=False), and for AdaFuse runs with traces the number of examples (and rounds)
where a winner's text begins with the text of a losing candidate that ended the answer.
--same-examples counts only the examples every given run holds (a partial run beside full ones);
--diff adds the first run's lenient score minus each other run's, paired bootstrap over the
examples both hold (95% interval, p).
"""
import argparse
import json
from collections import Counter
from pathlib import Path

from adafuse_lab import metrics as M
from adafuse_lab.stats import paired_diff
from adafuse_lab.runs import read_samples
from adafuse_lab.tasks import get_task


def overruled_stops(trace) -> int:
    """Rounds where an answer-ending candidate lost to its own text plus more words."""
    n = 0
    for rnd in trace or ():
        win = rnd["candidates"][rnd["winner"]]
        n += any(c["eos"] and not win["eos"] and win["text"].startswith(c["text"])
                 for c in rnd["candidates"])
    return n


def load(run: Path):
    """(config, records) of a QA run folder, or None for another task or an empty run."""
    cfg = json.loads((run / "config.json").read_text())
    if getattr(get_task(cfg["task"]), "kind", None) != "qa":
        return None
    recs = read_samples(run / "samples.jsonl")  # a run being decoded may end in half a line
    return (cfg, recs) if recs else None


def describe(cfg: dict, recs: list[dict]) -> str:
    task = get_task(cfg["task"])
    ours = sum(M.lenient(r["answer"], r["references"], task.len_slack) for r in recs)
    official = sum(M.lenient(r["answer"], r["references"], task.len_slack, cap=False) for r in recs)
    stops = Counter(r["stats"].get("stopped_by") for r in recs)
    line = (f"{cfg['task']} {cfg['method']} {','.join(cfg['models'])} {cfg.get('decode') or {}} "
            f"half={cfg.get('half')} n={len(recs)} stops={dict(stops)} "
            f"lenient={100 * ours / len(recs):.1f} official={100 * official / len(recs):.1f}")
    if cfg["method"] == "adafuse" and any(r.get("trace") for r in recs):
        rounds = [overruled_stops(r.get("trace")) for r in recs]
        line += f" overruled_stop_examples={sum(x > 0 for x in rounds)} rounds={sum(rounds)}"
    return line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--same-examples", action="store_true", help="only the examples every run holds")
    ap.add_argument("--diff", action="store_true", help="the first run minus each other run (lenient, paired)")
    args = ap.parse_args(argv)
    runs = [x for x in map(load, args.runs) if x]
    if args.same_examples and runs:
        common = set.intersection(*({r["id"] for r in recs} for _, recs in runs))
        runs = [(cfg, [r for r in recs if r["id"] in common]) for cfg, recs in runs]
    for cfg, recs in runs:
        if recs:
            print(describe(cfg, recs))
    for cfg, recs in runs[1:] if args.diff else ():
        d = paired_diff(cfg["task"], runs[0][1], recs, "lenient")
        print(f"first - {cfg['method']} {cfg.get('decode') or {}}: {d['diff']:+.1f} "
              f"[{d['low']:.1f}, {d['high']:.1f}] p={d['p_value']:.3f} n={d['n']}")


if __name__ == "__main__":
    main()
