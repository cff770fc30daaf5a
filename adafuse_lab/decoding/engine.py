"""The round loop shared by every method: propose -> union -> score -> select -> commit -> stop.

Prompts are decoded in batches of `cfg.batch_size`; inside a batch rows progress
raggedly and finished rows are dropped from every member's cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence


from .config import DecodeConfig
from .propose import step
from .state import Member

StopFn = Callable[[str], "int | None"]


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


class Batch:
    """Bookkeeping for the rows of one batch: which prompt each row is, and its answer so far."""

    def __init__(self, indices: list[int], members: list[Member], cfg: DecodeConfig, stop: StopFn):
        self.idx = list(indices)
        self.members, self.cfg, self.stop = members, cfg, stop
        self.answers = [""] * len(indices)
        self.traces: list[list] = [[] for _ in indices]
        self.stats = [{"rounds": 0, "eos": False, "stopped_by": None} for _ in indices]

    def append(self, row: int, text: str, eos: bool) -> bool:
        """Add committed text to a row's answer; True when the row is finished."""
        self.answers[row] += text
        st = self.stats[row]
        st["rounds"] += 1
        cut = self.stop(self.answers[row])
        if cut is not None:
            self.answers[row] = self.answers[row][:cut]
            st["stopped_by"] = "stop"
        elif eos:
            st["stopped_by"], st["eos"] = "eos", True
        elif self.members[0].answer_tokens(row) >= self.cfg.max_new_tokens:
            st["stopped_by"] = "budget"
        return st["stopped_by"] is not None

    def output(self, r: int) -> DecodeOutput:
        st = self.stats[r]
        st["tokens"] = [m.answer_tokens(r) for m in self.members]
        trace = self.traces[r] if self.cfg.trace and self.traces[r] else None
        return DecodeOutput(self.answers[r], st, trace)

    def finish(self, finished: list[bool]) -> Iterator[tuple[int, DecodeOutput]]:
        """Yield finished rows and drop them from every member."""
        keep = [r for r, f in enumerate(finished) if not f]
        for r, f in enumerate(finished):
            if f:
                yield self.idx[r], self.output(r)
        for m in self.members:
            m.keep(keep)
        self.idx = [self.idx[r] for r in keep]
        self.answers = [self.answers[r] for r in keep]
        self.traces = [self.traces[r] for r in keep]
        self.stats = [self.stats[r] for r in keep]

    def add_forwards(self, k: int, row: int, n: int) -> None:
        fw = self.stats[row].setdefault("forwards", [0] * len(self.members))
        fw[k] += n


def greedy_rounds(batch: Batch, k: int) -> Iterator:
    """Plain greedy decoding of member k (the single-model baseline), one token per step."""
    m = batch.members[k]
    while batch.idx:
        nxt = m.last_logits.argmax(-1).tolist()
        finished, feed = [], {}
        for r, t in enumerate(nxt):
            eos = t in m.eos
            if not eos:
                m.ids[r].append(t)
                feed[r] = t
            batch.answers[r] = m.text_after_ids(m.ids[r][: m.prompt_len[r]], m.ids[r][m.prompt_len[r]:])
            finished.append(batch.append(r, "", eos))
            batch.stats[r]["rounds"] = m.answer_tokens(r)
        live = {r: t for r, t in feed.items() if not finished[r]}
        if live:
            col = m.kv.width
            m.last_logits = step(m, live, len(nxt)).float()
            for r in live:
                m.cols[r].append(col)
                batch.add_forwards(k, r, 1)
        yield from batch.finish(finished)
