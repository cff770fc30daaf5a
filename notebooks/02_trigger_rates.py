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
# # 02 · Trigger rates: where does AdaFuse ensemble?
#
# The claim to test: AdaFuse triggers the ensemble (some member branches) more often on
# math than on question answering or translation, and commits long spans where members
# are sure, so it costs less than an ensemble that votes on every word.
#
# - **Measured**: AdaFuse runs decoded at each θ in `thetas` (markers).
# - **Recomputed from stored traces, without decoding**: the probe run (Cool-Fusion: every
#   member's confidence at every word of the ensemble's answer) replays adaptive
#   commitment at any θ (lines; the span assumes the member most confident at the round's
#   start wins). The dashed line is the share of member word starts below θ. The slider
#   moves θ.
# - **Cost** against fixed-granularity ensembles: Cool-Fusion (one word per round) and
#   SweetSpan (three words per round), the same runs as in notebook 04.
#
# The runs are declared in `adafuse_lab/plans.py` (`trigger_runs`).
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
thetas = None  # θ values decoded for the measured points
n_boot = None  # bootstrap resamples for the intervals
# not set by the preset
source = "local"  # examples from: local (data/ of this repository, or $ADAFUSE_DATA), sample (toy), hub, auto
data_dir = None  # local data folder; None searches the usual places (see data/README.md)
split = "dev"  # data split: dev or test (<data_dir>/<task>/<split>.jsonl; the embedded samples have only dev)
dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
device = None  # None: cuda if available, else cpu
theta = 0.7  # θ of the main AdaFuse runs (the paper's) and where the slider starts
M = 3  # most words committed per round
B = 3  # branches when uncertain
launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
out_dir = "../runs/notebooks/02_trigger_rates"  # summary.json, tables and figures go here
fig_dir = None  # None: <out_dir>/figures (only `python -m adafuse_lab figures` writes figures/)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display

from adafuse_lab import plans, plots, stats, tables, traces
from adafuse_lab.tasks import get_task

P = plans.notebook_params("02_trigger_rates", preset, models=models, tasks=tasks, limit=limit,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, thetas=thetas, n_boot=n_boot,
                          source=source, data_dir=data_dir, split=split, dtype=dtype, device=device, theta=theta,
                          M=M, B=B, launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
RUNS, OUT, FIGS = P.dirs()
plots.style()
figures = []
THETAS = plans.trigger_thetas(P)
GRID = np.round(np.linspace(0.0, 1.0, 41), 4)

# %% [markdown]
# ## Runs: found in `runs_dir`, or decoded now

# %%
runs = plans.ensure_runs(plans.runs_of("02_trigger_rates", P), RUNS, P.launch)
ada = {(t, th): runs["adafuse", t, th] for t in P.tasks for th in THETAS}
probe = {t: runs["probe", t] for t in P.tasks}
sweet = {t: runs["sweetspan", t] for t in P.tasks}
tasks_ok = [t for t in P.tasks if probe[t] is not None and ada[t, P.theta] is not None]

# %% [markdown]
# ## Curves from stored confidences, and the measured points

# %%
curves, measured, rows = {}, {}, []
for t in tasks_ok:
    paths = [traces.probe_path(r["trace"]) for r in probe[t].records]
    c = traces.commitment_curve(paths, GRID, M=P.M)
    c["word_rate"] = traces.trigger_curve([w["conf"] for r in probe[t].records for w in traces.word_rows(r["trace"])],
                                          GRID).tolist()
    curves[t] = c
    measured[t] = [traces.measured_point(ada[t, th].records, th) for th in THETAS if ada[t, th] is not None]
    main = traces.measured_point(ada[t, P.theta].records, P.theta)
    recomputed = traces.round_trigger_curve([r["trace"] for r in ada[t, P.theta].records], [P.theta])[0]
    sim = traces.commitment_curve(paths, [P.theta], M=P.M)
    rows.append({"task": t, "kind": get_task(t).kind, "measured trigger": main["trigger_rate"],
                 "recomputed trigger": recomputed, "simulated trigger": sim["trigger_rate"][0],
                 "measured span": main["mean_span"], "simulated span": sim["mean_span"][0],
                 "measured rounds/word": main["rounds_per_word"],
                 "simulated rounds/word": sim["rounds_per_word"][0]})
at_theta = pd.DataFrame(rows).set_index("task")
at_theta.to_csv(OUT / "at_theta.csv")
at_theta.round(3)

# %% [markdown]
# Move θ: the curves are recomputed from the stored confidences only (nothing is decoded).
# The titles read the curves off at the chosen θ.

# %%
view = plots.interact(lambda theta: plots.plot_trigger_curves(curves, theta, measured),
                      theta=plots.control(P.theta, min=0.0, max=1.0, step=0.05, description="θ"))

# %%
figures += plots.save(plots.widget_result(view), "02_trigger_curves", FIGS)
spans = {t: [r["span_words"] for r in traces.run_rows(ada[t, P.theta].records)] for t in tasks_ok}
fig = plots.plot_span_hist(spans, max_span=P.M + 1)
figures += plots.save(fig, "02_span_lengths", FIGS)
plots.show(fig);

# %% [markdown]
# ## The claim: more ensembling on math?
#
# Share of triggered rounds per answer at θ, pooled by task kind, with bootstrap
# intervals; and math minus the other kinds.

# %%
rates = {t: traces.per_example_trigger(ada[t, P.theta].records) for t in tasks_ok}
claim = stats.claim_by_kind(rates, {t: get_task(t).kind for t in tasks_ok}, n_boot=P.n_boot)
for kind, ci in claim["by_kind"].items():
    print(f"{kind:5s} trigger rate {ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] over {ci['n']} answers")
for k in ("math_minus_qa", "math_minus_mt"):
    if k in claim:
        d = claim[k]
        print(f"{k}: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")

# %% [markdown]
# ## Cost against fixed-granularity ensembles
#
# Per answer: forward passes (all members, look-ahead and branches included), decoded
# tokens and rounds; per committed word, so that answers of different length compare.

# %%
cost_rows = []
for t in tasks_ok:
    for label, run in ((f"AdaFuse θ={P.theta}", ada[t, P.theta]), ("Cool-Fusion (1 word)", probe[t]),
                       ("SweetSpan (3 words)", sweet[t])):
        if run is None:
            continue
        c = tables.cost(run.records, run.results)
        cost_rows.append({"task": t, "method": label, **c,
                          "forwards/word": c["forwards"] / c["words"] if c["words"] else np.nan,
                          "rounds/word": c["rounds"] / c["words"] if c["words"] else np.nan})
costs = pd.DataFrame(cost_rows)
fixed = costs[costs.method == "Cool-Fusion (1 word)"].set_index("task")
costs["saved vs 1-word"] = [1 - r["forwards/word"] / fixed.loc[r["task"], "forwards/word"]
                            for _, r in costs.iterrows()]
costs.to_csv(OUT / "costs.csv", index=False)
costs.round(3)

# %%
summary = {
    "preset": P.preset, "split": P.split, "models": list(P.models), "tasks": tasks_ok, "theta": P.theta,
    "thetas": THETAS,
    "at_theta": at_theta.reset_index().to_dict(orient="records"),
    "measured": measured,
    "curves": {t: {k: v for k, v in c.items()} for t, c in curves.items()},
    "claim": claim,
    "costs": costs.to_dict(orient="records"),
    "figures": sorted(p.name for p in figures),
}
plans.write_summary(OUT, summary)
