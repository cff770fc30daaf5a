"""From runs and traces to tidy tables: the analysis the notebooks import.

A trace (``DecodeOutput.trace``, stored per record in ``samples.jsonl``) is a list
of rounds, each ``{"members": [...], "candidates": [...], "winner": i}``:

- ``members[k]``: member k's proposal this round. ``conf`` / ``margin`` /
  ``entropy`` / ``theta`` are lists with one value per *word start* at which it
  took a decision (commit while confident; branch, or stop, at the last one);
  ``words`` = words committed before it branched or stopped; ``branched``;
  ``tokens`` and ``forwards`` it spent on this prompt in the round.
- ``candidates[c]``: ``text``, ``eos``, ``from`` (the members that proposed it),
  ``nll`` (each member's mean NLL), ``score`` (combined); ``winner`` indexes it.

Three row types (lists of dicts; ``frame()`` makes a pandas DataFrame):

- ``word_rows``: one per (round, member, word start): the confidence values.
- ``member_rounds``: one per (round, member): the confidence at the round's first
  word start (taken at the shared prefix, so it is on the decoded path), whether the
  member branched, and whether it *lost* (none of its candidates won).
- ``round_rows``: one per round: committed span length in words, whether any member
  branched (the ensemble was triggered), whether the members *split* (no candidate
  was proposed by all of them), tokens and forward passes.

Recomputing at another threshold (``round_triggers``, ``simulate_commitment``)
uses only stored confidences: nothing is decoded again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .decoding.words import split_words

# ---------------------------------------------------------------- traces -> rows


def n_words(text: str) -> int:
    """Words with a letter or digit in `text` (1 for non-empty text without any)."""
    return sum(any(ch.isalnum() for ch in w) for w in split_words(text)) or (1 if text.strip() else 0)


def top1_candidate(rd: dict, k: int) -> int | None:
    """Index of member k's top-1 word among a round's candidates: the first it proposed. Traces
    before "proposed" was recorded list the first member's proposals first, so there it is the
    first candidate from member 0; for the other members it is unknown (None)."""
    own = rd["members"][k].get("proposed")
    if own:
        return own[0]
    if k == 0:
        return next((i for i, c in enumerate(rd["candidates"]) if 0 in c["from"]), None)
    return None


def _nll(c: dict, k: int) -> float:
    x = c["nll"][k]
    return math.inf if x is None else x


def round_rows(trace: Sequence[dict] | None, **keys) -> list[dict]:
    """One row per round of one trace; `keys` (e.g. id=..., task=...) are copied into every row."""
    rows = []
    for r, rd in enumerate(trace or []):
        members = rd["members"]
        cands = rd["candidates"]
        win = cands[rd["winner"]]
        K = len(members)
        top1 = {k: top1_candidate(rd, k) for k in range(K) if members[k]["branched"]}
        top1 = {k: i for k, i in top1.items() if i is not None}
        rows.append({
            **keys, "round": r,
            "span_words": n_words(win["text"]), "span_chars": len(win["text"]), "eos": bool(win["eos"]),
            "winner_from": list(win["from"]), "shared_win": len(win["from"]) == K,
            "triggered": any(m["branched"] for m in members),
            "n_branched": sum(bool(m["branched"]) for m in members),
            "split": not any(len(c["from"]) == K for c in rd["candidates"]),
            "n_candidates": len(rd["candidates"]),
            # members whose own favourite (the candidate it gives the lowest NLL) lost the round
            "overruled": [k for k in range(K) if win["nll"][k] > min(c["nll"][k] for c in rd["candidates"])],
            # branched members (top-1 word known): whose own mean-NLL favourite is not their top-1
            # word, and whose top-1 word did not win
            "branched_top1": sorted(top1),
            "favourite_not_top1": [k for k, i in top1.items() if _nll(cands[i], k) > min(_nll(c, k) for c in cands)],
            "top1_lost": [k for k, i in top1.items() if i != rd["winner"]],
            "min_conf0": min((m["conf"][0] for m in members if m["conf"]), default=float("nan")),
            "tokens": sum(m["tokens"] for m in members), "forwards": sum(m["forwards"] for m in members),
        })
    return rows


def member_rounds(trace: Sequence[dict] | None, names: Sequence[str] | None = None, **keys) -> list[dict]:
    """One row per (round, member). `lost`: none of the member's candidates won the round."""
    rows = []
    for r, rd in enumerate(trace or []):
        win = rd["candidates"][rd["winner"]]
        split = not any(len(c["from"]) == len(rd["members"]) for c in rd["candidates"])
        for k, m in enumerate(rd["members"]):
            if not m["conf"]:
                continue  # budget reached before any decision
            rows.append({
                **keys, "round": r, "member": k, "member_name": names[k] if names else f"member{k}",
                "conf": m["conf"][0], "margin": m["margin"][0], "entropy": m["entropy"][0], "theta": m["theta"][0],
                "min_conf": min(m["conf"]), "n_starts": len(m["conf"]), "words": m["words"],
                "branched": bool(m["branched"]), "lost": k not in win["from"], "split": split,
                "tokens": m["tokens"], "forwards": m["forwards"],
            })
    return rows


