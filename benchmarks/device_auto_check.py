"""Members spread over every visible GPU (--device auto) against the same members on one GPU.

    CUDA_VISIBLE_DEVICES=0,1 python benchmarks/device_auto_check.py --out h100x2_device_auto.json \
        --models qwen2.5-coder-0.5b,smollm2-135m --dtype float32 --task gsm8k --limit 16 --max-new-tokens 64

The same run twice in this process: every member on cuda:0, then every member spread by
accelerate's balanced device map (models.place). Writes which GPUs hold each member's
layers, each run's decode time and peak memory per GPU, and how many samples are the same.
A spread member runs its forwards eagerly (CUDA graphs stay on one device), so the two runs
take different kernel paths; in fp32 they should still agree on (nearly) every answer.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype")
    p.add_argument("--source", default="local")
    p.add_argument("--theta", type=float)
    args = p.parse_args()

    import torch

    from adafuse_lab.runs import RunConfig, read_samples, run
    gpus = torch.cuda.device_count()
    if gpus < 2:
        sys.exit(f"needs at least 2 visible GPUs, found {gpus}")
    work = Path(args.out).with_suffix("")
    decode = {} if args.theta is None else {"theta": args.theta}
    result = {"command": " ".join(sys.argv), "devices": [torch.cuda.get_device_name(i) for i in range(gpus)],
              "torch": torch.__version__, "runs": {}}
    samples = {}
    for name, device in (("one_gpu", "cuda:0"), ("auto", "auto")):
        for i in range(gpus):
            torch.cuda.reset_peak_memory_stats(i)
        cfg = RunConfig(task=args.task, models=args.models, method="adafuse", limit=args.limit,
                        batch_size=args.limit, max_new_tokens=args.max_new_tokens, source=args.source,
                        device=device, dtype=args.dtype, decode=decode)
        sessions: dict = {}
        shutil.rmtree(work / name, ignore_errors=True)  # a rerun decodes again: a finished run would only be read back
        t = time.perf_counter()
        res = run(cfg, work / name, progress=False, sessions=sessions)
        wall = time.perf_counter() - t
        placement = {}
        for s in sessions.values():
            dmap = getattr(s.model, "hf_device_map", None) or {"": str(s.device)}
            placement[s.name] = dict(collections.Counter(str(v) for v in dmap.values()))
        result["runs"][name] = {
            "device": device, "wall_s": round(wall, 2), "timings": {k: v for k, v in res["timings"].items() if k != "per_example_s"},
            "peak_gib_per_gpu": [round(torch.cuda.max_memory_allocated(i) / 2**30, 2) for i in range(gpus)],
            "modules_per_device": placement, "metrics": res.get("metrics")}
        samples[name] = [r.get("prediction") for r in read_samples(work / name / "samples.jsonl")]
        print(json.dumps({name: result["runs"][name]}), flush=True)
        sessions.clear()
        gc.collect()
        torch.cuda.empty_cache()
    same = sum(a == b for a, b in zip(samples["one_gpu"], samples["auto"]))
    result["same_predictions"] = f"{same}/{len(samples['one_gpu'])}"
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"same predictions: {result['same_predictions']}")


if __name__ == "__main__":
    main()
