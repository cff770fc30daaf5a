"""Token-level ensembles (UniTE, GaC): each step chooses one token *string* per prompt and
appends that text to every member, each re-tokenizing it at the boundary (a score stream
that is committed as soon as it is fed: the same forward gives the next logits)."""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import torch

from ..pieces import piece_table
from ..runtime.member import on_device
from .batch import STEP, Batch

EOS = "\x00<eos>"  # the union's name for "end of text", whatever each member's EOS ids are


def _text_of(session, token: int) -> str | None:
    if token in session.eos_token_ids:
        return EOS
    table = piece_table(session)
    t = table[token] if table is not None else session.decode([token])
    return None if (not t or "\ufffd" in t) else t   # partial UTF-8 bytes have no string of their own


def _commit_strings(runtimes: list, batch: Batch, chosen: dict[int, str]) -> Iterator:
    """Finish the prompts that chose EOS; append every other prompt's string to every member."""
    for p, c in chosen.items():
        if c == EOS:
            batch.append(p, "", True, runtimes[0].m.answer_tokens(p))
    going = {p: c for p, c in chosen.items() if c != EOS}
    for k, rt in enumerate(runtimes):
        rt.score_streams([(p, 0, text, False, (), False) for p, text in going.items()])
        rt.restructure()
        rt.forward()
        rt.commit_many([(p, 0) for p in going])
        for p in going:
            batch.add_forwards(k, p, 1)
    for p, text in going.items():
        batch.append(p, text, False, runtimes[0].m.answer_tokens(p))
    yield from _finish(runtimes, batch, list(chosen))
    yield STEP


def _finish(runtimes, batch: Batch, rows: list[int]) -> Iterator:
    ended = [p for p in rows if batch.done[p]]
    for rt in runtimes:
        for p in ended:
            rt.end_prompt(p)
        rt.restructure()
        rt.drop_prompts(ended)
    for p in ended:
        yield batch.output(p, [rt.m.answer_tokens(p) for rt in runtimes])


def unite_rounds(runtimes: list, batch: Batch, cfg) -> Iterator:
    """UniTE: union of each member's top-k token strings; a member scores a string it did not
    propose by its own first token of that string (an ending: by all of its EOS ids);
    per-member softmax over the union, average, argmax."""
    known = [{} for _ in runtimes]
    while live := batch.live():
        probs = [torch.softmax(rt.m.last_logits.float(), -1) for rt in runtimes]
        tops = [p.topk(min(cfg.unite_k, p.shape[-1]), -1).indices.tolist() for p in probs]
        unions = {}
        for p in live:
            union: dict[str, None] = {}
            for rt, top in zip(runtimes, tops):
                for t in top[p]:
                    s = _text_of(rt.m.s, t)
                    if s is not None:
                        union.setdefault(s)
            unions[p] = list(union)
        # every prompt's union at once: one gather and one copy to the host per member
        rows = [p for p, strings in unions.items() for _ in strings]
        sizes = [len(strings) for strings in unions.values()]
        avg = torch.zeros(len(rows))
        flat = [s for strings in unions.values() for s in strings]
        for rt, pr, kn in zip(runtimes, probs, known):
            r = on_device(rows, pr.device, torch.long)
            x = pr[r, on_device(_first_ids(rt.m.s, flat, kn), pr.device, torch.long)]
            ending = on_device([s == EOS for s in flat], pr.device, torch.bool)
            x = torch.where(ending, pr.index_select(1, rt.m.eos_t).sum(-1)[r], x).cpu()
            avg += torch.cat([part / part.sum().clamp_min(1e-30) for part in x.split(sizes)])
        chosen = {}
        for (p, strings), part in zip(unions.items(), avg.split(sizes)):
            chosen[p] = strings[int(part.argmax())] if strings else EOS
        yield from _commit_strings(runtimes, batch, chosen)


def _first_ids(session, texts: list[str], known: dict) -> list[int]:
    """A member's first token of each string, which it may not have proposed (UniTE's rule);
    `known` keeps the strings already encoded in this batch, the new ones take one tokenizer call."""
    new = list(dict.fromkeys(t for t in texts if t not in known))
    if new:
        for text, ids in zip(new, session.encode_many(new)):
            known[text] = (ids or [session.pad_token_id])[0]
    return [known[t] for t in texts]


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


def gac_rounds(runtimes: list, batch: Batch, cfg) -> Iterator:
    """GaC: every member's full next-token distribution mapped onto the union vocabulary by
    token string and averaged (all EOS ids land on one string); with gac_threshold, only
    when the first member is unsure."""
    strings, maps = _union_vocab(tuple(rt.m.s for rt in runtimes))
    dev = runtimes[0].m.s.device
    while live := batch.live():
        total = torch.zeros(len(batch.idx), len(strings), device=dev)
        for rt, mp in zip(runtimes, maps):
            pr = torch.softmax(rt.m.last_logits.float(), -1).to(dev)
            ok = mp >= 0
            total.index_add_(1, mp.to(dev)[ok], pr[:, ok.to(pr.device)])
        best = total.argmax(-1).tolist()
        chosen = {p: strings[best[p]] for p in live}
        if cfg.gac_threshold is not None:
            conf, own = torch.softmax(runtimes[0].m.last_logits.float(), -1).max(-1)
            conf, own = conf.tolist(), own.tolist()
            for p in live:
                s = _text_of(runtimes[0].m.s, own[p])
                if conf[p] >= cfg.gac_threshold and s is not None:
                    chosen[p] = s
        yield from _commit_strings(runtimes, batch, chosen)
