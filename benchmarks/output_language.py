"""Which language each run's predictions are written in (langdetect, seeded).

A translation run can score low because its model answers in the source language instead of
translating; this counts that per run. Usage:

    pip install langdetect
    python benchmarks/output_language.py W/runs/flores_de-en/*

prints one line per finished run: method, members, half, and the detected languages with counts.
"""
import argparse
import collections
import json
import sys
from pathlib import Path


def languages(samples: Path) -> collections.Counter:
    from langdetect import DetectorFactory, LangDetectException, detect
    DetectorFactory.seed = 0  # langdetect samples at random; the seed makes the counts repeat
    counts = collections.Counter()
    for line in samples.open():
        text = json.loads(line)["prediction"] or ""
        try:
            counts[detect(text)] += 1
        except LangDetectException:  # empty or no letters
            counts["none"] += 1
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (config.json, samples.jsonl)")
    args = ap.parse_args(argv)
    try:
        import langdetect  # noqa: F401
    except ImportError:
        sys.exit("output_language.py needs langdetect: pip install langdetect")
    for run in sorted(args.runs):
        if not (run / "results.json").exists():
            continue  # partly decoded: its counts would not be comparable
        config = json.loads((run / "config.json").read_text())
        counts = languages(run / "samples.jsonl")
        shown = ", ".join(f"{lang} {n}" for lang, n in counts.most_common())
        print(f"{run.name}\t{config['method']}\t{'+'.join(config['models'])}\t{config.get('half')}\t{shown}")


if __name__ == "__main__":
    main()