def word_rows(trace: Sequence[dict] | None, names: Sequence[str] | None = None, **keys) -> list[dict]:
    """One row per (round, member, word start). `action`: commit (confident), or the last
    start's branch/stop; `j` is the word index inside the member's proposal."""
    rows = []
    for r, rd in enumerate(trace or []):
        for k, m in enumerate(rd["members"]):
            n = len(m["conf"])
            for j in range(n):
                last = j == n - 1
                action = ("branch" if m["branched"] else "stop") if last and m["conf"][j] < m["theta"][j] else "commit"
                rows.append({**keys, "round": r, "member": k, "member_name": names[k] if names else f"member{k}",
                             "j": j, "conf": m["conf"][j], "margin": m["margin"][j], "entropy": m["entropy"][j],
                             "theta": m["theta"][j], "action": action})
    return rows


def run_rows(records: Iterable[dict], kind: str = "rounds", **keys) -> list[dict]:
    """`round_rows` / `member_rounds` / `word_rows` over every record of a run (samples.jsonl)."""
    fn = {"rounds": round_rows, "members": member_rounds, "words": word_rows}[kind]
    out = []
    for rec in records:
        extra = {"id": rec["id"], **keys}
        names = (rec.get("stats") or {}).get("members")
        out += fn(rec.get("trace"), **extra) if kind == "rounds" else fn(rec.get("trace"), names, **extra)
    return out


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


def frame(rows: list[dict]):
    """A pandas DataFrame of rows (pandas is imported only here)."""
    import pandas as pd
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- thresholds, recomputed


def trigger_curve(conf: Sequence[float], thetas: Sequence[float]) -> np.ndarray:
    """Share of confidences below each theta: how often a member would ask for the ensemble."""
    c = np.asarray(conf, dtype=float)
    c = c[np.isfinite(c)]
    if c.size == 0:
        return np.full(len(thetas), np.nan)
    return np.array([(c < t).mean() for t in thetas])


def round_triggers(trace: Sequence[dict] | None, theta: float) -> list[bool]:
    """Per round: would the ensemble have been triggered at `theta`, i.e. did any member
    see a confidence below `theta` at one of the word starts it recorded?

    Exact at the theta the trace was decoded with (it reproduces ``branched``, for
    adaptive spans outside compat mode); for another theta it is an estimate on the
    decoded path: a lower theta cannot see the look-ahead a member never decoded."""
    return [any(c < theta for m in rd["members"] for c in m["conf"]) for rd in trace or []]


def round_trigger_curve(traces: Iterable[Sequence[dict] | None], thetas: Sequence[float]) -> np.ndarray:
    """Ensemble trigger rate (share of rounds, pooled over traces) at each theta."""
    traces = [t for t in traces if t]
    n = sum(len(t) for t in traces)
    if n == 0:
        return np.full(len(thetas), np.nan)
    return np.array([sum(sum(round_triggers(t, th)) for t in traces) / n for th in thetas])


