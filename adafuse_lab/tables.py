"""Tables over saved runs: the paper's Table 1, costs, and whose candidates win.

``runs`` arguments map ``(row label, task)`` to a ``runs.Run`` (or None when missing), as
notebook 04 builds them from its run plan (``plans.benchmark_runs``).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .stats import headline_key, metric_keys, paired_diff, score_ci
from .traces import _nll, n_words, round_rows, run_rows


def method_label(method: str, decode: dict | None, models: Sequence[str]) -> str:
    """A row label: the method, or "single: <member>" for one member's greedy decoding."""
    if method == "single":
        return f"single: {models[(decode or {}).get('member', 0)]}"
    return method


def benchmark_table(runs: dict, tasks: Sequence[str], labels: Sequence[str], n_boot: int = 1000, seed: int = 0):
    """The paper's Table 1 layout. runs: {(label, task): Run or None}.

    One row per label; per task: the paper's metric with its bootstrap interval
    (``<task>`` / ``<task> lo`` / ``<task> hi``), the strict metric
    (``<task> strict``); then ``Avg`` (mean of the paper metrics over the tasks that any
    row has a run for; NaN for a row that lacks one of them) and cost columns averaged over
    tasks (forward passes, decoded tokens, seconds per example). Returns a pandas
    DataFrame indexed by label.
    """
    import pandas as pd
    rows = []
    present = [t for t in tasks if any(runs.get((label, t)) is not None for label in labels)]  # a partial table
    for label in labels:
        row: dict = {"method": label}
        costs = []
        for task in tasks:
            run = runs.get((label, task))
            keys = metric_keys(task)
            if run is None:
                row.update({task: np.nan, f"{task} lo": np.nan, f"{task} hi": np.nan, f"{task} strict": np.nan})
                continue
            paper = headline_key(task, run.results)
            ci = score_ci(task, run.records, paper, n_boot=n_boot, seed=seed)
            strict = score_ci(task, run.records, keys["strict"], n_boot=1, seed=seed)["value"]
            row.update({task: ci["value"], f"{task} lo": ci["low"], f"{task} hi": ci["high"],
                        f"{task} strict": strict, f"{task} n": ci["n"]})
            costs.append(cost(run.records, run.results))
        vals = [row[t] for t in present]
        row["Avg"] = float(np.mean(vals)) if vals and all(np.isfinite(vals)) else np.nan
        for c in ("forwards", "tokens", "seconds"):
            v = [x[c] for x in costs if np.isfinite(x[c])]
            row[f"{c}/ex"] = float(np.mean(v)) if v else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def format_table(table, tasks: Sequence[str], digits: int = 1):
    """Table 1 for reading: "value [low, high]" per task, strict metric, Avg and costs."""
    import pandas as pd
    out = pd.DataFrame(index=table.index)

    def f(x):
        return "–" if not np.isfinite(x) else f"{x:.{digits}f}"
    for t in tasks:
        out[t] = [f"{v} [{lo}, {hi}]" if v != "–" else "–" for v, lo, hi in
                  zip(map(f, table[t]), map(f, table[f"{t} lo"]), map(f, table[f"{t} hi"]))]
        out[f"{t} strict"] = list(map(f, table[f"{t} strict"]))
    out["Avg"] = list(map(f, table["Avg"]))
    for c in ("forwards/ex", "tokens/ex", "seconds/ex"):
        out[c] = [f"{x:.3g}" if np.isfinite(x) else "–" for x in table[c]]
    return out


