"""How far batching can take issue 20's targets 2 and 3, read from committed `bench` files.

For each file: per question, the summed hardware floor of the members' decoding (`floor`:
every step reads the weights and the batch's KV once, at the bandwidth bench measured), the
GPU time of the engine's forwards (`model_gpu_s`), the host's work by phase and the wall
time. Then, for each file against the first: how much cheaper per question it is at the floor,
in GPU forwards and in wall time. A larger batch shares the weights' bytes but not the KV's,
which grows with every question's prompt: with ~1.5k-token prompts the floor itself sets how
much cheaper per question a larger batch can get.

    python benchmarks/diag/target_bounds.py benchmarks/results/engine_v18/v18f/b64_f1.json \
        benchmarks/results/engine_v18/v18g/b256_f1.json
"""
import json
import sys


def per_question(path: str) -> dict:
    d = json.load(open(path))
    m = d["methods"]["adafuse"]
    n = d["n_prompts"]
    host = m.get("host_phases_s", {})
    return {"file": path, "batch": d["batch_size"], "questions": n, "device": d["device"],
            "floor": sum(f["floor_s"] for f in d["floor"].values()) / n,
            "gpu_forwards": sum(m["model_gpu_s"]) / n,
            "host_rounds": sum(v for k, v in host.items() if k not in ("forward", "wait")) / n,
            "host_forward": host.get("forward", 0.0) / n,
            "prefill_and_captures": (sum(m["prefill_s"]) + sum(m.get("capture_s", [0]))) / n,
            "wall": m["wall_s"] / n}


def main(paths: list[str]) -> None:
    rows = [per_question(p) for p in paths]
    keys = ["floor", "gpu_forwards", "host_rounds", "host_forward", "prefill_and_captures", "wall"]
    print("seconds per question:")
    print(f"  {'batch':>5}  " + "  ".join(f"{k:>20}" for k in keys) + "  file")
    for r in rows:
        print(f"  {r['batch']:>5}  " + "  ".join(f"{r[k]:20.4f}" for k in keys) + f"  {r['file']} ({r['device']})")
    base = rows[0]
    print(f"cheaper per question than batch {base['batch']} (x):")
    for r in rows[1:]:
        print(f"  batch {r['batch']}: floor {base['floor'] / r['floor']:.2f}, GPU forwards "
              f"{base['gpu_forwards'] / r['gpu_forwards']:.2f}, wall {base['wall'] / r['wall']:.2f}")
    for r in rows:
        print(f"  batch {r['batch']}: GPU forwards {r['gpu_forwards'] / r['floor']:.1f}x the floor, "
              f"wall {r['wall'] / r['floor']:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:] or ["benchmarks/results/engine_v18/v18f/b64_f1.json",
                          "benchmarks/results/engine_v18/v18f/b64_f2.json",
                          "benchmarks/results/engine_v18/v18g/b128_f2.json",
                          "benchmarks/results/engine_v18/v18g/b256_f1.json"])