def probe_path(trace: Sequence[dict] | None) -> np.ndarray:
    """Words x members array of confidences from a one-word-per-round trace (PROBE, Cool-Fusion):
    every member's confidence at every committed word start of the decoded path."""
    rows = [[m["conf"][0] if m["conf"] else np.nan for m in rd["members"]] for rd in trace or []]
    return np.asarray(rows, dtype=float).reshape(len(rows), -1) if rows else np.zeros((0, 0))


def simulate_commitment(path: np.ndarray, theta: float, M: int = 3) -> dict:
    """AdaFuse's adaptive commitment replayed on a confidence path (words x members).

    Each round starts at word i. Member k commits r_k consecutive words with
    confidence >= theta (at most M); it branches when it meets an uncertain word
    first, proposing r_k + 1 words. The round is *triggered* when some member
    branches. The committed span is the proposal of the member most confident at
    word i (an assumption: the trace does not say which candidate would win).
    Returns {"rounds", "words", "triggered", "spans"}: fewer rounds per word is the
    cost saved against a one-word-per-round (fixed-granularity) ensemble.
    """
    path = np.asarray(path, dtype=float)
    n = path.shape[0]
    i, spans, triggered = 0, [], 0
    while i < n:
        props, branch = [], False
        for k in range(path.shape[1]):
            r = 0
            while r < M and i + r < n and path[i + r, k] >= theta:
                r += 1
            b = r < M and i + r < n
            branch |= b
            props.append(min(r + 1, M) if b else max(r, 1))
        lead = int(np.nanargmax(path[i])) if np.isfinite(path[i]).any() else 0
        span = min(props[lead], n - i)
        spans.append(span)
        triggered += branch
        i += span
    return {"rounds": len(spans), "words": n, "triggered": triggered, "spans": spans}


def commitment_curve(paths: Iterable[np.ndarray], thetas: Sequence[float], M: int = 3) -> dict:
    """simulate_commitment pooled over paths, for each theta: trigger rate (share of
    rounds), mean span in words, rounds per word (1.0 = fixed one-word granularity)."""
    paths = [p for p in paths if len(p)]
    out = {"theta": list(map(float, thetas)), "trigger_rate": [], "mean_span": [], "rounds_per_word": []}
    for th in thetas:
        sims = [simulate_commitment(p, th, M) for p in paths]
        rounds, words = sum(s["rounds"] for s in sims), sum(s["words"] for s in sims)
        out["trigger_rate"].append(sum(s["triggered"] for s in sims) / rounds if rounds else float("nan"))
        out["mean_span"].append(words / rounds if rounds else float("nan"))
        out["rounds_per_word"].append(rounds / words if words else float("nan"))
    return out


# ---------------------------------------------------------------- prediction quality


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for the positive `labels`, by the rank
    (Mann-Whitney) formula with mid-ranks for ties; NaN when a class is empty.
    To ask "does LOW confidence predict X", pass scores = -confidence."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks over runs of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability(conf: Sequence[float], outcome: Sequence[bool], n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence, observed rate
    of `outcome` per non-empty bin (a reliability curve)."""
    c = np.asarray(conf, dtype=float)
    o = np.asarray(outcome, dtype=float)
    ok = np.isfinite(c)
    c, o = c[ok], o[ok]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(c, edges[1:-1]), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            out.append({"bin": b, "low": float(edges[b]), "high": float(edges[b + 1]), "n": int(sel.sum()),
                        "mean_conf": float(c[sel].mean()), "rate": float(o[sel].mean())})
    return out


def ece(bins: list[dict]) -> float:
    """Expected calibration error of reliability() bins: sum of n/N * |rate - mean_conf|."""
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["rate"] - b["mean_conf"]) for b in bins)) if n else float("nan")


def catch_curve(conf: Sequence[float], label: Sequence[bool], thetas: Sequence[float] | None = None) -> dict:
    """A trigger criterion judged at equal budget: for each threshold, the share of
    word starts it triggers at (conf < theta) and the share of `label` events it
    catches (recall). Thresholds default to every distinct confidence value."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(label, dtype=bool)
    ok = np.isfinite(c)
    c, y = c[ok], y[ok]
    th = np.unique(np.concatenate([c, [0.0, 1.0 + 1e-9]])) if thetas is None else np.asarray(thetas, dtype=float)
    rate = np.array([(c < t).mean() if c.size else np.nan for t in th])
    recall = np.array([(c[y] < t).mean() if y.any() else np.nan for t in th])
    return {"theta": th.tolist(), "trigger_rate": rate.tolist(), "recall": recall.tolist()}


