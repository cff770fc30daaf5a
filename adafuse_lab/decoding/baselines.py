"""Token-level (UniTE, GaC) and answer-level (rerank) ensembles on the same member state.

Token-level methods choose one token *string* per step and append that text to
every member, each re-tokenizing it at the boundary (Member.score with one text
per row commits it in the same forward).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import torch

from .engine import Batch
from .pieces import piece_table
from .select import combine_scores, pick

EOS = "\x00<eos>"  # the union's name for "end of text", whatever each member's EOS token is


def _text_of(session, token: int) -> str | None:
    if token in session.eos_token_ids:
        return EOS
    table = piece_table(session)
    t = table[token] if table is not None else session.decode([token])
    return None if (not t or "\ufffd" in t) else t   # partial UTF-8 bytes have no string of their own


def _commit_strings(batch: Batch, chosen: list[str]) -> Iterator:
    """Finish the rows that chose EOS, then append each other row's string to every member
    (one in-place forward per member, which also gives the next-token logits)."""
    ended = [c == EOS for c in chosen]
    for r in range(len(chosen)):
        if ended[r]:
            batch.append(r, "", True)
    yield from batch.finish(ended)
    texts = [c for c in chosen if c != EOS]
    if not texts:
        return
    rows = list(range(len(texts)))
    for k, m in enumerate(batch.members):
        m.score(rows, texts, [False] * len(rows), inplace=True).commit(rows)
        for r in rows:
            batch.add_forwards(k, r, 1)
    yield from batch.finish([batch.append(r, t, False) for r, t in enumerate(texts)])


def unite_rounds(batch: Batch, cfg) -> Iterator:
    """UniTE: union of each member's top-k token strings; a member scores a string it did not
    propose by its own first token of that string; per-member softmax over the union,
    average, argmax."""
    members = batch.members
    while batch.idx:
        P = len(batch.idx)
        probs = [torch.softmax(m.last_logits.float(), -1) for m in members]
        tops = [p.topk(min(cfg.unite_k, p.shape[-1]), -1) for p in probs]
        chosen = []
        for r in range(P):
            union: dict[str, None] = {}
            for m, tp in zip(members, tops):
                for t in tp.indices[r].tolist():
                    s = _text_of(m.s, t)
                    if s is not None:
                        union.setdefault(s)
            strings = list(union)
            avg = torch.zeros(len(strings))
            for m, pr in zip(members, probs):
                # a member's probability of a string: of its first token; of EOS: of any of its EOS ids
                ids = [(m.s.encode(s) or [m.s.pad_token_id])[0] for s in strings]
                p = pr[r, torch.tensor(ids, device=pr.device)]
                p = torch.where(torch.tensor([s == EOS for s in strings], device=pr.device),
                                pr[r, m.eos_t].sum(), p).cpu()
                avg += p / p.sum().clamp_min(1e-30)
            chosen.append(strings[int(avg.argmax())] if strings else EOS)
        yield from _commit_strings(batch, chosen)


@lru_cache(maxsize=4)
def _union_vocab(sessions: tuple) -> tuple[list[str], list[torch.Tensor]]:
    """Union of the members' vocabularies by exact token string, and each member's map into it."""
    index: dict[str, int] = {}
    maps = []
    for s in sessions:
        ids = []
        for t in range(s.vocab_size):
            text = _text_of(s, t)
            ids.append(-1 if text is None else index.setdefault(text, len(index)))
        maps.append(torch.tensor(ids, device=s.device))
    return list(index), maps


def gac_rounds(batch: Batch, cfg) -> Iterator:
    """GaC: every member's full next-token distribution mapped onto the union vocabulary by
    token string and averaged; with gac_threshold, only when the first member is unsure."""
    members = batch.members
    strings, maps = _union_vocab(tuple(m.s for m in members))
    dev = members[0].s.device
    while batch.idx:
        P = len(batch.idx)
        total = torch.zeros(P, len(strings), device=dev)
        for m, mp in zip(members, maps):
            pr = torch.softmax(m.last_logits.float(), -1).to(dev)
            ok = mp >= 0
            total.index_add_(1, mp.to(dev)[ok], pr[:, ok.to(pr.device)])
        best = total.argmax(-1).tolist()
        chosen = [strings[b] for b in best]
        if cfg.gac_threshold is not None:
            p0 = torch.softmax(members[0].last_logits.float(), -1)
            conf, own = p0.max(-1)
            for r, (c, t) in enumerate(zip(conf.tolist(), own.tolist())):
                s = _text_of(members[0].s, t)
                if c >= cfg.gac_threshold and s is not None:
                    chosen[r] = s
        yield from _commit_strings(batch, chosen)


def rerank_rounds(batch: Batch, cfg) -> Iterator:
    """Sample-level rerank: each member writes a whole greedy answer; every member scores
    every answer (mean NLL given the prompt); the lowest average wins."""
    from .engine import greedy_rounds
    members = batch.members
    P = len(batch.idx)
    answers = [[None] * len(members) for _ in range(P)]
    for k, m in enumerate(members):
        saved = (m.kv.select(torch.arange(P, device=m.s.device)), [list(x) for x in m.ids],
                 [list(c) for c in m.cols], m.last_logits, list(m.prompt_len))
        solo = Batch(list(range(P)), [m], cfg, batch.stop)
        for r, out in greedy_rounds(solo, 0):
            answers[r][k] = out
        m.kv, m.ids, m.cols, m.last_logits, m.prompt_len = saved
        for r in range(P):
            batch.add_forwards(k, r, sum(answers[r][k].stats.get("forwards", [0])))
    rows, texts, eos, spans = [], [], [], []
    for r in range(P):
        uniq = list(dict.fromkeys(a.text for a in answers[r]))
        spans.append((len(texts), uniq))
        rows += [r] * len(uniq)
        texts += uniq
        eos += [False] * len(uniq)  # score the answer text itself, however it stopped
    scored = [m.score(rows, texts, eos) for m in members]
    finished = []
    for r in range(P):
        off, uniq = spans[r]
        nll = [sc.nll[off:off + len(uniq)] for sc in scored]
        combined = combine_scores(nll, cfg)
        w = pick(combined)
        batch.answers[r] = uniq[w]
        batch.stats[r]["candidates"] = [{"text": t, "nll": [x[i] for x in nll], "score": combined[i]}
                                        for i, t in enumerate(uniq)]
        batch.stats[r]["winner"] = w
        batch.stats[r]["stopped_by"] = "rerank"
        for k in range(len(members)):
            batch.add_forwards(k, r, 1)
        finished.append(True)
    yield from batch.finish(finished)
