"""Choosing: which branches a member keeps, and which candidate wins a round."""
from __future__ import annotations

import math

import torch


def select_branches(member, cfg, branches: list) -> list:
    """Keep B of a branch point's completed branches (given in first-token probability order).

    topk: the first B. distinct: skip a branch whose word repeats one already kept.
    semantic: greedy maximal-marginal-relevance, log-probability + lambda * (1 - cosine)
    to the nearest kept branch, with the member's input embeddings mean-pooled over
    the branch's tokens.
    """
    if cfg.branch_select == "topk":
        return branches[: cfg.B]
    if cfg.branch_select == "distinct":
        kept, seen = [], set()
        for b in branches:
            key = (b.text.strip(), b.eos)
            if key not in seen:
                seen.add(key)
                kept.append(b)
        return kept[: cfg.B]
    emb = member.s.model.get_input_embeddings().weight
    vecs = []
    for b in branches:
        ids = b.toks or sorted(member.eos)  # an ending: all of the member's EOS ids, as when scored
        vecs.append(emb[torch.tensor(ids, device=emb.device)].float().mean(0))
    vecs = torch.nn.functional.normalize(torch.stack(vecs), dim=-1)
    kept = [0]
    while len(kept) < min(cfg.B, len(branches)):
        best, best_score = None, -math.inf
        for i, b in enumerate(branches):
            if i in kept or any(branches[j].text.strip() == b.text.strip() and branches[j].eos == b.eos for j in kept):
                continue
            dist = 1.0 - float((vecs[i] @ vecs[kept].T).max())
            score = b.lp + cfg.diversity_lambda * dist
            if score > best_score:
                best, best_score = i, score
        if best is None:
            break
        kept.append(best)
    return [branches[i] for i in kept]


def combine_scores(nll: list[list[float]], cfg) -> list[float]:
    """Combine per-member scores of each candidate: nll[k][c] is member k's mean NLL of candidate c.

    mean (paper): weighted mean of the finite mean NLLs. ppl (Cool-Fusion): weighted
    mean of the perplexities exp(NLL). The outlier filter (defined but never called
    in the official code) drops each candidate's highest and lowest member score
    when max/min exceeds the ratio, with three or more members.
    """
    K = len(nll)
    weights = list(cfg.weights) if cfg.weights is not None else [1.0] * K
    if len(weights) != K:
        raise ValueError(f"{len(weights)} weights given for {K} members")
    out = []
    for c in range(len(nll[0]) if nll else 0):
        vals = [(nll[k][c], weights[k]) for k in range(K) if math.isfinite(nll[k][c])]
        if cfg.combine == "ppl":
            vals = [(math.exp(min(v, 700.0)), w) for v, w in vals]
        if cfg.outlier_filter and len(vals) >= 3:
            lo, hi = min(v for v, _ in vals), max(v for v, _ in vals)
            if lo > 0 and hi / lo > cfg.outlier_ratio:
                order = sorted(range(len(vals)), key=lambda i: vals[i][0])
                vals = [vals[i] for i in order[1:-1]]
        total = sum(w for _, w in vals)
        out.append(sum(v * w for v, w in vals) / total if vals and total > 0 else math.inf)
    return out


def pick(scores: list[float]) -> int:
    """Lowest combined score wins; ties go to the earliest candidate in union order
    (members in the order given, each member's greedy span before its branches)."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))