def uncertainty_table(members, by: Sequence[str] = ("task", "member_name"), n_bins: int = 10):
    """Does low confidence predict trouble? Per group of member-round rows (a DataFrame
    from member_rounds): AUROC of -margin and of -entropy for `lost` (the member's
    proposal was overruled) and for `split` (the members proposed different text),
    the rates of both, and the calibration error of margin as P(member's word wins)."""
    import pandas as pd
    rows = []
    for key, g in members.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n"] = len(g)
        for lab in ("lost", "split"):
            row[f"{lab} rate"] = float(g[lab].mean())
            for crit in ("margin", "entropy"):
                row[f"AUROC {lab} | {crit}"] = auroc(-g[crit].to_numpy(), g[lab].to_numpy())
        row["ECE margin"] = ece(reliability(g["margin"], ~g["lost"].astype(bool), n_bins))
        rows.append(row)
    return pd.DataFrame(rows)


def example_confidence(records: Sequence[dict], task_name: str, **keys) -> list[dict]:
    """Per example of a (one-member) traced run: mean and minimum margin and entropy over
    every word start, and whether the answer is correct (None for translation)."""
    key = metric_keys(task_name)["example"]
    out = []
    for r in records:
        ws = word_rows(r.get("trace"))
        mg = [w["margin"] for w in ws]
        en = [w["entropy"] for w in ws]
        correct = None if key is None else bool((r.get("metrics") or {}).get(key))
        out.append({**keys, "id": r["id"], "n_starts": len(ws), "correct": correct,
                    "mean_margin": float(np.mean(mg)) if mg else np.nan, "min_margin": min(mg, default=np.nan),
                    "mean_entropy": float(np.mean(en)) if en else np.nan, "min_entropy": min(en, default=np.nan)})
    return out


def measured_point(records: Sequence[dict], theta: float | None = None) -> dict:
    """Trigger rate, mean committed span (words per round) and rounds per word of a
    decoded AdaFuse run, pooled over its traces."""
    rr = run_rows(records, "rounds")
    n, words = len(rr), sum(r["span_words"] for r in rr)
    return {"theta": theta, "rounds": n, "words": words,
            "trigger_rate": sum(r["triggered"] for r in rr) / n if n else float("nan"),
            "mean_span": words / n if n else float("nan"),
            "rounds_per_word": n / words if words else float("nan")}


def per_example_trigger(records: Sequence[dict]) -> np.ndarray:
    """Share of triggered rounds in each example's trace (NaN-free: examples without rounds dropped)."""
    out = []
    for r in records:
        tr = r.get("trace") or []
        if tr:
            out.append(sum(any(m["branched"] for m in rd["members"]) for rd in tr) / len(tr))
    return np.asarray(out, dtype=float)


def diff_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Unpaired bootstrap of mean(a) - mean(b) (two different sets of examples, e.g. two tasks)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    boot = a[rng.integers(0, a.size, (n, a.size))].mean(1) - b[rng.integers(0, b.size, (n, b.size))].mean(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi)}


# ---------------------------------------------------------------- metrics and costs per run


def metric_keys(task_name: str) -> dict:
    """Per task: the paper's (lenient) metric, the strict one, and the per-example key
    used for accuracy-style analyses (None for corpus-only translation metrics)."""
    from .tasks import get_task
    task = get_task(task_name)
    if task.kind == "mt":
        return {"paper": "spbleu", "paper_fallback": "bleu", "strict": "chrf", "example": None, "scale": 1.0}
    if task.kind == "math":
        return {"paper": "exact_match", "strict": "exact_match", "example": "exact_match", "scale": 100.0,
                "extra": "upstream_compatible"}
    return {"paper": "lenient", "strict": "exact_match", "example": "lenient", "scale": 100.0, "extra": "f1"}


