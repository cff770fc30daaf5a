"""Statistics over runs: metric keys, bootstrap intervals, AUROC and reliability.

Scores come in report units: percent for accuracies, BLEU / chrF points for translation.
``metric_keys`` names each task's paper metric, its strict metric and the per-example key;
``score_ci`` and ``paired_diff`` bootstrap them over a run's records (samples.jsonl).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .traces import word_rows


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


def headline_key(task_name: str, results: dict | None = None) -> str:
    """The paper's metric of a task; spBLEU falls back to BLEU (13a) when it was not computed."""
    keys = metric_keys(task_name)
    if keys["paper"] == "spbleu" and ((results or {}).get("metrics") or {}).get("spbleu") is None:
        return keys["paper_fallback"]
    return keys["paper"]


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


def diff_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Unpaired bootstrap of mean(a) - mean(b) (two different sets of examples, e.g. two tasks)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    boot = a[rng.integers(0, a.size, (n, a.size))].mean(1) - b[rng.integers(0, b.size, (n, b.size))].mean(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi)}


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for the positive `labels`, by the rank
    (Mann-Whitney) formula with mid-ranks for ties; NaN when a class is empty.
    To ask "does LOW confidence predict X", pass scores = -confidence."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"auroc needs one label per score, got {s.size} scores and {y.size} labels")
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
