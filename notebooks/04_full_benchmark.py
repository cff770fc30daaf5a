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
# # 04 · Full benchmark: Table 1 for our members
#
# The layout of the paper's Table 1: each member alone, every baseline and AdaFuse on
# every task. Per task the paper's metric (lenient match for QA, exact match for
# GSM8K, spBLEU for FLORES, or BLEU 13a when the spBLEU model is not cached) with a
# 95 % bootstrap interval, the strict metric (SQuAD exact match, GSM8K exact match,
# chrF++), the average of the paper metrics, and cost columns (forward passes,
# decoded tokens and seconds per answer, averaged over tasks).
#
# Runs are read from `runs_dir`; missing ones are decoded when `launch` is true (and
# shown as – otherwise), with a bar that counts runs and estimates the time left. Runs made
# by notebooks 02 and 03 with the same settings are reused. The runs are declared in
# `adafuse_lab/plans.py` (`benchmark_runs`); the `quality` command uses the same plan.
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
tasks = None  # tasks (columns), comma-separated
methods = None  # rows, from single (each member alone), unite, gac, sweetspan, coolfusion, rerank, adafuse
limit = None  # examples per task (the first N of the split; "all": every example)
max_new_tokens = None  # generation budget per answer
batch_size = None  # prompts decoded together (speed only)
n_boot = None  # bootstrap resamples for the intervals
# not set by the preset
source = "local"  # examples from: local (data/ of this repository, or $ADAFUSE_DATA), sample (toy), hub, auto
data_dir = None  # local data folder; None searches the usual places (see data/README.md)
split = "dev"  # data split: dev or test (<data_dir>/<task>/<split>.jsonl; the embedded samples have only dev)
dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
device = None  # None: cuda if available, else cpu
limits = {}  # per-task counts that replace limit, e.g. {"gsm8k": 300} (None: every example)
half = None  # None: every example; "report": every row on the second half (tune on the first)
tuned = {}  # per task, AdaFuse settings chosen by `python -m adafuse_lab tune` (tune_<task>.json "chosen")
launch = True  # decode runs missing from runs_dir (False: table from what is saved)
runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
out_dir = "../runs/notebooks/04_full_benchmark"  # summary.json, tables and figures go here
fig_dir = None  # None: <out_dir>/figures (only `python -m adafuse_lab figures` writes figures/)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display

from adafuse_lab import plans, plots, stats, tables, traces