def paired_rows(runs: dict, tasks: Sequence[str], a: str, b: str, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per task, the paired bootstrap of label a minus label b on the paper's metric, over the
    examples both runs share: {"task", "a", "b", "diff", "low", "high", "p_value", "n"}."""
    out = []
    for task in tasks:
        ra, rb = runs.get((a, task)), runs.get((b, task))
        if ra is None or rb is None:
            continue
        d = paired_diff(task, ra.records, rb.records, headline_key(task, ra.results), n_boot=n_boot, seed=seed)
        out.append({"task": task, "a": a, "b": b, **d})
    return out


def cost(records: Sequence[dict], results: dict | None = None) -> dict:
    """Cost columns of a run, per example: forward passes and decoded tokens (all members;
    from the trace when there is one, so look-ahead and branches count), rounds,
    committed words, and decoding seconds (from results.json timings)."""
    n = len(records)
    if n == 0:
        return {"forwards": float("nan"), "tokens": float("nan"), "rounds": float("nan"),
                "words": float("nan"), "seconds": float("nan")}
    fw = tok = rounds = words = 0.0
    for r in records:
        st = r.get("stats") or {}
        fw += sum(st.get("forwards") or [0])
        tr = r.get("trace")
        tok += sum(m["tokens"] for rd in tr for m in rd["members"]) if tr else sum(st.get("tokens") or [0])
        rounds += st.get("rounds") or 0
        words += n_words(r.get("prediction") or "")
    t = (results or {}).get("timings") or {}
    sec = t.get("per_example_mean_s")
    if sec is None and t.get("decode_s") is not None and t.get("n_decoded"):
        sec = t["decode_s"] / t["n_decoded"]
    return {"forwards": fw / n, "tokens": tok / n, "rounds": rounds / n, "words": words / n,
            "seconds": float("nan") if sec is None else float(sec)}


def answer_rows(task, examples: Sequence, outputs: Sequence) -> list[dict]:
    """One row per decoded example: question, extracted answer, gold, the task's headline
    per-example score, rounds, triggered rounds and committed words per round."""
    key = metric_keys(task.name)["example"]
    rows = []
    for ex, out in zip(examples, outputs):
        sc = task.score(ex, out.text)
        tr = out.trace or []
        trig = sum(any(m["branched"] for m in rd["members"]) for rd in tr)
        rows.append({"id": ex.id, "question": ex.question[-120:], "answer": sc.get("answer"),
                     "gold": " | ".join(ex.references[:3]),
                     "score": sc.get(key) if key else sc.get("sentence_chrf"), "rounds": len(tr),
                     "triggered": trig, "words/round": n_words(out.text) / len(tr) if tr else float("nan")})
    return rows


def _label_runs(runs: dict, tasks: Sequence[str], label: str):
    """(task, run) of `label` ({(label, task): Run}) for every task that has one, in task order."""
    for task in tasks:
        run = runs.get((label, task))
        if run is not None:
            yield task, run


def _trace_rows(runs: dict, tasks: Sequence[str], label: str):
    """(task, round rows of `label`'s run) for every task whose run has traced rounds."""
    for task, run in _label_runs(runs, tasks, label):
        rows = run_rows(run.records)
        if rows:
            yield task, rows


def overrule_table(runs: dict, tasks: Sequence[str], label: str, names: Sequence[str]) -> list[dict]:
    """Per task and member, from the traces of `label`'s runs ({(label, task): Run}): the share
    of rounds that branched, in which the member's own favourite candidate lost, and which
    were won by a candidate that this member alone proposed."""
    out = []
    for task, rows in _trace_rows(runs, tasks, label):
        n = len(rows)
        for k, name in enumerate(names):
            out.append({"task": task, "member": name, "rounds": n,
                        "triggered": sum(r["triggered"] for r in rows) / n,
                        "favourite_lost": sum(k in r["overruled"] for r in rows) / n,
                        "won_alone": sum(list(r["winner_from"]) == [k] for r in rows) / n})
    return out


def top1_table(runs: dict, tasks: Sequence[str], label: str, names: Sequence[str]) -> list[dict]:
    """Per task and member, over the rounds where the member branched (from `label`'s traces):
    how often its own mean-NLL favourite was not its top-1 word (the word greedy decoding would
    take), and how often its top-1 word lost the round."""
    out = []
    for task, rows in _trace_rows(runs, tasks, label):
        for k, name in enumerate(names):
            mine = [r for r in rows if k in r["branched_top1"]]
            if mine:
                out.append({"task": task, "member": name, "branched_rounds": len(mine),
                            "favourite_not_top1": sum(k in r["favourite_not_top1"] for r in mine) / len(mine),
                            "top1_lost": sum(k in r["top1_lost"] for r in mine) / len(mine)})
    return out


def _mean_winner(cands: Sequence[dict], members: Sequence[int]) -> int:
    """Index of the candidate with the lowest plain mean NLL over `members` (first on ties)."""
    return min(range(len(cands)), key=lambda i: sum(_nll(cands[i], k) for k in members) / len(members))


def _favourite(cands: Sequence[dict], k: int) -> int:
    """Index of member k's favourite candidate: its lowest mean NLL (first on ties)."""
    return _mean_winner(cands, [k])


def disagreement_table(runs: dict, tasks: Sequence[str], label: str, names: Sequence[str]) -> list[dict]:
    """Per task and pair of members, over the rounds of `label`'s traces where the two members'
    favourites differ: how firmly each prefers its own (median margin: the other's favourite's
    NLL minus its own favourite's, under its own NLL) and whose favourite won. Under a plain mean
    of NLLs, the member with the larger margin decides such a round between the two."""
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    out = []
    for task, run in _label_runs(runs, tasks, label):
        # per pair: [margins of a, margins of b, rounds a's favourite won, rounds b's favourite won]
        acc = {pair: [[], [], 0, 0] for pair in pairs}
        for rd in (rd for r in run.records for rd in (r.get("trace") or [])):
            cands = rd["candidates"]
            fav = [_favourite(cands, k) for k in range(len(names))]
            for (a, b), st in acc.items():
                fa, fb = fav[a], fav[b]
                if fa != fb:
                    st[0].append(_nll(cands[fb], a) - _nll(cands[fa], a))
                    st[1].append(_nll(cands[fa], b) - _nll(cands[fb], b))
                    st[2] += rd["winner"] == fa
                    st[3] += rd["winner"] == fb
        for (a, b), (margin_a, margin_b, won_a, won_b) in acc.items():
            if margin_a:
                out.append({"task": task, "a": names[a], "b": names[b], "rounds": len(margin_a),
                            "margin_a": float(np.median(margin_a)), "margin_b": float(np.median(margin_b)),
                            "won_a": won_a, "won_b": won_b})
    return out


def leave_one_out_table(runs: dict, tasks: Sequence[str], label: str, names: Sequence[str]) -> list[dict]:
    """Per task and member, from `label`'s traces: in which rounds that member's vote decided the
    winner, i.e. the mean NLL of the other members alone would have picked another candidate;
    as a share of all rounds and of the examples' first rounds (where a winner that ends the
    answer leaves it empty). Rounds whose recorded winner is not the plain mean's over every
    member (per-model weights, the outlier filter) are left out and counted."""
    out = []
    everyone = range(len(names))
    if len(names) < 2:  # a lone member decides every round; there is no one to compare with
        return out
    for task, run in _label_runs(runs, tasks, label):
        decided = [[0, 0] for _ in names]  # per member: rounds it decided, first rounds it decided
        rounds = firsts = other_rule = 0
        for trace in (r.get("trace") for r in run.records):
            for i, rd in enumerate(trace or ()):
                cands = rd.get("candidates") or ()
                if len(cands) < 2:
                    continue
                if _mean_winner(cands, everyone) != rd["winner"]:
                    other_rule += 1
                    continue
                rounds += 1
                firsts += i == 0
                for k in everyone:
                    if _mean_winner(cands, [j for j in everyone if j != k]) != rd["winner"]:
                        decided[k][0] += 1
                        decided[k][1] += i == 0
        if rounds:
            for k, name in enumerate(names):
                out.append({"task": task, "member": name, "rounds": rounds, "decided": decided[k][0] / rounds,
                            "first_rounds": firsts, "decided_first": decided[k][1] / firsts if firsts else 0.0,
                            "not_plain_mean": other_rule})
    return out


def _same_answer(a: str | None, b: str | None) -> bool:
    """Two answers are the same up to surrounding space, case and a final period."""
    def norm(x):
        return (x or "").strip().rstrip(".").strip().lower()
    return norm(a) == norm(b)


def agreement_table(runs: dict, tasks: Sequence[str], label: str, others: Sequence[str]) -> list[dict]:
    """Per task: the share of `label`'s answers that are the same as each of `others`' answer to
    the same example (e.g. AdaFuse against each member alone): whose answer the ensemble gives."""
    out = []
    for task, run in _label_runs(runs, tasks, label):
        for other in others:
            ref = runs.get((other, task))
            if ref is None:
                continue
            by_id = {r["id"]: r for r in ref.records}
            shared = [r for r in run.records if r["id"] in by_id]
            if shared:
                out.append({"task": task, "other": other, "n": len(shared),
                            "same_answer": sum(_same_answer(r["prediction"], by_id[r["id"]]["prediction"])
                                               for r in shared) / len(shared)})
    return out


def _first_winner(trace: Sequence[dict] | None) -> tuple[str, tuple[int, ...]] | None:
    """The first round's winning candidate: its text and the members that proposed it."""
    if not trace or "candidates" not in trace[0]:
        return None
    won = trace[0]["candidates"][trace[0]["winner"]]
    return won["text"], tuple(won["from"])


def empty_answers(runs: dict, tasks: Sequence[str], labels: Sequence[str], names: Sequence[str] = ()) -> list[dict]:
    """Per row label and task with any empty answer (nothing but space before the answer ended,
    e.g. its first word hit a stop string): how many, and from the traces the commonest first
    winning candidate of those answers, how often it was, and which members proposed it."""
    out = []
    for label in labels:
        for task, run in _label_runs(runs, tasks, label):
            empty = [r for r in run.records if not (r.get("prediction") or "").strip()]
            if not empty:
                continue
            row = {"label": label, "task": task, "n": len(run.records), "empty": len(empty)}
            firsts = [w for w in (_first_winner(r.get("trace")) for r in empty) if w is not None]
            if firsts:
                (text, src), count = Counter(firsts).most_common(1)[0]
                who = "+".join(names[k] if k < len(names) else str(k) for k in src)
                row |= {"first_winner": text, "proposed_by": who, "first_winner_count": count}
            out.append(row)
    return out


def overrule_split(task_name: str, ada: Sequence[dict], ref: Sequence[dict], key: str, member: int = 0,
                   n_boot: int = 200) -> list[dict]:
    """AdaFuse's examples split by whether `member`'s favourite candidate lost any round of the
    trace; per group: n and the score of AdaFuse and of the reference run (e.g. that member
    alone) on the same examples, in report units."""
    lost = {r["id"]: any(member in row["overruled"] for row in round_rows(r.get("trace"))) for r in ada}
    by_id = {r["id"]: r for r in ref}
    out = []
    for flag in (True, False):
        ids = {i for i, v in lost.items() if v == flag and i in by_id}
        a, b = [r for r in ada if r["id"] in ids], [by_id[i] for i in sorted(ids)]
        out.append({"task": task_name, "favourite_lost": flag, "n": len(ids),
                    "adafuse": score_ci(task_name, a, key, n_boot)["value"],
                    "reference": score_ci(task_name, b, key, n_boot)["value"]})
    return out
