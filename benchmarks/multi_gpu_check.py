"""One run on one GPU, the same run sharded over N GPUs: same samples? how much faster?

    python benchmarks/multi_gpu_check.py --gpus 2 --out scaling.json -- \
        --task gsm8k --models qwen2.5-coder-0.5b,smollm2-135m --method adafuse \
        --limit 128 --batch-size 64 --source local --data-dir DATA

The arguments after "--" go to `python -m adafuse_lab run`. The one-GPU run uses the
first visible GPU; the sharded run starts `torchrun --nproc-per-node N -m adafuse_lab run`
on the first N. Both write fresh run directories next to --out (WORKDIR/one, WORKDIR/many).
Wall time covers the whole command (start-up and model loading included); results.json
gives the decode time alone. Writes a JSON with both, the speed-ups and whether
config.json and samples.jsonl are byte-identical.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    t = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--workdir", help="where the two run directories go (default: beside --out)")
    p.add_argument("run_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    work = Path(args.workdir or Path(args.out).parent / "multi_gpu_runs")
    one, many = work / "one", work / "many"
    for d in (one, many):
        shutil.rmtree(d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    import torch
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if len(names) < args.gpus:
        sys.exit(f"{args.gpus} GPUs asked for, {len(names)} visible")
    base = [sys.executable, "-m", "adafuse_lab", "run", *run_args]
    # The same config in both runs (no --device): the one-GPU run sees only the first GPU.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(len(names))))).split(",")
    wall_one = timed(base + ["--out", str(one)], work / "one.log", {**os.environ, "CUDA_VISIBLE_DEVICES": visible[0]})
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.gpus}",
                "-m", "adafuse_lab", "run", *run_args, "--out", str(many)]
    wall_many = timed(torchrun, work / "many.log")

    r1 = json.loads((one / "results.json").read_text())
    rn = json.loads((many / "results.json").read_text())
    n = r1["n_examples"]
    same = {f: filecmp.cmp(one / f, many / f, shallow=False) for f in ("config.json", "samples.jsonl")}
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "devices": names[:args.gpus], "gpus": args.gpus,
        "n_examples": n, "identical": same, "metrics_one": r1["metrics"], "metrics_many": rn["metrics"],
        "one_gpu": {"wall_s": round(wall_one, 2), "decode_s": r1["timings"]["decode_s"],
                    "examples_per_s": round(n / wall_one, 3)},
        "many_gpus": {"wall_s": round(wall_many, 2), "timings": rn["timings"],
                      "examples_per_s": round(n / wall_many, 3)},
        "speedup_wall": round(wall_one / wall_many, 3),
    }
    shards = rn["timings"].get("shards") if isinstance(rn.get("timings"), dict) else None
    if shards:
        result["speedup_decode"] = round(r1["timings"]["decode_s"] / max(s["decode_s"] for s in shards), 3)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("identical", "speedup_wall", "one_gpu")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
