"""Write the numbered notebooks from the cell sources below (reviewable as plain Python).

    python notebooks/build_notebooks.py           # (re)write notebooks/NN_*.ipynb
    python notebooks/build_notebooks.py --check   # exit 1 if a notebook differs from this file

Edit this file, not the .ipynb files: they are generated, carry no outputs, and
the tests check that they match. Each notebook has one cell tagged `parameters`
(plain literals, a comment each; the defaults are the full GPU run) and the next
cell validates them. `python -m adafuse_lab figures` runs them through papermill
with notebooks/params/{smoke,full}.yaml.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

FULL_MODELS = "qwen2.5-coder-0.5b,smollm2-135m"
ALL_TASKS = "gsm8k,triviaqa,nq,squad,flores_en-de,flores_de-en"


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", textwrap.dedent(text).strip("\n"))


def params(text: str) -> tuple[str, str]:
    return ("parameters", textwrap.dedent(text).strip("\n"))


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(src)
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        cell["id"] = str(i)  # stable ids, as nbstripout writes them: regenerating gives identical files
        nb.cells.append(cell)
    return nb


COMMON_DATA = f'''
    models = "{FULL_MODELS}"  # ensemble members, comma-separated: zoo name, tiny:NAME, hub id or local dir
    source = "local"  # examples from: local (../shared/data, $ADAFUSE_DATA), sample (toy), hub, auto
    data_dir = None  # local data folder; None searches the usual places (see data/README.md)
    dtype = None  # None: bf16 on CUDA, fp32 on CPU; "float32" makes small members' greedy choices stable
'''

SETUP_IMPORTS = '''
    import numpy as np
    import pandas as pd
    import matplotlib.pyplot as plt
    from IPython.display import display

    from adafuse_lab import analysis as A, plots
'''

# ---------------------------------------------------------------- 00 quickstart

NB00 = [
    md("""
    # 00 · Quickstart: two members, one AdaFuse answer at a time

    AdaFuse lets K language models with different tokenizers write one answer together.
    Each **round**, every member decodes greedily word by word from the shared text. At the
    first token of each word it reads its confidence Δ = p(top1) − p(top2): while Δ ≥ θ it
    commits the word (up to M words); when Δ < θ it **branches** into its B most likely
    words. All members score every candidate (mean token NLL under their own tokenizer);
    the lowest mean wins and is appended for everybody.

    This notebook loads two members, decodes a handful of questions, and shows each answer
    round by round: the colour says whose candidate won, ⑂ marks rounds where a member
    branched. The widgets at the end re-decode one question with other θ, M, B or
    confidence criterion.
    """),
    params(COMMON_DATA + '''
    task = "triviaqa"  # task the questions come from
    limit = 8  # questions to decode
    max_new_tokens = 64  # generation budget per answer, in the first member's tokens
    theta = 0.7  # confidence threshold θ: a member commits a word while its confidence is at least θ
    M = 3  # most words a confident member commits in one round
    B = 3  # branches a member explores when it is uncertain
    criterion = "margin"  # confidence criterion: margin (p1 - p2, the paper), entropy or prob
    question = 0  # index of the question the figure and the widgets start on
    device = None  # None: cuda if available, else cpu
    out_dir = "../runs/notebooks/00_quickstart"  # summary.json goes here
    fig_dir = "../figures"  # figures go here
    '''),
    code(SETUP_IMPORTS + '''
    import time
    from adafuse_lab.decoding import DecodeConfig, decode
    from adafuse_lab.models import load_session
    from adafuse_lab.tasks import get_task

    P = A.NotebookParams(models=models, dtype=dtype, task=task, source=source, data_dir=data_dir, limit=limit,
                         max_new_tokens=max_new_tokens, theta=theta, M=M, B=B, criterion=criterion,
                         question=question, device=device, out_dir=out_dir, fig_dir=fig_dir)
    _, OUT, FIGS = P.dirs()
    plots.style()
    figures = []
    '''),
    md("## The members and the questions"),
    code('''
    members = [load_session(spec, device=P.device, dtype=P.torch_dtype) for spec in P.models]
    names = [m.name for m in members]
    the_task = get_task(P.task)
    examples = the_task.load(source=P.source, data_dir=P.data_dir, limit=P.limit)
    print(f"{len(examples)} {the_task.name} examples from {examples.source} ({examples.location})")
    pd.DataFrame([{"member": m.name, "vocabulary": m.vocab_size, "device": str(m.device), "dtype": str(m.dtype)}
                  for m in members])
    '''),
    md("## Decode them all with AdaFuse"),
    code('''
    cfg = DecodeConfig(theta=P.theta, M=P.M, B=P.B, criterion=P.criterion, max_new_tokens=P.max_new_tokens)
    t0 = time.perf_counter()
    outputs = decode("adafuse", members, [the_task.prompt(ex) for ex in examples], cfg, stop=the_task.stop_fn)
    decode_s = time.perf_counter() - t0
    answers = pd.DataFrame(A.answer_rows(the_task, examples, outputs))
    print(f"decoded in {decode_s:.1f} s")
    answers
    '''),
    md("""
    ## Each answer, round by round

    Hover over a round for its candidates count, who branched, and each member's confidence
    at the round's start.
    """),
    code('''
    from IPython.display import HTML
    for ex, out in zip(examples, outputs):
        display(HTML(f"<h4>{ex.id}</h4>" + plots.answer_html(out.trace, names, out.text)))
    '''),
    code('''
    i = P.question % len(examples)
    fig = plots.plot_rounds(outputs[i].trace, names, title=f"{examples[i].id}: θ={P.theta}, M={P.M}, B={P.B}")
    figures += plots.save(fig, "00_quickstart_rounds", FIGS)
    plots.show(fig);
    '''),
    md("""
    ## Try other settings

    Moving a widget re-decodes the chosen question (a few seconds on a GPU). Run by
    `python -m adafuse_lab figures` (papermill), no widgets are made: the function runs
    once, with the parameters above, and draws the same figure.
    """),
    code('''
    view = plots.interact(
        lambda theta, M, B, criterion, question: plots.quickstart_view(
            members, the_task, examples, theta, M, B, criterion, question, P.max_new_tokens),
        theta=plots.control(P.theta, min=0.0, max=1.0, step=0.05, description="θ"),
        M=plots.control(P.M, min=1, max=8),
        B=plots.control(P.B, min=1, max=5),
        criterion=plots.control(P.criterion, options=["margin", "entropy", "prob"]),
        question=plots.control(P.question, min=0, max=len(examples) - 1),
    )
    '''),
    code('''
    shown = plots.widget_result(view)
    figures += plots.save(shown["figure"], "00_quickstart_widget", FIGS)
    summary = {
        "models": names, "task": the_task.name, "source": examples.source, "n_questions": len(examples),
        "decode_s": decode_s,
        "answers": answers[["id", "answer", "score", "rounds", "triggered"]].to_dict(orient="records"),
        "trigger_rate": float(answers.triggered.sum() / max(answers.rounds.sum(), 1)),
        "widget": {"theta": P.theta, "M": P.M, "B": P.B, "criterion": P.criterion, "question": shown["example"].id,
                   "rounds": len(shown["output"].trace or []), "text": shown["output"].text},
        "figures": sorted(p.name for p in figures),
    }
    A.write_summary(OUT, summary)
    '''),
]

# ---------------------------------------------------------------- 01 uncertainty

NB01 = [
    md("""
    # 01 · Uncertainty: what a member's confidence tells us

    AdaFuse ensembles only where a member is unsure. That is worth it only if a member's
    low confidence Δ actually flags the words where it goes wrong. This notebook asks,
    per member and task:

    1. How are Δ (top-1 margin) and the entropy confidence 1 − H / log V distributed?
    2. Does low confidence predict that the member is **overruled** (its proposed word
       loses the ensemble vote) or that the members **split** (they propose different
       words)? AUROC (0.5 = no signal) and reliability curves.
    3. Margin versus entropy as the trigger criterion: at the same share of triggered
       words, which catches more overruled words?
    4. At the answer level: does a member's mean or minimum confidence predict that its
       own greedy answer is wrong?

    Data: two traced runs per task, shared with the other notebooks through `runs_dir`:
    the *probe* ensemble (Cool-Fusion: one word per round, one candidate per member, so
    every member's confidence at every word of the ensemble's answer) and each member
    *alone* (its greedy answer with a confidence at every word start).
    """),
    params(COMMON_DATA + f'''
    tasks = "{ALL_TASKS}"  # tasks, comma-separated
    limit = 100  # examples per task (the first 100 of each dev split)
    max_new_tokens = 256  # generation budget per answer
    batch_size = 64  # prompts decoded together (speed only)
    device = None  # None: cuda if available, else cpu
    n_bins = 10  # confidence bins of the reliability curves
    launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
    runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
    out_dir = "../runs/notebooks/01_uncertainty_analysis"  # summary.json and tables go here
    fig_dir = "../figures"  # figures go here
    '''),
    code(SETUP_IMPORTS + '''
    P = A.NotebookParams(models=models, dtype=dtype, tasks=tasks, source=source, data_dir=data_dir, limit=limit,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, n_bins=n_bins,
                         launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
    RUNS, OUT, FIGS = P.dirs()
    plots.style()
    figures = []
    '''),
    md("## Runs: found in `runs_dir`, or decoded now"),
    code('''
    probe, alone = {}, {}
    for t in P.tasks:
        probe[t] = A.ensure_run(A.run_config(t, P.models, *A.PROBE, **P.run_kw()), RUNS, P.launch)
        for m in P.models:
            alone[t, m] = A.ensure_run(A.run_config(t, [m], *A.SELF, **P.run_kw()), RUNS, P.launch)
    tasks_ok = [t for t in P.tasks if probe[t] is not None]
    members = A.frame([row for t in tasks_ok for row in A.run_rows(probe[t].records, "members", task=t)])
    print(f"{len(members)} member-word records over {len(tasks_ok)} tasks")
    members.groupby(["task", "member_name"])[["margin", "entropy", "lost", "split"]].mean().round(3)
    '''),
    md("## 1 · Distributions of Δ and entropy confidence"),
    code('''
    for value in ("margin", "entropy"):
        fig = plots.plot_confidence_hist(members, value, tasks_ok)
        figures += plots.save(fig, f"01_confidence_{value}", FIGS)
        plots.show(fig)
    '''),
    md("""
    ## 2 · Does low confidence predict being overruled, or a split?

    AUROC of −confidence for each event: 1.0 means the lowest confidences are exactly the
    overruled words; 0.5 means no signal. "all" pools the tasks.
    """),
    code('''
    auc = pd.concat([A.uncertainty_table(members, n_bins=P.n_bins),
                     A.uncertainty_table(members.assign(task="all"), n_bins=P.n_bins)], ignore_index=True)
    auc.to_csv(OUT / "auroc.csv", index=False)
    cols = ["AUROC lost | margin", "AUROC lost | entropy", "AUROC split | margin", "AUROC split | entropy"]
    fig = plots.plot_auroc(auc.assign(group=auc.task + " · " + auc.member_name), cols, group_col="group")
    figures += plots.save(fig, "01_auroc", FIGS)
    plots.show(fig)
    auc.round(3)
    '''),
    md("""
    Reliability: how often a member's word wins the vote, by its confidence. A calibrated
    member sits on the diagonal (Δ is not a probability, so it need not).
    """),
    code('''
    for value in ("margin", "entropy"):
        curves = {f"{g.member_name.iloc[0]}": (A.reliability(g[value], ~g["lost"].astype(bool), P.n_bins), f"member{k}")
                  for k, g in members.groupby("member")}
        fig = plots.plot_reliability(curves, title=f"P(member's word wins | {value})", ylabel="share of words won")
        figures += plots.save(fig, f"01_reliability_{value}", FIGS)
        plots.show(fig)
    '''),
    md("""
    ## 3 · Margin versus entropy as the trigger criterion

    Each threshold triggers the ensemble at some share of word starts and catches some
    share of the words a member would have got overruled on. Higher is better at equal x.
    """),
    code('''
    catch, catch_at = {}, {}
    for k, g in members.groupby("member"):
        for value, ls in (("margin", "-"), ("entropy", "--")):
            c = A.catch_curve(g[value], g["lost"])
            catch[f"{g.member_name.iloc[0]} · {value}"] = (c, f"member{k}", ls)
            catch_at[f"{g.member_name.iloc[0]} · {value}"] = float(np.interp(0.3, c["trigger_rate"], c["recall"]))
    fig = plots.plot_catch_curves(catch, title="overruled words caught")
    figures += plots.save(fig, "01_criteria", FIGS)
    plots.show(fig)
    pd.Series(catch_at, name="caught at 30% triggered").round(3)
    '''),
    md("""
    ## 4 · Answer level: does a member's confidence predict its own mistakes?

    Each member alone; per answer the mean and minimum confidence over its word starts.
    Translation has no per-answer correctness and is left out here.
    """),
    code('''
    per_example = A.frame([row for (t, m), r in alone.items() if r is not None
                           for row in A.example_confidence(r.records, t, task=t, member_name=m)])
    ex_table = A.example_table(per_example) if len(per_example) else pd.DataFrame()
    ex_table.to_csv(OUT / "answer_level.csv", index=False)
    labelled = per_example[per_example.correct.notna()] if len(per_example) else per_example
    curves = {m: (A.reliability(g["mean_margin"], g["correct"].astype(bool), P.n_bins), f"member{P.models.index(m)}")
              for m, g in labelled.groupby("member_name")} if len(labelled) else {}
    fig = plots.plot_reliability(curves, title="answer correct | mean Δ", ylabel="accuracy")
    figures += plots.save(fig, "01_answer_reliability", FIGS)
    plots.show(fig)
    ex_table.round(3)
    '''),
    code('''
    summary = {
        "models": list(P.models), "tasks": tasks_ok, "n_member_words": len(members),
        "means": members.groupby(["task", "member_name"])[["margin", "entropy", "lost", "split"]].mean()
                        .reset_index().to_dict(orient="records"),
        "auroc": auc.to_dict(orient="records"),
        "caught_at_30pct": catch_at,
        "answer_level": ex_table.to_dict(orient="records"),
        "figures": sorted(p.name for p in figures),
    }
    A.write_summary(OUT, summary)
    '''),
]

# ---------------------------------------------------------------- 02 trigger rates

NB02 = [
    md("""
    # 02 · Trigger rates: where does AdaFuse ensemble?

    The claim to test: AdaFuse triggers the ensemble (some member branches) more often on
    math than on question answering or translation, and commits long spans where members
    are sure, so it costs less than an ensemble that votes on every word.

    - **Measured**: AdaFuse runs decoded at each θ in `thetas` (markers).
    - **Recomputed from stored traces, without decoding**: the probe run (Cool-Fusion: every
      member's confidence at every word of the ensemble's answer) replays adaptive
      commitment at any θ (lines; the span assumes the member most confident at the round's
      start wins). The dashed line is the share of member word starts below θ. The slider
      moves θ.
    - **Cost** against fixed-granularity ensembles: Cool-Fusion (one word per round) and
      SweetSpan (three words per round), the same runs as in notebook 04.
    """),
    params(COMMON_DATA + f'''
    tasks = "{ALL_TASKS}"  # tasks, comma-separated
    limit = 100  # examples per task (the first 100 of each dev split)
    max_new_tokens = 256  # generation budget per answer
    batch_size = 64  # prompts decoded together (speed only)
    device = None  # None: cuda if available, else cpu
    theta = 0.7  # θ of the main AdaFuse runs (the paper's) and where the slider starts
    thetas = [0.3, 0.5, 0.7, 0.9]  # θ values decoded for the measured points
    M = 3  # most words committed per round
    B = 3  # branches when uncertain
    n_boot = 1000  # bootstrap resamples for the intervals
    launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
    runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
    out_dir = "../runs/notebooks/02_trigger_rates"  # summary.json and tables go here
    fig_dir = "../figures"  # figures go here
    '''),
    code(SETUP_IMPORTS + '''
    from adafuse_lab.tasks import get_task

    P = A.NotebookParams(models=models, dtype=dtype, tasks=tasks, source=source, data_dir=data_dir, limit=limit,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, theta=theta,
                         thetas=thetas, M=M, B=B, n_boot=n_boot, launch=launch, runs_dir=runs_dir,
                         out_dir=out_dir, fig_dir=fig_dir)
    RUNS, OUT, FIGS = P.dirs()
    plots.style()
    figures = []
    THETAS = sorted(set(P.thetas) | {P.theta})
    GRID = np.round(np.linspace(0.0, 1.0, 41), 4)
    '''),
    md("## Runs: found in `runs_dir`, or decoded now"),
    code('''
    kw = P.run_kw()
    ada, probe, sweet = {}, {}, {}
    for t in P.tasks:
        for th in THETAS:
            ada[t, th] = A.ensure_run(A.run_config(t, P.models, "adafuse", {"theta": th, "M": P.M, "B": P.B}, **kw),
                                      RUNS, P.launch)
        probe[t] = A.ensure_run(A.run_config(t, P.models, *A.PROBE, **kw), RUNS, P.launch)
        sweet[t] = A.ensure_run(A.run_config(t, P.models, "sweetspan", {}, **kw), RUNS, P.launch)
    tasks_ok = [t for t in P.tasks if probe[t] is not None and ada[t, P.theta] is not None]
    '''),
    md("## Curves from stored confidences, and the measured points"),
    code('''
    curves, measured, rows = {}, {}, []
    for t in tasks_ok:
        paths = [A.probe_path(r["trace"]) for r in probe[t].records]
        c = A.commitment_curve(paths, GRID, M=P.M)
        c["word_rate"] = A.trigger_curve([w["conf"] for r in probe[t].records for w in A.word_rows(r["trace"])],
                                         GRID).tolist()
        curves[t] = c
        measured[t] = [A.measured_point(ada[t, th].records, th) for th in THETAS if ada[t, th] is not None]
        main = A.measured_point(ada[t, P.theta].records, P.theta)
        recomputed = A.round_trigger_curve([r["trace"] for r in ada[t, P.theta].records], [P.theta])[0]
        sim = A.commitment_curve(paths, [P.theta], M=P.M)
        rows.append({"task": t, "kind": get_task(t).kind, "measured trigger": main["trigger_rate"],
                     "recomputed trigger": recomputed, "simulated trigger": sim["trigger_rate"][0],
                     "measured span": main["mean_span"], "simulated span": sim["mean_span"][0],
                     "measured rounds/word": main["rounds_per_word"],
                     "simulated rounds/word": sim["rounds_per_word"][0]})
    at_theta = pd.DataFrame(rows).set_index("task")
    at_theta.to_csv(OUT / "at_theta.csv")
    at_theta.round(3)
    '''),
    md("""
    Move θ: the curves are recomputed from the stored confidences only (nothing is decoded).
    The titles read the curves off at the chosen θ.
    """),
    code('''
    view = plots.interact(lambda theta: plots.show(plots.plot_trigger_curves(curves, theta, measured)),
                          theta=plots.control(P.theta, min=0.0, max=1.0, step=0.05, description="θ"))
    '''),
    code('''
    figures += plots.save(plots.widget_result(view), "02_trigger_curves", FIGS)
    spans = {t: [r["span_words"] for r in A.run_rows(ada[t, P.theta].records)] for t in tasks_ok}
    fig = plots.plot_span_hist(spans, max_span=P.M + 1)
    figures += plots.save(fig, "02_span_lengths", FIGS)
    plots.show(fig);
    '''),
    md("""
    ## The claim: more ensembling on math?

    Share of triggered rounds per answer at θ, pooled by task kind, with bootstrap
    intervals; and math minus the other kinds.
    """),
    code('''
    rates = {t: A.per_example_trigger(ada[t, P.theta].records) for t in tasks_ok}
    claim = A.claim_by_kind(rates, {t: get_task(t).kind for t in tasks_ok}, n_boot=P.n_boot)
    for kind, ci in claim["by_kind"].items():
        print(f"{kind:5s} trigger rate {ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] over {ci['n']} answers")
    for k in ("math_minus_qa", "math_minus_mt"):
        if k in claim:
            d = claim[k]
            print(f"{k}: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
    '''),
    md("""
    ## Cost against fixed-granularity ensembles

    Per answer: forward passes (all members, look-ahead and branches included), decoded
    tokens and rounds; per committed word, so that answers of different length compare.
    """),
    code('''
    cost_rows = []
    for t in tasks_ok:
        for label, run in ((f"AdaFuse θ={P.theta}", ada[t, P.theta]), ("Cool-Fusion (1 word)", probe[t]),
                           ("SweetSpan (3 words)", sweet[t])):
            if run is None:
                continue
            c = A.cost(run.records, run.results)
            cost_rows.append({"task": t, "method": label, **c,
                              "forwards/word": c["forwards"] / c["words"] if c["words"] else np.nan,
                              "rounds/word": c["rounds"] / c["words"] if c["words"] else np.nan})
    costs = pd.DataFrame(cost_rows)
    fixed = costs[costs.method == "Cool-Fusion (1 word)"].set_index("task")
    costs["saved vs 1-word"] = [1 - r["forwards/word"] / fixed.loc[r["task"], "forwards/word"]
                                for _, r in costs.iterrows()]
    costs.to_csv(OUT / "costs.csv", index=False)
    costs.round(3)
    '''),
    code('''
    summary = {
        "models": list(P.models), "tasks": tasks_ok, "theta": P.theta, "thetas": THETAS,
        "at_theta": at_theta.reset_index().to_dict(orient="records"),
        "measured": measured,
        "curves": {t: {k: v for k, v in c.items()} for t, c in curves.items()},
        "claim": claim,
        "costs": costs.to_dict(orient="records"),
        "figures": sorted(p.name for p in figures),
    }
    A.write_summary(OUT, summary)
    '''),
]

# ---------------------------------------------------------------- 03 ablations

NB03 = [
    md("""
    # 03 · Diversity ablations: what do branching and adaptive spans buy?

    Variants of AdaFuse on the same members and examples:

    - **B ∈ {1, 2, 3, 5}** branches when uncertain (B = 1: *without diversity-aware scaling*);
    - **branch selection**: plain top-B first tokens, or diversity-aware (`distinct`:
      skip a branch whose word repeats one already kept; `semantic`: log-probability plus
      λ × embedding distance);
    - **fixed spans** of `fixed_span` words instead of adaptive commitment (*without
      adaptive commitment*).

    Accuracy (the task's paper metric) against cost (forward passes per answer), with
    bootstrap intervals, and a paired bootstrap against the reference variant (first row).
    """),
    params(COMMON_DATA + '''
    tasks = "gsm8k,triviaqa,flores_de-en"  # tasks, comma-separated
    limit = 100  # examples per task (the first 100 of each dev split)
    max_new_tokens = 256  # generation budget per answer
    batch_size = 64  # prompts decoded together (speed only)
    device = None  # None: cuda if available, else cpu
    theta = 0.7  # confidence threshold of every variant
    M = 3  # most words committed per round
    B = 3  # branches of the reference variant and of the selection variants
    B_values = [1, 2, 3, 5]  # branch counts compared (top-k selection)
    branch_selects = ["topk", "distinct", "semantic"]  # branch selection rules compared at B
    fixed_span = 3  # span length of the "without adaptive commitment" variant (None: leave it out)
    n_boot = 1000  # bootstrap resamples for the intervals
    launch = True  # decode runs missing from runs_dir (False: analyse only what is saved)
    runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
    out_dir = "../runs/notebooks/03_diversity_ablations"  # summary.json and tables go here
    fig_dir = "../figures"  # figures go here
    '''),
    code(SETUP_IMPORTS + '''
    P = A.NotebookParams(models=models, dtype=dtype, tasks=tasks, source=source, data_dir=data_dir, limit=limit,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, theta=theta, M=M, B=B,
                         B_values=B_values, branch_selects=branch_selects, fixed_span=fixed_span, n_boot=n_boot,
                         launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
    RUNS, OUT, FIGS = P.dirs()
    plots.style()
    figures = []
    variants = A.ablation_variants(P.theta, P.M, P.B, P.B_values, P.branch_selects, P.fixed_span)
    pd.DataFrame(variants)
    '''),
    md("## Runs: found in `runs_dir`, or decoded now"),
    code('''
    runs = {(t, v["label"]): A.ensure_run(A.run_config(t, P.models, "adafuse", v["decode"], **P.run_kw()),
                                          RUNS, P.launch)
            for t in P.tasks for v in variants}
    '''),
    md("## Accuracy against cost"),
    code('''
    rows = []
    for t in P.tasks:
        ref = runs[t, variants[0]["label"]]
        for v in variants:
            run = runs[t, v["label"]]
            if run is None:
                continue
            key = A.headline_key(t, run.results)
            ci = A.score_ci(t, run.records, key, n_boot=P.n_boot)
            diff = A.paired_diff(t, run.records, ref.records, key, n_boot=P.n_boot) if ref is not None else {}
            rows.append({"task": t, "variant": v["label"], "key": v["key"], "metric": key, "score": ci["value"],
                         "score lo": ci["low"], "score hi": ci["high"], "n": ci["n"],
                         **A.cost(run.records, run.results),
                         "Δ vs ref": diff.get("diff"), "Δ lo": diff.get("low"), "Δ hi": diff.get("high"),
                         "p": diff.get("p_value")})
    table = pd.DataFrame(rows)
    table.to_csv(OUT / "ablations.csv", index=False)
    fig = plots.plot_cost_accuracy(table, x="forwards", y="score", label_col="variant", key_col="key")
    figures += plots.save(fig, "03_cost_accuracy", FIGS)
    plots.show(fig)
    table.round(3)
    '''),
    code('''
    summary = {
        "models": list(P.models), "tasks": list(P.tasks), "variants": [v["label"] for v in variants],
        "rows": table.to_dict(orient="records"),
        "figures": sorted(p.name for p in figures),
    }
    A.write_summary(OUT, summary)
    '''),
]

# ---------------------------------------------------------------- 04 benchmark

NB04 = [
    md("""
    # 04 · Full benchmark: Table 1 for our members

    The layout of the paper's Table 1: each member alone, every baseline and AdaFuse on
    every task. Per task the paper's metric (lenient match for QA, exact match for
    GSM8K, spBLEU for FLORES, or BLEU 13a when the spBLEU model is not cached) with a
    95 % bootstrap interval, the strict metric (SQuAD exact match, GSM8K exact match,
    chrF++), the average of the paper metrics, and cost columns (forward passes,
    decoded tokens and seconds per answer, averaged over tasks).

    Runs are read from `runs_dir`; missing ones are decoded when `launch` is true (and
    shown as – otherwise). Runs made by notebooks 02 and 03 with the same settings are
    reused.
    """),
    params(COMMON_DATA + f'''
    tasks = "nq,squad,triviaqa,gsm8k,flores_en-de,flores_de-en"  # tasks (columns), comma-separated
    methods = ["single", "unite", "gac", "sweetspan", "coolfusion", "rerank", "adafuse"]  # rows; single: each member alone
    limit = 100  # examples per task (the first 100 of each dev split)
    limits = {{}}  # per-task counts that replace limit, e.g. {{"gsm8k": 300}} (None: every example)
    half = None  # None: every example; "report": every row on the second half (tune on the first)
    tuned = {{}}  # per task, AdaFuse settings chosen by `python -m adafuse_lab tune` (tune_<task>.json "chosen")
    max_new_tokens = 256  # generation budget per answer
    batch_size = 64  # prompts decoded together (speed only)
    device = None  # None: cuda if available, else cpu
    n_boot = 1000  # bootstrap resamples for the intervals
    launch = True  # decode runs missing from runs_dir (False: table from what is saved)
    runs_dir = "../runs/notebooks/runs"  # saved runs, shared by the notebooks
    out_dir = "../runs/notebooks/04_full_benchmark"  # summary.json and the table go here
    fig_dir = "../figures"  # figures go here
    '''),
    code(SETUP_IMPORTS + '''
    P = A.NotebookParams(models=models, dtype=dtype, tasks=tasks, methods=methods, source=source, data_dir=data_dir,
                         limit=limit, limits=limits, half=half, tuned=tuned,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, n_boot=n_boot,
                         launch=launch, runs_dir=runs_dir, out_dir=out_dir, fig_dir=fig_dir)
    RUNS, OUT, FIGS = P.dirs()
    plots.style()
    figures = []
    plan = A.benchmark_plan(P.methods, P.models, P.tuned)
    '''),
    md("## Runs: found in `runs_dir`, or decoded now"),
    code('''
    cells = [(row, t) for t in P.tasks for row in plan if A.row_decode(row, t) is not None]  # tuned row: tuned tasks
    runs = {(row["label"], t): A.ensure_run(A.run_config(t, row["models"], row["method"], A.row_decode(row, t),
                                                         **P.run_kw(t)), RUNS, P.launch)
            for row, t in cells}
    missing = sorted(f"{label} / {t}" for (label, t), r in runs.items() if r is None)
    print(f"{len(runs) - len(missing)} runs, {len(missing)} missing")
    '''),
    md("## Table 1"),
    code('''
    labels = [row["label"] for row in plan]
    table = A.benchmark_table(runs, P.tasks, labels, n_boot=P.n_boot)
    table.to_csv(OUT / "table1.csv")
    A.format_table(table, P.tasks)
    '''),
    code('''
    fig = plots.plot_benchmark(table, P.tasks, P.models)
    figures += plots.save(fig, "04_benchmark", FIGS)
    plots.show(fig)
    baselines = [lab for lab in labels if not lab.startswith(("adafuse", "single"))]
    best = table.loc[baselines, "Avg"].max() if baselines else np.nan
    gain = table.loc["adafuse", "Avg"] / best - 1 if "adafuse" in table.index and np.isfinite(best) and best else np.nan
    print(f"AdaFuse average {table.loc['adafuse', 'Avg'] if 'adafuse' in table.index else np.nan:.2f} vs best baseline "
          f"{best:.2f}: {gain:+.2%} (the paper reports +6.88% for its models)")
    '''),
    md("""
    ## AdaFuse against the best single member and the best baseline

    Paired bootstrap per task over the examples both runs share (paper metric): the
    difference, its 95 % interval and the share of resamples on the other side of zero.
    The best single member and the best baseline are those with the highest Avg above.
    """),
    code('''
    singles = [lab for lab in labels if lab.startswith("single")]
    best_single = table.loc[singles, "Avg"].idxmax() if singles and table.loc[singles, "Avg"].notna().any() else None
    best_base = table.loc[baselines, "Avg"].idxmax() if baselines and table.loc[baselines, "Avg"].notna().any() else None
    paired = []
    for ada in [lab for lab in labels if lab.startswith("adafuse")]:
        for other in (best_single, best_base):
            if other is not None:
                paired += A.paired_rows(runs, P.tasks, ada, other, n_boot=P.n_boot)
    paired_df = pd.DataFrame(paired)
    if len(paired_df):
        paired_df.to_csv(OUT / "paired.csv", index=False)
        display(paired_df.round(3))
    '''),
    md("""
    ## Where AdaFuse loses: whose candidates win (from its traces)

    Every round scores all candidates by the members' mean NLL. Per task and member: the share
    of rounds that branched, in which the member's own favourite candidate (its lowest NLL)
    lost, and which a candidate only that member proposed won. Then AdaFuse's examples split
    by whether the best single member's favourite ever lost, scored for AdaFuse and for that
    member alone on the same examples: if the loss sits in the overruled examples, the other
    members' NLLs are what pulls AdaFuse below its best member.

    A member's favourite is its lowest mean NLL over a candidate word's tokens; greedy decoding
    follows the first token instead. The last table counts, over the rounds where a member
    branched, how often its favourite was not its top-1 word, and how often the top-1 word lost:
    when these are high even for the strongest member, AdaFuse drifts from that member's own
    answer without being overruled.
    """),
    code('''
    overrules = A.overrule_table(runs, P.tasks, "adafuse", list(P.models))
    split = []
    if best_single is not None:
        k = list(P.models).index(best_single.removeprefix("single: "))
        split = [row for t in P.tasks if runs.get(("adafuse", t)) and runs.get((best_single, t))
                 for row in A.overrule_split(t, runs["adafuse", t].records, runs[best_single, t].records,
                                             A.headline_key(t, runs["adafuse", t].results), member=k,
                                             n_boot=P.n_boot)]
    if overrules:
        display(pd.DataFrame(overrules).round(3))
    if split:
        display(pd.DataFrame(split).round(2))
    top1 = A.top1_table(runs, P.tasks, "adafuse", list(P.models))
    if top1:
        display(pd.DataFrame(top1).round(3))
    '''),
    md("""
    Where two members' favourites differ, the plain mean of NLLs picks the one whose owner prefers
    it by more: per pair of members, the median margin by which each prefers its own favourite
    (the other's favourite's NLL minus its own, in its own NLL) and whose favourite won.
    """),
    code('''
    disagreements = A.disagreement_table(runs, P.tasks, "adafuse", list(P.models))
    if disagreements:
        display(pd.DataFrame(disagreements).round(2))
    '''),
    md("""
    Whose vote decides? Per member, the share of rounds in which the mean NLL of the other
    members alone would have picked another candidate, over all rounds and over each example's
    first round (where a winner that ends the answer leaves it empty). A member that is weak at
    the task decides rounds too, and with three members it can tip the mean towards a candidate
    that every member finds cheap.
    """),
    code('''
    leave_one_out = A.leave_one_out_table(runs, P.tasks, "adafuse", list(P.models))
    if leave_one_out:
        display(pd.DataFrame(leave_one_out).round(3))
    '''),
    md("""
    Whose answer does the ensemble give? The share of AdaFuse's answers that are the same as
    each member's own answer (up to space, case and a final period). Then every row's empty
    answers: an answer is empty when its first committed word already ends it, for instance a
    candidate that starts the next few-shot block ("\\n\\nQuestion:") and so hits a stop
    string. For AdaFuse the trace names that first winning candidate and who proposed it.
    """),
    code('''
    agreement = A.agreement_table(runs, P.tasks, "adafuse", singles)
    if agreement:
        display(pd.DataFrame(agreement).pivot(index="other", columns="task", values="same_answer").round(2))
    empty = A.empty_answers(runs, P.tasks, labels, list(P.models))
    if empty:
        display(pd.DataFrame(empty))
    '''),
    code('''
    summary = {
        "models": list(P.models), "tasks": list(P.tasks), "labels": labels, "missing": missing,
        "table": table.reset_index().to_dict(orient="records"),
        "adafuse_vs_best_baseline": gain, "paired": paired, "best_single": best_single, "best_baseline": best_base,
        "half": P.half, "tuned": dict(P.tuned), "overrules": overrules, "overrule_split": split, "top1": top1,
        "disagreements": disagreements, "leave_one_out": leave_one_out, "agreement": agreement, "empty_answers": empty,
        "figures": sorted(p.name for p in figures),
    }
    A.write_summary(OUT, summary)
    '''),
]

NOTEBOOKS = {
    "00_quickstart": NB00,
    "01_uncertainty_analysis": NB01,
    "02_trigger_rates": NB02,
    "03_diversity_ablations": NB03,
    "04_full_benchmark": NB04,
}


def render(name: str) -> str:
    return nbformat.writes(notebook(NOTEBOOKS[name])) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date with build_notebooks.py: {', '.join(stale)} (run python notebooks/build_notebooks.py)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
