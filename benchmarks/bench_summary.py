"""One line per method of `bench` JSON files: wall, decode, the members' GPU time in forwards,
the prefill and graph captures, the decode time outside the forwards, per-step and per-prompt cost, and the ratios to `generate`.

    python benchmarks/bench_summary.py RESULT.json [RESULT.json ...]
"""
import json
import sys

KEYS = ["wall_s", "prefill_s", "capture_s", "captures", "decode_s", "model_gpu_s", "sync_reads", "decode_outside_forwards_s", "ms_per_decode_step",
        "decode_step_ratio_to_floor", "seconds_per_prompt", "ratio_to_summed_generate",
        "ratio_to_slowest_member_generate", "ratio_to_summed_generate_no_cudnn",
        "ratio_to_slowest_member_generate_no_cudnn", "host_phases_s"]


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        print(f"{path.split('/')[-1]}: {d.get('device')}, batch {d.get('batch_size')}, {d.get('n_prompts')} prompts")
        for key in ("generate", "generate_no_cudnn"):
            for member, g in (d.get(key) or {}).items():
                print(f"  {key} {member}: {g['wall_s']} s")
        for name, r in d["methods"].items():
            print(f"  {name}: " + ", ".join(f"{k} {r[k]}" for k in KEYS if r.get(k) is not None))


if __name__ == "__main__":
    main(sys.argv[1:])
