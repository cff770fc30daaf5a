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
# # 00 · Quickstart: two members, one AdaFuse answer at a time
#
# AdaFuse lets K language models with different tokenizers write one answer together.
# Each **round**, every member decodes greedily word by word from the shared text. At the
# first token of each word it reads its confidence Δ = p(top1) − p(top2): while Δ ≥ θ it
# commits the word (up to M words); when Δ < θ it **branches** into its B most likely
# words. All members score every candidate (mean token NLL under their own tokenizer);
# the lowest mean wins and is appended for everybody.
#
# This notebook loads two members, decodes a handful of questions, and shows each answer
# round by round: the colour says whose candidate won, » marks rounds where a member
# branched. The widgets at the end re-decode one question with other θ, M, B or
# confidence criterion.
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
task = None  # task the questions come from
limit = None  # questions to decode
max_new_tokens = None  # generation budget per answer, in the first member's tokens
theta = 0.7  # confidence threshold θ: a member commits a word while its confidence is at least θ
M = 3  # most words a confident member commits in one round
B = 3  # branches a member explores when it is uncertain
criterion = "margin"  # confidence criterion: margin (p1 - p2, the paper), entropy or prob
question = 0  # index of the question the figure and the widgets start on
# not set by the preset
source = "local"  # examples from: local (data/ of this repository, or $ADAFUSE_DATA), sample (toy), hub, auto
data_dir = None  # local data folder; None searches the usual places (see data/README.md)
split = "dev"  # data split: dev or test (<data_dir>/<task>/<split>.jsonl; the embedded samples have only dev)
dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
device = None  # None: cuda if available, else cpu
out_dir = "../runs/notebooks/00_quickstart"  # summary.json, tables and figures go here
fig_dir = None  # None: <out_dir>/figures (only `python -m adafuse_lab figures` writes figures/)

# %%
import time

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display

from adafuse_lab import plans, plots, stats, tables, traces
from tqdm.auto import tqdm
from adafuse_lab.decoding import DecodeConfig, decode_iter
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task

P = plans.notebook_params("00_quickstart", preset, models=models, task=task, limit=limit,
                          max_new_tokens=max_new_tokens, theta=theta, M=M, B=B, criterion=criterion,
                          question=question, source=source, data_dir=data_dir, split=split, dtype=dtype, device=device,
                          out_dir=out_dir, fig_dir=fig_dir)
_, OUT, FIGS = P.dirs()
plots.style()
figures = []

# %% [markdown]
# ## The questions and the members
#
# The questions are read first, so a missing data folder stops here, before any model loads.

# %%
the_task = get_task(P.task)
examples = the_task.load(source=P.source, data_dir=P.data_dir, limit=P.limit, split=P.split)
print(f"{len(examples)} {the_task.name} examples ({P.split} split) from {examples.source} ({examples.location})")
members = [load_session(spec, device=P.device, dtype=P.torch_dtype) for spec in tqdm(P.models, desc="loading members")]
names = [m.name for m in members]
pd.DataFrame([{"member": m.name, "vocabulary": m.vocab_size, "device": str(m.device), "dtype": str(m.dtype)}
              for m in members])

# %% [markdown]
# ## Decode them all with AdaFuse

# %%
cfg = DecodeConfig(theta=P.theta, M=P.M, B=P.B, criterion=P.criterion, max_new_tokens=P.max_new_tokens,
                   batch_size=P.batch_size)
prompts = [the_task.prompt(ex) for ex in examples]
outputs = [None] * len(prompts)
t0 = time.perf_counter()
for i, out in tqdm(decode_iter("adafuse", members, prompts, cfg, stop=the_task.stop_fn),
                   total=len(prompts), desc="decoding", unit="question"):
    outputs[i] = out
decode_s = time.perf_counter() - t0
answers = pd.DataFrame(tables.answer_rows(the_task, examples, outputs))
print(f"decoded in {decode_s:.1f} s")
answers

# %% [markdown]
# ## Each answer, round by round
#
# Hover over a round for its candidates count, who branched, and each member's confidence
# at the round's start. Text decoded past the task's stop is struck through: it is not part
# of the answer.

# %%
from IPython.display import HTML
for ex, out in zip(examples, outputs):
    display(HTML(f"<h4>{ex.id}</h4>" + plots.answer_html(out.trace, names, out.text)))

# %%
i = P.question % len(examples)
fig = plots.plot_rounds(outputs[i].trace, names, title=f"{examples[i].id}: θ={P.theta}, M={P.M}, B={P.B}")
figures += plots.save(fig, "00_quickstart_rounds", FIGS)
plots.show(fig);

# %% [markdown]
# ## Try other settings
#
# Moving a widget re-decodes the chosen question (a few seconds on a GPU; the controls are
# greyed out while it works). Run by `python -m adafuse_lab figures` (papermill), no widgets
# are made: the function runs once, with the parameters above, and draws the same figure.

# %%
view = plots.interact(
    lambda theta, M, B, criterion, question: plots.quickstart_view(
        members, the_task, examples, theta, M, B, criterion, question, P.max_new_tokens),
    theta=plots.control(P.theta, min=0.0, max=1.0, step=0.05, description="θ"),
    M=plots.control(P.M, min=1, max=8),
    B=plots.control(P.B, min=1, max=5),
    criterion=plots.control(P.criterion, options=["margin", "entropy", "prob"]),
    question=plots.control(P.question, min=0, max=len(examples) - 1),
)

# %%
shown = plots.widget_result(view)
figures += plots.save(shown["figure"], "00_quickstart_widget", FIGS)
summary = {
    "preset": P.preset, "split": P.split, "models": names, "task": the_task.name, "source": examples.source,
    "n_questions": len(examples), "decode_s": decode_s,
    "answers": answers[["id", "answer", "score", "rounds", "triggered"]].to_dict(orient="records"),
    "trigger_rate": float(answers.triggered.sum() / max(answers.rounds.sum(), 1)),
    "widget": {"theta": P.theta, "M": P.M, "B": P.B, "criterion": P.criterion, "question": shown["example"].id,
               "rounds": len(shown["output"].trace or []), "text": shown["output"].text},
    "figures": sorted(p.name for p in figures),
}
plans.write_summary(OUT, summary)