P = plans.notebook_params("04_full_benchmark", preset, models=models, tasks=tasks, methods=methods, limit=limit,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, n_boot=n_boot, source=source,
                          data_dir=data_dir, split=split, dtype=dtype, device=device, limits=limits, half=half,
                          tuned=tuned, launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
RUNS, OUT, FIGS = P.dirs()
plots.style()
figures = []
rows = plans.benchmark_plan(P.methods, P.models, P.tuned)
labels = [row["label"] for row in rows]

# %% [markdown]
# ## Runs: found in `runs_dir`, or decoded now

# %%
runs = plans.ensure_runs(plans.runs_of("04_full_benchmark", P), RUNS, P.launch)
missing = sorted(f"{label} / {t}" for (label, t), r in runs.items() if r is None)
print(f"{len(runs) - len(missing)} runs, {len(missing)} missing")

# %% [markdown]
# ## Table 1

# %%
table = tables.benchmark_table(runs, P.tasks, labels, n_boot=P.n_boot)
table.to_csv(OUT / "table1.csv")
tables.format_table(table, P.tasks)

# %%
fig = plots.plot_benchmark(table, P.tasks, P.models)
figures += plots.save(fig, "04_benchmark", FIGS)
plots.show(fig)
baselines = [lab for lab in labels if not lab.startswith(("adafuse", "single"))]
best = table.loc[baselines, "Avg"].max() if baselines else np.nan
ada_avg = table.loc["adafuse", "Avg"] if "adafuse" in table.index else np.nan
gain = ada_avg / best - 1 if np.isfinite(ada_avg) and np.isfinite(best) and best else np.nan
if np.isfinite(gain):
    print(f"AdaFuse average {ada_avg:.2f} vs best baseline {best:.2f}: {gain:+.2%} "
          "(the paper reports +6.88% for its models)")
else:
    print(f"AdaFuse average {ada_avg:.2f}, best baseline {best:.2f}: no relative gain "
          "(a row lacks a task, there is no baseline row, or the best baseline scores 0)")

# %% [markdown]
# ## AdaFuse against the best single member and the best baseline
#
# Paired bootstrap per task over the examples both runs share (paper metric): the
# difference, its 95 % interval and the share of resamples on the other side of zero.
# The best single member and the best baseline are those with the highest Avg above.

# %%
singles = [lab for lab in labels if lab.startswith("single")]
best_single = table.loc[singles, "Avg"].idxmax() if singles and table.loc[singles, "Avg"].notna().any() else None
best_base = table.loc[baselines, "Avg"].idxmax() if baselines and table.loc[baselines, "Avg"].notna().any() else None
paired = []
for ada in [lab for lab in labels if lab.startswith("adafuse")]:
    for other in (best_single, best_base):
        if other is not None:
            paired += tables.paired_rows(runs, P.tasks, ada, other, n_boot=P.n_boot)
paired_df = pd.DataFrame(paired)
if len(paired_df):
    paired_df.to_csv(OUT / "paired.csv", index=False)
    display(paired_df.round(3))

# %% [markdown]
# ## Where AdaFuse loses: whose candidates win (from its traces)
#
# Every round scores all candidates by the members' mean NLL. Per task and member: the share
# of rounds that branched, in which the member's own favourite candidate (its lowest NLL)
# lost, and which a candidate only that member proposed won. Then AdaFuse's examples split
# by whether the best single member's favourite ever lost, scored for AdaFuse and for that
# member alone on the same examples: if the loss sits in the overruled examples, the other
# members' NLLs are what pulls AdaFuse below its best member.
#
# A member's favourite is its lowest mean NLL over a candidate word's tokens; greedy decoding
# follows the first token instead. The last table counts, over the rounds where a member
# branched, how often its favourite was not its top-1 word, and how often the top-1 word lost:
# when these are high even for the strongest member, AdaFuse drifts from that member's own
# answer without being overruled.

# %%
overrules = tables.overrule_table(runs, P.tasks, "adafuse", list(P.models))
split = []
if best_single is not None:
    k = list(P.models).index(best_single.removeprefix("single: "))
    split = [row for t in P.tasks if runs.get(("adafuse", t)) and runs.get((best_single, t))
             for row in tables.overrule_split(t, runs["adafuse", t].records, runs[best_single, t].records,
                                              stats.headline_key(t, runs["adafuse", t].results), member=k,
                                              n_boot=P.n_boot)]
if overrules:
    display(pd.DataFrame(overrules).round(3))
if split:
    display(pd.DataFrame(split).round(2))
top1 = tables.top1_table(runs, P.tasks, "adafuse", list(P.models))
if top1:
    display(pd.DataFrame(top1).round(3))

# %% [markdown]
# Where two members' favourites differ, the plain mean of NLLs picks the one whose owner prefers
# it by more: per pair of members, the median margin by which each prefers its own favourite
# (the other's favourite's NLL minus its own, in its own NLL) and whose favourite won.

# %%
disagreements = tables.disagreement_table(runs, P.tasks, "adafuse", list(P.models))
if disagreements:
    display(pd.DataFrame(disagreements).round(2))

# %% [markdown]
# Whose vote decides? Per member, the share of rounds in which the mean NLL of the other
# members alone would have picked another candidate, over all rounds and over each example's
# first round (where a winner that ends the answer leaves it empty). A member that is weak at
# the task decides rounds too, and with three members it can tip the mean towards a candidate
# that every member finds cheap.

# %%
leave_one_out = tables.leave_one_out_table(runs, P.tasks, "adafuse", list(P.models))
if leave_one_out:
    display(pd.DataFrame(leave_one_out).round(3))

# %% [markdown]
# Whose answer does the ensemble give? The share of AdaFuse's answers that are the same as
# each member's own answer (up to space, case and a final period). Then every row's empty
# answers: an answer is empty when its first committed word already ends it, for instance a
# candidate that starts the next few-shot block ("\n\nQuestion:") and so hits a stop
# string. For AdaFuse the trace names that first winning candidate and who proposed it.

# %%
agreement = tables.agreement_table(runs, P.tasks, "adafuse", singles)
if agreement:
    display(pd.DataFrame(agreement).pivot(index="other", columns="task", values="same_answer").round(2))
empty = tables.empty_answers(runs, P.tasks, labels, list(P.models))
if empty:
    display(pd.DataFrame(empty))

# %%
summary = {
    "preset": P.preset, "split": P.split, "models": list(P.models), "tasks": list(P.tasks), "labels": labels,
    "missing": missing,
    "table": table.reset_index().to_dict(orient="records"),
    "adafuse_vs_best_baseline": gain, "paired": paired, "best_single": best_single, "best_baseline": best_base,
    "half": P.half, "tuned": dict(P.tuned), "overrules": overrules, "overrule_split": split, "top1": top1,
    "disagreements": disagreements, "leave_one_out": leave_one_out, "agreement": agreement, "empty_answers": empty,
    "figures": sorted(p.name for p in figures),
}
plans.write_summary(OUT, summary)
