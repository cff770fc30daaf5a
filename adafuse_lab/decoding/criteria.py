"""Confidence at a word start, and the threshold it is compared with.

Every criterion maps next-token logits to a confidence in [0, 1] where higher is
surer, so one threshold theta serves them all.
"""
from __future__ import annotations

import math

import torch


def confidences(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """margin = p1 - p2 (paper), prob = p1, entropy = 1 - H / log V, per row, from raw logits."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(2, dim=-1).values
    ent = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    return {
        "margin": top[:, 0] - top[:, 1],
        "prob": top[:, 0],
        "entropy": 1.0 - ent / math.log(probs.shape[-1]),
        "H": ent,
    }


class Threshold:
    """Fixed theta, or a dynamic one: a running quantile of this member's last word-start
    confidences (per prompt), plus a term growing with the position in the answer."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.history: dict[int, list[float]] = {}

    def __call__(self, key: int, words_so_far: int) -> float:
        cfg = self.cfg
        if cfg.threshold == "fixed":
            return cfg.theta
        past = self.history.get(key, [])[-cfg.dyn_window:]
        if len(past) < 4:  # too little history: fall back to the fixed theta
            base = cfg.theta
        else:
            base = float(torch.tensor(past).quantile(cfg.dyn_quantile))
        return min(1.0, max(0.0, base + cfg.dyn_position_slope * words_so_far / 100.0))

    def observe(self, key: int, confidence: float) -> None:
        self.history.setdefault(key, []).append(confidence)