def example_scores(records: Sequence[dict], key: str) -> np.ndarray:
    return np.array([float((r.get("metrics") or {}).get(key) or 0.0) for r in records])


def score_ci(task_name: str, records: Sequence[dict], key: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """{"value", "low", "high", "n"} of a task metric over records, in report units
    (percent for accuracies, BLEU/chrF points): mean of per-example scores with a
    percentile bootstrap, or a corpus metric bootstrapped over resampled examples."""
    from . import metrics as M
    keys = metric_keys(task_name)
    if not records:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    if keys["example"] is None:  # translation: corpus level
        if key == "spbleu":
            return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": len(records)}
        hyps = [r.get("answer") or "" for r in records]
        refs = [r["references"] for r in records]
        b = M.corpus_bootstrap(hyps, refs, metric=key, n=n_boot, seed=seed)
        return {"value": b["score"], "low": b["low"], "high": b["high"], "n": b["n"]}
    b = M.bootstrap_ci(example_scores(records, key), n=n_boot, seed=seed)
    s = keys["scale"]
    return {"value": b["mean"] * s, "low": b["low"] * s, "high": b["high"] * s, "n": b["n"]}


def paired_diff(task_name: str, a: Sequence[dict], b: Sequence[dict], key: str, n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Paired bootstrap of metric(a) - metric(b) over the examples both runs share, in
    report units: {"diff", "low", "high", "p_value", "n"}."""
    from . import metrics as M
    ids = [r["id"] for r in a if r["id"] in {x["id"] for x in b}]
    ra, rb = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    a, b = [ra[i] for i in ids], [rb[i] for i in ids]
    nan = {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "p_value": float("nan"), "n": len(ids)}
    if not ids:
        return nan
    keys = metric_keys(task_name)
    if keys["example"] is None:
        if key == "spbleu":
            return nan
        out = M.corpus_bootstrap([r.get("answer") or "" for r in a], [r["references"] for r in a], metric=key,
                                 n=n_boot, seed=seed, hyps_b=[r.get("answer") or "" for r in b])
        return {"diff": out["score"], "low": out["low"], "high": out["high"], "p_value": out["p_value"], "n": out["n"]}
    out = M.paired_bootstrap(example_scores(a, key), example_scores(b, key), n=n_boot, seed=seed)
    s = keys["scale"]
    return {"diff": out["diff"] * s, "low": out["low"] * s, "high": out["high"] * s, "p_value": out["p_value"],
            "n": out["n"]}


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


# The two traced runs the analysis notebooks share (method, decode options):
# PROBE: Cool-Fusion, one word per round and one candidate per member: every member's
#        confidence at every committed word start of the ensemble's path. It is also the
#        fixed-granularity ensemble that AdaFuse's cost is compared with.
# SELF:  one member alone with theta 0 (never branches): its greedy answer, with a
#        confidence at every word start.
PROBE = ("coolfusion", {})
SELF = ("adafuse", {"theta": 0.0, "M": 16})


def headline_key(task_name: str, results: dict | None = None) -> str:
    """The paper's metric of a task; spBLEU falls back to BLEU (13a) when it was not computed."""
    keys = metric_keys(task_name)
    if keys["paper"] == "spbleu" and ((results or {}).get("metrics") or {}).get("spbleu") is None:
        return keys["paper_fallback"]
    return keys["paper"]


def example_table(examples):
    """Per (task, member) of example_confidence rows with a correctness label: accuracy
    and the AUROC of low mean / minimum margin and entropy for a wrong answer."""
    import pandas as pd
    rows = []
    ex = examples[examples["correct"].notna()]
    for (task, name), g in ex.groupby(["task", "member_name"], sort=True):
        wrong = ~g["correct"].astype(bool)
        row = {"task": task, "member_name": name, "n": len(g), "accuracy": float(1 - wrong.mean())}
        for col in ("mean_margin", "min_margin", "mean_entropy", "min_entropy"):
            row[f"AUROC wrong | {col}"] = auroc(-g[col].to_numpy(), wrong.to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def claim_by_kind(rates: dict, kinds: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """Trigger rates pooled by task kind (math / qa / mt) with bootstrap intervals, and
    math minus each other kind (unpaired bootstrap): the claim that AdaFuse ensembles
    more on math. rates[task]: per-example trigger shares; kinds[task]: the task kind."""
    from .metrics import bootstrap_ci
    pooled = {}
    for task, v in rates.items():
        pooled.setdefault(kinds[task], []).extend(np.asarray(v, dtype=float).tolist())
    out = {"by_kind": {k: bootstrap_ci(v, n=n_boot, seed=seed) for k, v in sorted(pooled.items()) if v}}
    for other in ("qa", "mt"):
        if pooled.get("math") and pooled.get(other):
            out[f"math_minus_{other}"] = diff_ci(pooled["math"], pooled[other], n=n_boot, seed=seed)
    return out


def ablation_variants(theta: float, M: int, B: int, B_values: Sequence[int] = (1, 2, 3, 5),
                      branch_selects: Sequence[str] = ("topk", "distinct"), fixed_span: int | None = 3) -> list[dict]:
    """The diversity ablations: {"label", "key" (colour), "decode"} per variant. The first
    is the reference (B branches, top-k selection, adaptive spans); B = 1 is "without
    diversity-aware scaling", a fixed span "without adaptive commitment"."""
    base = {"theta": theta, "M": M}
    out = [{"label": f"B={B}", "key": "adafuse", "decode": {**base, "B": B}}]
    for b in B_values:
        if b != B:
            out.append({"label": f"B={b}" + (" (no scaling)" if b == 1 else ""), "key": "adafuse",
                        "decode": {**base, "B": b}})
    for sel in branch_selects:
        if sel != "topk":
            out.append({"label": f"{sel} B={B}", "key": f"adafuse-{sel}",
                        "decode": {**base, "B": B, "branch_select": sel}})
    if fixed_span:
        out.append({"label": f"fixed {fixed_span} words", "key": "adafuse-fixed",
                    "decode": {**base, "B": B, "span_words": fixed_span}})
    return out


TUNED = "adafuse (tuned)"


def benchmark_plan(methods: Sequence[str], models: Sequence[str], tuned: dict | None = None) -> list[dict]:
    """Rows of the benchmark: {"label", "method", "models", "decode"}; "single" becomes one
    row per member (that member alone), every other method one row over all members.
    tuned: {task: AdaFuse settings} (the `tune` command's choice) adds the row "adafuse
    (tuned)", whose settings depend on the task (row["decode_by_task"])."""
    out = []
    for m in methods:
        if m == "single":
            out += [{"label": f"single: {x}", "method": "single", "models": [x], "decode": {}} for x in models]
        else:
            out.append({"label": m, "method": m, "models": list(models), "decode": {}})
    if tuned:
        out.append({"label": TUNED, "method": "adafuse", "models": list(models), "decode": {},
                    "decode_by_task": {t: dict(d) for t, d in tuned.items()}})
    return out


def row_decode(row: dict, task: str) -> dict | None:
    """A benchmark row's decode options for one task; None where the row has no run for it
    (the tuned row on a task that was not tuned: its cell stays empty, not the defaults)."""
    if "decode_by_task" in row:
        return row["decode_by_task"].get(task)
    return row["decode"]


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


# ---------------------------------------------------------------- run directories


@dataclass
class Run:
    path: Path
    config: dict
    results: dict
    records: list = field(repr=False, default_factory=list)

    @property
    def task(self) -> str:
        return self.config["task"]


def canonical_decode(decode: dict | None) -> dict:
    """decode options minus those equal to DecodeConfig's defaults, sorted: the same run
    asked for in two notebooks gets the same directory."""
    from .decoding import DecodeConfig
    defaults = DecodeConfig().to_dict()
    out = {}
    for k, v in sorted((decode or {}).items()):
        if isinstance(v, list):
            v = tuple(v)
        if k in defaults and defaults[k] == v:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def run_config(task: str, models: str | Sequence[str], method: str = "adafuse", decode: dict | None = None,
               **run_kw):
    """A runs.RunConfig with canonical decode options."""
    from .runs import RunConfig
    return RunConfig(task=task, models=models, method=method, decode=canonical_decode(decode), **run_kw)


def run_dir(runs_dir, cfg) -> Path:
    """runs_dir/<task>/<method>[_<option><value>...]-<hash of the config>."""
    from .runs import IGNORED_KEYS
    d = {k: v for k, v in cfg.to_dict().items() if k not in IGNORED_KEYS}
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    opts = "".join(f"_{k}{v}" for k, v in sorted(cfg.decode.items()) if not isinstance(v, (list, dict)))
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in f"{cfg.method}{opts}")[:60]
    return Path(runs_dir) / cfg.task / f"{slug}-{h}"


def load_run(path) -> Run | None:
    """A finished run directory (config.json, results.json, samples.jsonl), or None."""
    from .runs import CONFIG, RESULTS, SAMPLES, read_samples
    path = Path(path)
    if not (path / RESULTS).exists() or not (path / CONFIG).exists():
        return None
    results = json.loads((path / RESULTS).read_text())
    return Run(path, json.loads((path / CONFIG).read_text()), results, read_samples(path / SAMPLES))


# Plan mode (`figures --plan`): ensure_run appends each missing run's config to the JSONL
# file named here and decodes nothing, so every run of a figure set can first be listed and
# then decoded by several workers at once (figures --decode).
PLAN_ENV = "ADAFUSE_PLAN"


def finished_run(path) -> Run | None:
    """The run directory at path if it holds every example of its run, else None."""
    have = load_run(path)
    return have if have is not None and have.results.get("n_examples") == len(have.records) else None


def ensure_run(cfg, runs_dir, launch: bool = True, progress: bool = False, log=print) -> Run | None:
    """The saved run for `cfg` under runs_dir; decode it first when missing and `launch`.
    Returns None for a missing run that may not be launched (or is only planned)."""
    from .runs import run
    path = run_dir(runs_dir, cfg)
    have = finished_run(path)
    if have is not None:
        log(f"found     {path}")
        return have
    if os.environ.get(PLAN_ENV):
        with open(os.environ[PLAN_ENV], "a") as f:
            f.write(json.dumps(cfg.to_dict(), sort_keys=True) + "\n")
        log(f"planned   {path}")
        return None
    if not launch:
        log(f"missing   {path} (launch=False)")
        return None
    t = time.perf_counter()
    run(cfg, path, progress=progress)
    log(f"decoded   {path} ({time.perf_counter() - t:.1f} s)")
    return load_run(path)


def find_runs(runs_dir) -> list[Run]:
    """Every finished run directory under runs_dir (any depth), sorted by path."""
    from .runs import RESULTS
    out = []
    for p in sorted(Path(runs_dir).rglob(RESULTS)):
        r = load_run(p.parent)
        if r is not None:
            out.append(r)
    return out


# ---------------------------------------------------------------- tables


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


# ---------------------------------------------------------------- notebook parameters


@dataclass(frozen=True)
class NotebookParams:
    """The parameters of every notebook, validated in the cell after the parameters cell.

    Unknown names are refused (papermill only warns about them); comma-separated
    strings become tuples."""
    models: tuple = ()
    task: str | None = None
    tasks: tuple = ()
    methods: tuple = ()
    source: str = "auto"
    data_dir: str | None = None
    limit: int | None = None
    limits: dict = field(default_factory=dict)  # per task, replaces limit (None: every example)
    half: str | None = None  # None: every example; "tune" / "report": that half (runs.select_half)
    tuned: dict = field(default_factory=dict)  # per task, AdaFuse settings chosen by the tune command
    dtype: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    theta: float = 0.7
    thetas: tuple = ()
    M: int = 3
    B: int = 3
    criterion: str = "margin"
    B_values: tuple = ()
    branch_selects: tuple = ()
    fixed_span: int | None = None
    question: int = 0
    n_bins: int = 10
    n_boot: int = 1000
    launch: bool = True
    runs_dir: str = "runs/notebooks/runs"
    out_dir: str = "runs/notebooks/out"
    fig_dir: str = "figures"

    def __post_init__(self):
        from .decoding import METHODS
        from .decoding.config import BRANCH_SELECT, CRITERIA
        from .tasks import get_task

        def tup(name, cast=str):
            v = getattr(self, name)
            if isinstance(v, str):
                v = [x.strip() for x in v.split(",") if x.strip()]
            object.__setattr__(self, name, tuple(cast(x) for x in (v or ())))

        for name in ("models", "tasks", "methods", "branch_selects"):
            tup(name)
        tup("thetas", float)
        tup("B_values", int)

        def need(ok, msg):
            if not ok:
                raise ValueError(f"parameter {msg}")
        for t in self.tasks + ((self.task,) if self.task else ()):
            get_task(t)  # raises with the closest name
        for m in self.methods:
            need(m in METHODS, f"methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
        need(self.source in ("auto", "local", "hub", "sample"), f"source: {self.source!r} is not auto/local/hub/sample")
        need(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        for t, n in dict(self.limits or {}).items():
            get_task(t)
            need(n is None or (isinstance(n, int) and n >= 1), f"limits[{t!r}] must be None or >= 1, got {n!r}")
        from .runs import HALVES, UsageError, _dtype
        need(self.half is None or self.half in HALVES, f"half must be None, tune or report, got {self.half!r}")
        for t in dict(self.tuned or {}):
            get_task(t)
        try:
            _dtype(self.dtype)
        except UsageError as e:
            raise ValueError(f"parameter dtype: {e}") from e
        need(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")
        need(all(0.0 <= t <= 1.0 for t in self.thetas + (self.theta,)), "theta(s) must be in [0, 1]")
        need(self.M >= 1 and self.B >= 1 and all(b >= 1 for b in self.B_values), "M, B and B_values must be >= 1")
        need(self.criterion in CRITERIA, f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        need(all(b in BRANCH_SELECT for b in self.branch_selects), f"branch_selects must be in {BRANCH_SELECT}")
        need(self.fixed_span is None or self.fixed_span >= 1, "fixed_span must be >= 1")
        need(self.n_bins >= 1 and self.n_boot >= 1, "n_bins and n_boot must be >= 1")

    @classmethod
    def from_dict(cls, values: dict) -> "NotebookParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            import difflib
            hints = [f"{u!r}" + (f" (did you mean {difflib.get_close_matches(u, names, 1)[0]!r}?)"
                                 if difflib.get_close_matches(u, names, 1) else "") for u in unknown]
            raise ValueError(f"unknown notebook parameter(s): {', '.join(hints)}")
        return cls(**values)

    def run_kw(self, task: str | None = None) -> dict:
        """The RunConfig options shared by every run a notebook asks for (for `task`: its own limit)."""
        limit = self.limits[task] if task in (self.limits or {}) else self.limit
        return {"limit": limit, "source": self.source, "data_dir": self.data_dir, "batch_size": self.batch_size,
                "seed": self.seed, "max_new_tokens": self.max_new_tokens, "device": self.device, "dtype": self.dtype,
                "half": self.half}

    @property
    def torch_dtype(self):
        from .runs import _dtype
        return _dtype(self.dtype)

    def dirs(self) -> tuple[Path, Path, Path]:
        """(runs_dir, out_dir, fig_dir); out_dir and fig_dir are created (runs_dir when a run is)."""
        runs, out, figs = (Path(p) for p in (self.runs_dir, self.out_dir, self.fig_dir))
        out.mkdir(parents=True, exist_ok=True)
        figs.mkdir(parents=True, exist_ok=True)
        return runs, out, figs


def write_summary(out_dir, summary: dict, name: str = "summary.json") -> Path:
    """The numbers a notebook records, as stable JSON (NaN becomes null)."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return None if not math.isfinite(float(x)) else round(float(x), 6)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        return x
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(summary), indent=2, sort_keys=True) + "\n")
    return path
