"""Answer-level methods: one member's greedy answer (single), and rerank of every member's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..pieces import next_piece
from ..select import combine_scores, pick
from .batch import STEP, Batch


@dataclass
class Answer:
    toks: list = field(default_factory=list)
    text: str = ""
    stopped_by: str | None = None


def greedy_answers(runtimes: list, batch: Batch) -> Iterator:
    """Every member writes a greedy answer to every prompt as one look-ahead stream (nothing
    committed), one token per step, until EOS, a stop string or the budget. Yields STEP after
    each step's forwards; returns the answers, per member and prompt (`yield from`).

    The tokens are chosen on the device and the host reads them one forward late: while the
    GPU runs the forward that feeds step t's tokens, the host checks them for stops. A stream
    that stopped at step t thus feeds one token nobody reads; its answer is unchanged."""
    P = len(batch.idx)
    answers = [[Answer() for _ in range(P)] for _ in runtimes]
    for k, rt in enumerate(runtimes):
        for p in range(P):
            rt.main[p].st = answers[k][p]
    while True:
        fed = []
        for k, rt in enumerate(runtimes):
            live = [rt.main[p] for p in range(P) if answers[k][p].stopped_by is None]
            for s in rt.rows:
                s.feed = []
            for s in live:
                s.feed = [0]  # a placeholder: the forward feeds the argmax
            if rt.forward(greedy=True) is not None:
                fed.append((k, rt, live))
        if not fed:
            return answers
        yield STEP
        for k, rt, live in fed:
            for s, t in zip(live, rt.fed.tolist()):
                if _greedy_step(rt, s, t, batch):
                    batch.add_forwards(k, s.p, 1)


def _greedy_step(rt, s, t: int, batch: Batch) -> bool:
    """Token t, fed already, joins s's answer; False when it ends the answer (not counted as fed)."""
    a, m = s.st, rt.m
    if t in m.eos:
        a.stopped_by = "eos"
        return False
    piece, head, _ = next_piece(m, s.p, a.text, "", a.toks, t)
    a.toks.append(t)
    a.text = head + piece
    if batch.stop(a.text) is not None:
        a.stopped_by = "stop"
    elif len(a.toks) >= batch.cfg.max_new_tokens:
        a.stopped_by = "budget"
    return a.stopped_by is None


def single_rounds(runtimes: list, batch: Batch, cfg) -> Iterator:
    """Plain greedy decoding of one member (the single-model baseline)."""
    answers = (yield from greedy_answers(runtimes, batch))[0]
    for p, a in enumerate(answers):
        batch.answers[p] = a.text
        batch.append(p, "", a.stopped_by == "eos", len(a.toks))
        batch.stats[p]["rounds"] = len(a.toks)
        yield batch.output(p, [len(a.toks)])


def rerank_rounds(runtimes: list, batch: Batch, cfg) -> Iterator:
    """Sample-level rerank: each member writes a whole greedy answer; every member scores
    every answer (mean NLL given the prompt); the lowest average wins."""
    answers = yield from greedy_answers(runtimes, batch)
    P = len(batch.idx)
    uniq = [list(dict.fromkeys(a[p].text for a in answers)) for p in range(P)]
    for rt in runtimes:
        # the answer text itself, however it stopped
        rt.score_streams([(p, c, text, False, (), False) for p in range(P) for c, text in enumerate(uniq[p])])
        rt.restructure()
        rt.forward()
    nll = [rt.candidate_nll({p: len(uniq[p]) for p in range(P)}) for rt in runtimes]
    for p in range(P):
        scores = [x[p] for x in nll]
        combined = combine_scores(scores, cfg)
        w = pick(combined)
        batch.answers[p] = uniq[p][w]
        st = batch.stats[p]
        st["candidates"] = [{"text": t, "nll": [x[i] for x in scores], "score": combined[i]}
                            for i, t in enumerate(uniq[p])]
        st["winner"], st["stopped_by"] = w, "rerank"
        for k in range(len(runtimes)):
            batch.add_forwards(k, p, 1)
        yield batch.output(p, [len(a[p].toks) for a in answers])
