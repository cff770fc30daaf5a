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
# # 01 · Uncertainty: what a member's confidence tells us
#
# AdaFuse ensembles only where a member is unsure. That is worth it only if a member's
# low confidence Δ actually flags the words where it goes wrong. This notebook asks,
# per member and task:
#
# 1. How are Δ (top-1 margin) and the entropy confidence 1 − H / log V distributed?
# 2. Does low confidence predict that the member is **overruled** (its proposed word
#    loses the ensemble vote) or that the members **split** (they propose different
#    words)? AUROC (0.5 = no signal) and reliability curves.
# 3. Margin versus entropy as the trigger criterion: at the same share of triggered
#    words, which catches more overruled words?
# 4. At the answer level: does a member's mean or minimum confidence predict that its
#    own greedy answer is wrong?
#
# Data: two traced runs per task, shared with the other notebooks through `runs_dir`:
# the *probe* ensemble (Cool-Fusion: one word per round, one candidate per member, so
# every member's confidence at every word of the ensemble's answer) and each member
# *alone* (its greedy answer with a confidence at every word start). The runs are declared
# in `adafuse_lab/plans.py` (`uncertainty_runs`).
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
# not set by the preset
source = "local"  # examples from: local (data/ of this repository, or $ADAFUSE_DATA), sample (toy), hub, auto
data_dir = None  # local data folder; None searches the usual places (see data/README.md)
split = "dev"  # data split: dev or test (<data_dir>/<task>/<split>.jsonl; the embedded samples have only dev)
dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
device = None  # None: cuda if available, else cpu
n_bins = 10  # confidence bins of the reliability curves
launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
out_dir = "../runs/notebooks/01_uncertainty_analysis"  # summary.json, tables and figures go here
fig_dir = None  # None: <out_dir>/figures (only `python -m adafuse_lab figures` writes figures/)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display

from adafuse_lab import plans, plots, stats, tables, traces

P = plans.notebook_params("01_uncertainty_analysis", preset, models=models, tasks=tasks, limit=limit,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, source=source, data_dir=data_dir,
                          split=split, dtype=dtype, device=device, n_bins=n_bins, launch=launch, runs_dir=runs_dir,
                          out_dir=out_dir, fig_dir=fig_dir)
RUNS, OUT, FIGS = P.dirs()
plots.style()
figures = []

# %% [markdown]
# ## Runs: found in `runs_dir`, or decoded now

# %%
runs = plans.ensure_runs(plans.runs_of("01_uncertainty_analysis", P), RUNS, P.launch)
probe = {t: runs["probe", t] for t in P.tasks}
alone = {(t, m): runs["alone", t, m] for t in P.tasks for m in P.models}
tasks_ok = [t for t in P.tasks if probe[t] is not None]
members = traces.frame([row for t in tasks_ok for row in traces.run_rows(probe[t].records, "members", task=t)])
print(f"{len(members)} member-word records over {len(tasks_ok)} tasks")
members.groupby(["task", "member_name"])[["margin", "entropy", "lost", "split"]].mean().round(3)

# %% [markdown]
# ## 1 · Distributions of Δ and entropy confidence

# %%
for value in ("margin", "entropy"):
    fig = plots.plot_confidence_hist(members, value, tasks_ok)
    figures += plots.save(fig, f"01_confidence_{value}", FIGS)
    plots.show(fig)

# %% [markdown]
# ## 2 · Does low confidence predict being overruled, or a split?
#
# AUROC of −confidence for each event: 1.0 means the lowest confidences are exactly the
# overruled words; 0.5 means no signal. "all" pools the tasks. A group where the event
# never (or always) happens has no AUROC: it is marked n/a, not drawn as 0.

# %%
auc = pd.concat([stats.uncertainty_table(members, n_bins=P.n_bins),
                 stats.uncertainty_table(members.assign(task="all"), n_bins=P.n_bins)], ignore_index=True)
auc.to_csv(OUT / "auroc.csv", index=False)
cols = ["AUROC lost | margin", "AUROC lost | entropy", "AUROC split | margin", "AUROC split | entropy"]
fig = plots.plot_auroc(auc.assign(group=auc.task + " · " + auc.member_name), cols, group_col="group")
figures += plots.save(fig, "01_auroc", FIGS)
plots.show(fig)
auc.round(3)

# %% [markdown]
# Reliability: how often a member's word wins the vote, by its confidence. A calibrated
# member sits on the diagonal (Δ is not a probability, so it need not).

# %%
for value in ("margin", "entropy"):
    curves = {f"{g.member_name.iloc[0]}": (stats.reliability(g[value], ~g["lost"].astype(bool), P.n_bins),
                                            f"member{k}")
              for k, g in members.groupby("member")}
    fig = plots.plot_reliability(curves, title=f"P(member's word wins | {value})", ylabel="share of words won")
    figures += plots.save(fig, f"01_reliability_{value}", FIGS)
    plots.show(fig)

# %% [markdown]
# ## 3 · Margin versus entropy as the trigger criterion
#
# Each threshold triggers the ensemble at some share of word starts and catches some
# share of the words a member would have got overruled on. Higher is better at equal x.

# %%
catch, catch_at = {}, {}
for k, g in members.groupby("member"):
    for value, ls in (("margin", "-"), ("entropy", "--")):
        c = stats.catch_curve(g[value], g["lost"])
        catch[f"{g.member_name.iloc[0]} · {value}"] = (c, f"member{k}", ls)
        catch_at[f"{g.member_name.iloc[0]} · {value}"] = float(np.interp(0.3, c["trigger_rate"], c["recall"]))
fig = plots.plot_catch_curves(catch, title="overruled words caught")
figures += plots.save(fig, "01_criteria", FIGS)
plots.show(fig)
pd.Series(catch_at, name="caught at 30% triggered").round(3)

# %% [markdown]
# ## 4 · Answer level: does a member's confidence predict its own mistakes?
#
# Each member alone; per answer the mean and minimum confidence over its word starts.
# Translation has no per-answer correctness and is left out here.

# %%
per_example = traces.frame([row for (t, m), r in alone.items() if r is not None
                            for row in stats.example_confidence(r.records, t, task=t, member_name=m)])
ex_table = stats.example_table(per_example) if len(per_example) else pd.DataFrame()
ex_table.to_csv(OUT / "answer_level.csv", index=False)
labelled = per_example[per_example.correct.notna()] if len(per_example) else per_example
curves = {m: (stats.reliability(g["mean_margin"], g["correct"].astype(bool), P.n_bins),
              f"member{P.models.index(m)}")
          for m, g in labelled.groupby("member_name")} if len(labelled) else {}
fig = plots.plot_reliability(curves, title="answer correct | mean Δ", ylabel="accuracy")
figures += plots.save(fig, "01_answer_reliability", FIGS)
plots.show(fig)
ex_table.round(3)

# %%
summary = {
    "preset": P.preset, "split": P.split, "models": list(P.models), "tasks": tasks_ok,
    "n_member_words": len(members),
    "means": members.groupby(["task", "member_name"])[["margin", "entropy", "lost", "split"]].mean()
                    .reset_index().to_dict(orient="records"),
    "auroc": auc.to_dict(orient="records"),
    "caught_at_30pct": catch_at,
    "answer_level": ex_table.to_dict(orient="records"),
    "figures": sorted(p.name for p in figures),
}
plans.write_summary(OUT, summary)
