"""What a trace says: rows per round, member and word start, and thresholds recomputed.

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

import math
from typing import Iterable, Sequence

import numpy as np

from .decoding.words import split_words


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


def frame(rows: list[dict]):
    """A pandas DataFrame of rows (pandas is imported only here)."""
    import pandas as pd
    return pd.DataFrame(rows)


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
