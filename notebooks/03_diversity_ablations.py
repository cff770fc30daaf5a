# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Diversity ablations: what do branching and adaptive spans buy?
#
# Variants of AdaFuse on the same members and examples:
#
# - **B ∈ {1, 2, 3, 5}** branches when uncertain (B = 1: *without diversity-aware scaling*);
# - **branch selection**: plain top-B first tokens, or diversity-aware (`distinct`:
#   skip a branch whose word repeats one already kept; `semantic`: log-probability plus
#   λ × embedding distance);
# - **fixed spans** of `fixed_span` words instead of adaptive commitment (*without
#   adaptive commitment*).
#
# Accuracy (the task's paper metric) against cost (forward passes per answer), with
# bootstrap intervals, and a paired bootstrap against the reference variant (first row).
# The runs are declared in `adafuse_lab/plans.py` (`ablation_runs`).
#
# **Two presets.** `preset` in the first code cell picks one:
#
# - `"cpu"`: this notebook top to bottom in a few minutes on a 2-core laptop with no GPU and
#   nothing to download: two tiny random members with different tokenizers (`tiny:bpe`,
#   `tiny:spm`) on 4 examples of the dev data shipped in `data/`. Every cell runs and every
#   figure is drawn, but the answers are noise: it shows the method, not results.
# - `"gpu"`: the full run the committed figures in `figures/` come from
#   (qwen2.5-coder-0.5b + smollm2-135m, the first 100 dev examples per task, 256 new tokens).
# - `"auto"` (the default): gpu when CUDA is available, else cpu.
#
# A parameter left at `None` takes the preset's value (`PRESETS` in `adafuse_lab/plans.py`);
# any other value overrides it, e.g. `models = "qwen2.5-coder-0.5b,smollm2-135m"` for real
# members on a CPU (slower; the models download once, about 590 MB). Tables, `summary.json`
# and figures go under `out_dir`; only `python -m adafuse_lab figures` writes `figures/`.

# %% tags=["parameters"]
preset = "auto"  # "cpu": tiny members, a few minutes on 2 cores; "gpu": the full run behind figures/; "auto": gpu if CUDA is available
# None: the preset's value (PRESETS in adafuse_lab/plans.py); any other value overrides the preset
models = None  # ensemble members, comma-separated: zoo name, tiny:NAME, hub id or local dir
tasks = None  # tasks, comma-separated
limit = None  # examples per task (the first N of the split)
max_new_tokens = None  # generation budget per answer
batch_size = None  # prompts decoded together (speed only)
B_values = None  # branch counts compared (top-k selection)
branch_selects = None  # branch selection rules compared at B
n_boot = None  # bootstrap resamples for the intervals
# not set by the preset
source = "local"  # examples from: local (data/ of this repository, or $ADAFUSE_DATA), sample (toy), hub, auto
data_dir = None  # local data folder; None searches the usual places (see data/README.md)
split = "dev"  # data split: dev or test (<data_dir>/<task>/<split>.jsonl; the embedded samples have only dev)
dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
device = None  # None: cuda if available, else cpu
theta = 0.7  # confidence threshold of every variant
M = 3  # most words committed per round
B = 3  # branches of the reference variant and of the selection variants
fixed_span = 3  # span length of the "without adaptive commitment" variant (0: leave it out)
launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
out_dir = "../runs/notebooks/03_diversity_ablations"  # summary.json, tables and figures go here
fig_dir = None  # None: <out_dir>/figures (only `python -m adafuse_lab figures` writes figures/)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display

from adafuse_lab import plans, plots, stats, tables, traces

P = plans.notebook_params("03_diversity_ablations", preset, models=models, tasks=tasks, limit=limit,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, B_values=B_values,
                          branch_selects=branch_selects, n_boot=n_boot, source=source, data_dir=data_dir,
                          split=split, dtype=dtype, device=device, theta=theta, M=M, B=B, fixed_span=fixed_span,
                          launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
RUNS, OUT, FIGS = P.dirs()
plots.style()
figures = []
variants = plans.ablation_variants(P.theta, P.M, P.B, P.B_values, P.branch_selects, P.fixed_span)
pd.DataFrame(variants)

# %% [markdown]
# ## Runs: found in `runs_dir`, or decoded now

# %%
runs = plans.ensure_runs(plans.runs_of("03_diversity_ablations", P), RUNS, P.launch)

# %% [markdown]
# ## Accuracy against cost

# %%
rows = []
for t in P.tasks:
    ref = runs[t, variants[0]["label"]]
    for v in variants:
        run = runs[t, v["label"]]
        if run is None:
            continue
        key = stats.headline_key(t, run.results)
        ci = stats.score_ci(t, run.records, key, n_boot=P.n_boot)
        diff = stats.paired_diff(t, run.records, ref.records, key, n_boot=P.n_boot) if ref is not None else {}
        rows.append({"task": t, "variant": v["label"], "key": v["key"], "metric": key, "score": ci["value"],
                     "score lo": ci["low"], "score hi": ci["high"], "n": ci["n"],
                     **tables.cost(run.records, run.results),
                     "Δ vs ref": diff.get("diff"), "Δ lo": diff.get("low"), "Δ hi": diff.get("high"),
                     "p": diff.get("p_value")})
table = pd.DataFrame(rows)
table.to_csv(OUT / "ablations.csv", index=False)
fig = plots.plot_cost_accuracy(table, x="forwards", y="score", label_col="variant", key_col="key")
figures += plots.save(fig, "03_cost_accuracy", FIGS)
plots.show(fig)
table.round(3)

# %%
summary = {
    "preset": P.preset, "split": P.split, "models": list(P.models), "tasks": list(P.tasks),
    "variants": [v["label"] for v in variants],
    "rows": table.to_dict(orient="records"),
    "figures": sorted(p.name for p in figures),
}
plans.write_summary(OUT, summary)
