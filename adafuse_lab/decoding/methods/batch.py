"""What every method shares: a batch's answers, stop rule, stats and traces."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

StopFn = Callable[[str], "int | None"]


# What every method's rounds yield after launching a step's forwards: there another batch may
# take its turn (decoding.batches_in_flight).
STEP = None


@dataclass
class DecodeOutput:
    text: str                                   # the continuation after the prompt
    stats: dict = field(default_factory=dict)   # rounds, tokens and forward passes per member, ...
    trace: list | None = None                   # per-round record (AdaFuse and span methods)


def make_stop(stop: StopFn | Sequence[str] | None) -> StopFn:
    """A stop rule from a function (text -> cut index or None) or a list of stop strings."""
    if stop is None:
        return lambda text: None
    if callable(stop):
        return stop
    strings = list(stop)

    def cut(text: str):
        hits = [text.find(s) for s in strings if s in text]
        return min(hits) if hits else None
    return cut


# The official code ends an answer before any "<" (its end tokens' text), "note:" or "question:".
_OFFICIAL_CUT = re.compile(r"\bquestion\s*:|\bnote\s*:|<", re.IGNORECASE)


def official_stop(stop: StopFn) -> StopFn:
    """`stop`, and the official code's cut, whichever comes first (official_text)."""
    def cut(text: str):
        found = _OFFICIAL_CUT.search(text)
        hits = [i for i in (stop(text), found.start() if found else None) if i is not None]
        return min(hits) if hits else None
    return cut


class Batch:
    """The prompts of one batch (fixed rows; a finished row stays, marked done)."""

    def __init__(self, indices: list[int], cfg, stop: StopFn, n_members: int):
        self.idx = list(indices)
        self.cfg, self.stop = cfg, stop
        P = len(indices)
        self.answers = [""] * P
        self.done = [False] * P
        self.traces: list[list] = [[] for _ in range(P)]
        self.stats = [{"rounds": 0, "eos": False, "stopped_by": None, "forwards": [0] * n_members}
                      for _ in range(P)]

    def live(self) -> list[int]:
        return [p for p, d in enumerate(self.done) if not d]

    def append(self, p: int, text: str, eos: bool, tokens: int, max_rounds: int = 0) -> bool:
        """Add committed text to a prompt's answer (`tokens`: the answer's length in the first
        member's tokens, for the budget; `max_rounds`: a cap on rounds, 0 for none); True when
        the prompt is finished."""
        self.answers[p] += text
        st = self.stats[p]
        st["rounds"] += 1
        cut = self.stop(self.answers[p])
        if cut is not None:
            self.answers[p] = self.answers[p][:cut]
            st["stopped_by"] = "stop"
        elif eos:
            st["stopped_by"], st["eos"] = "eos", True
        elif tokens >= self.cfg.max_new_tokens:
            st["stopped_by"] = "budget"
        elif max_rounds and st["rounds"] >= max_rounds:
            st["stopped_by"] = "rounds"
        self.done[p] = st["stopped_by"] is not None
        return self.done[p]

    def output(self, p: int, tokens: list[int]) -> tuple[int, DecodeOutput]:
        st = self.stats[p]
        st["tokens"] = tokens
        trace = self.traces[p] if self.cfg.trace and self.traces[p] else None
        return self.idx[p], DecodeOutput(self.answers[p], st, trace)

    def add_forwards(self, k: int, p: int, n: int) -> None:
        self.stats[p]["forwards"][k] += n
