"""One run decoded under each of the engine's attention paths, against the first (sdpa).

    CUDA_VISIBLE_DEVICES=0 python benchmarks/attention_check.py --out h100_attention_check.json \
        --models qwen2.5-coder-0.5b,gemma3-270m --dtype float32 --task triviaqa --limit 128 \
        --modes sdpa,additive,grouped,cascade

The quality tables are decoded with sdpa. A faster path may replace it for the runs still to
decode only if it gives the same samples: this writes, per mode, the decode time and how many
predictions and traces equal sdpa's. Members load once; the run directories are decoded afresh.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--task", default="triviaqa")
    p.add_argument("--limit", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--dtype")
    p.add_argument("--source", default="local")
    p.add_argument("--modes", default="sdpa,additive")
    args = p.parse_args()

    import torch

    from adafuse_lab.decoding import attention
    from adafuse_lab.runs import RunConfig, read_samples, run
    modes = args.modes.split(",")
    work = Path(args.out).with_suffix("")
    cfg = RunConfig(task=args.task, models=args.models, method="adafuse", limit=args.limit,
                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, source=args.source,
                    dtype=args.dtype)
    result = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else "cpu", "torch": torch.__version__, "runs": {}}
    sessions: dict = {}
    samples = {}
    for mode in modes:
        attention.mode = mode
        shutil.rmtree(work / mode, ignore_errors=True)  # a finished run would only be read back
        t = time.perf_counter()
        res = run(cfg, work / mode, progress=False, sessions=sessions)
        samples[mode] = read_samples(work / mode / "samples.jsonl")
        first = samples[modes[0]]
        result["runs"][mode] = {
            "wall_s": round(time.perf_counter() - t, 2), "decode_s": res["timings"].get("decode_s"),
            "same_predictions": sum(a["prediction"] == b["prediction"] for a, b in zip(first, samples[mode])),
            "same_traces": sum(a.get("trace") == b.get("trace") for a, b in zip(first, samples[mode])),
            "n": len(samples[mode])}
        print(json.dumps({mode: result["runs"][mode]}), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after each mode: a later one may fail


if __name__ == "__main__":
    main()
