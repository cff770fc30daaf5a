"""The speed and scaling figures of BENCHMARKS.md, drawn from the committed result files.

    python benchmarks/plot_speed.py [--results benchmarks/results] [--out benchmarks/results/figures]

Writes speed_methods.png (every method's time as a multiple of its members' summed same-kernel
`generate`, batch 1 and 64), speed_engine_versions.png (AdaFuse at batch 64 as the engine
changed) and scaling.png (one GPU against two).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS_B1 = ("h100_methods_b1_t256.json", {"h100_adafuse_b1_t256.json": "adafuse (own run)"})
METHODS_B64 = ("h100_methods_b64_t256.json", {"h100_adafuse_sdpa_b64_t256.json": "adafuse (own run)",
                                              "h100_adafuse_grouped_b64_t256.json": "adafuse grouped"})
VERSIONS = [("streaming", "h100_adafuse_stream_v1_b64_t256.json"), ("+ token text", "h100_adafuse_stream_v2_b64_t256.json"),
            ("+ host fixes", "h100_adafuse_stream_v3_b64_t256.json"), ("token tree", "h100_adafuse_tree_v1_b64_t256.json"),
            ("+ mem-eff. kernel", "h100_adafuse_tree_v3_b64_t256.json"), ("+ CUDA graphs", "h100_adafuse_graphs_v1_b64_t256.json"),
            ("same, rerun", "h100_adafuse_graphs_v2_b64_t256.json"), ("lease 3, sdpa", "h100_adafuse_sdpa_b64_t256.json"),
            ("+ grouped attention", "h100_adafuse_grouped_b64_t256.json"),
            ("lease 4, sdpa,\nblocking copies", "h100_adafuse_sdpa_blocking_b64_t256_lease4.json"),
            ("+ non-blocking copies", "h100_adafuse_sdpa_b64_t256_lease4.json"),
            ("+ grouped attention ", "h100_adafuse_grouped_b64_t256_lease4.json")]
SCALING = [("GSM8K 128\nbatch 64", "h100x2_scaling_adafuse_gsm8k128.json"),
           ("GSM8K 128, b32\nbefore graph fix", "h100x2_scaling_adafuse_gsm8k128_b32_t128.json"),
           ("GSM8K 256\nbatch 64", "h100x2_scaling_adafuse_gsm8k256_b64_t256.json"),
           ("TriviaQA 1280\nbatch 64", "h100x2_scaling_adafuse_triviaqa1280_b64.json")]


def load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def method_rows(results: Path, spec) -> list[tuple[str, float, float]]:
    """[(method, ratio to the summed no-cuDNN generate, seconds per question)] of one setting."""
    main, extra = spec
    rows = [(m, r["ratio_to_summed_generate_no_cudnn"], r["seconds_per_prompt"])
            for m, r in load(results, main)["methods"].items() if "error" not in r]
    for name, label in extra.items():
        r = load(results, name)["methods"]["adafuse"]
        rows.append((label, r["ratio_to_summed_generate_no_cudnn"], r["seconds_per_prompt"]))
    return sorted(rows, key=lambda row: row[1])


def version_rows(results: Path) -> list[tuple[str, float, float]]:
    """[(engine version, AdaFuse wall s, the members' summed default generate s)]."""
    out = []
    for label, name in VERSIONS:
        d = load(results, name)
        out.append((label, d["method"]["wall_s"], sum(g["wall_s"] for g in d["generate"].values())))
    return out


def scaling_rows(results: Path) -> list[tuple[str, float, float]]:
    return [(label.replace("\\\n", "\n"), load(results, name)["one_gpu"]["wall_s"], load(results, name)["many_gpus"]["wall_s"])
            for label, name in SCALING]


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--out", default="benchmarks/results/figures")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    from adafuse_lab import plots
    plots.style()
    results, out = Path(args.results), Path(args.out)
    written = []
    fig = plots.plot_method_ratios({"batch 1, 4 GSM8K questions": method_rows(results, METHODS_B1),
                                    "batch 64, 64 GSM8K questions": method_rows(results, METHODS_B64)})
    written += plots.save(fig, "speed_methods", out, formats=("png",))
    fig = plots.plot_engine_versions(version_rows(results), baseline="summed default generate")
    written += plots.save(fig, "speed_engine_versions", out, formats=("png",))
    written += plots.save(plots.plot_scaling(scaling_rows(results)), "scaling", out, formats=("png",))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
