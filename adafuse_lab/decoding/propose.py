"""Each member's proposals for one round (method.md §1, step 1).

Phase 1, look-ahead: all prompts decode greedily as one batch. At the first token
of each word the member reads its confidence; confident, it commits the word and
goes on (up to M words); uncertain, it stops there and marks a branch point.
Phase 2, branches: every branch point becomes `pool` batch rows (copies of its
cache), one per top first token, each completed greedily to the end of the word;
a selector keeps B of them. The look-ahead tokens are then dropped from the
committed cache, which is exactly as it was before the round.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .criteria import Threshold, confidences
from .state import Member
from .words import starts_new_word


@dataclass
class Proposal:
    texts: list[str]            # candidate continuations: the greedy span, or one per kept branch
    eos: list[bool]             # does the candidate end the answer
    margin: list[float] = field(default_factory=list)   # at each word start this round
    entropy: list[float] = field(default_factory=list)  # normalised confidence 1 - H/log V
    conf: list[float] = field(default_factory=list)     # the criterion's value
    theta: list[float] = field(default_factory=list)    # the threshold it was compared with
    words: int = 0              # words committed before stopping or branching
    branched: bool = False
    tokens: int = 0             # tokens this member decoded for the prompt (look-ahead + branches)
    forwards: int = 0           # forward passes that carried this prompt


@dataclass
class _Row:
    toks: list = field(default_factory=list)
    text: str = ""
    word: str = ""
    word_tokens: int = 0
    words: int = 0
    done: bool = False
    eos: bool = False
    branch: tuple | None = None   # (token ids, log-probs) of the first tokens to branch on
    lp: float = 0.0               # log-probability of the decoded tokens (branches)
    target: int = 0               # branches: stop once this many words are complete
    base: list = field(default_factory=list)  # branches: the look-ahead tokens before the branch
    base_text: str = ""           # branches: their text
    rank: int = 0                 # branches: rank of the first token
    ready: list = field(default_factory=list)  # branch points: branches complete without decoding (EOS)


def _gate(cfg, confident: bool, word_index: int, fixed: bool) -> str:
    """What to do at a word start: 'commit', 'branch' or 'stop'."""
    if fixed:  # fixed spans: only the first word may branch; afterwards words are committed regardless
        return "branch" if (word_index == 0 and not confident and cfg.B > 1) else "commit"
    if cfg.compat and cfg.B > 1:  # the official code's gating
        if word_index == 1:
            return "commit" if confident else "stop"
        if word_index >= 2:
            return "branch"
    return "commit" if confident else "branch"


@torch.inference_mode()
def propose(member: Member, cfg, threshold: Threshold, budgets: list[int], answer_words: list[int],
            span_words: int | None = None) -> list[Proposal]:
    """Proposals of one member for every prompt row. `budgets[p]`: tokens it may still decode."""
    P = len(member.ids)
    fixed = span_words is not None
    max_words = span_words or cfg.M
    pool = cfg.B if cfg.branch_select == "topk" else cfg.B * cfg.branch_pool
    props = [Proposal([], []) for _ in range(P)]
    rows = [_Row() for _ in range(P)]
    width0 = member.kv.width
    logits = member.last_logits
    while True:
        conf = confidences(logits)
        k = min(max(pool, 1), logits.shape[-1])
        top_lp, top_ids = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
        host = torch.stack([conf[cfg.criterion], conf["margin"], conf["entropy"]], 1).tolist()
        top_ids, top_lp = top_ids.tolist(), top_lp.tolist()
        feed = {}
        for p, st in enumerate(rows):
            if st.done:
                continue
            t = top_ids[p][0]
            is_eos = t in member.eos
            piece, head, word = ("", st.text, st.word) if is_eos else \
                _extend(st.text, st.word, member.text_after(p, st.toks + [t]))
            new_word = not st.toks or is_eos or st.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece)
            if new_word:
                if st.toks:
                    st.words += 1
                if st.words >= max_words or len(st.toks) >= budgets[p]:
                    st.done = True
                    continue
                c, margin, ent = host[p]
                theta = threshold(p, answer_words[p] + st.words)
                threshold.observe(p, c)
                pr = props[p]
                pr.conf.append(c), pr.margin.append(margin), pr.entropy.append(ent), pr.theta.append(theta)
                action = _gate(cfg, c >= theta, st.words, fixed)
                if action != "commit":
                    st.done = True
                    if action == "branch":
                        st.branch = (top_ids[p], top_lp[p])
                    continue
                if is_eos:
                    st.done = st.eos = True
                    continue
                st.word, st.word_tokens = piece, 1
            else:
                if len(st.toks) >= budgets[p]:
                    st.done = True
                    continue
                st.word = word + piece
                st.word_tokens += 1
            st.toks.append(t)
            st.text = head + piece
            feed[p] = t
        if not feed:
            break
        logits = step(member, feed, P)
        for p in feed:
            props[p].forwards += 1
    branch_rows = [p for p, st in enumerate(rows) if st.branch]
    branches = _branch(member, cfg, rows, branch_rows, budgets, max_words if fixed else None, props) if branch_rows else {}
    member.kv.truncate(width0)
    for p, st in enumerate(rows):
        pr = props[p]
        pr.words = st.words
        pr.tokens += len(st.toks)
        if p in branches:
            pr.branched = True
            for b in branches[p]:
                pr.texts.append(st.text + b.text)
                pr.eos.append(b.eos)
        else:
            pr.texts.append(st.text)
            pr.eos.append(st.eos)
    return props


def _extend(text: str, word: str, full: str) -> tuple[str, str, str]:
    """A token took the decoded text from `text` to `full`: (its piece, text and word cut back to
    what it left unchanged). Usually full = text + piece, but a token that completes a multi-byte
    character turns the "\ufffd" its first bytes decoded to into that character."""
    n = len(os.path.commonprefix([text, full]))
    return full[n:], text[:n], word[:max(0, len(word) - (len(text) - n))]


def step(member: Member, feed: dict[int, int], rows: int) -> torch.Tensor:
    """One batched forward of one token per row (a pad, masked, for rows with nothing to feed)."""
    dev = member.s.device
    ids = torch.full((rows, 1), member.s.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, 1), dtype=torch.long)
    for p, t in feed.items():
        ids[p, 0], mask[p, 0] = t, 1
    member.forwards += 1
    return member.kv.forward(member.s.model, ids.to(dev), mask.to(dev))[:, -1]


def _branch(member, cfg, rows, branch_rows, budgets, fixed_words, props):
    """Complete every branch point's top first tokens greedily to the end of the word
    (fixed spans: to the span length), as batch rows over copies of the cache."""
    from .select import select_branches
    origin, states = [], []
    for p in branch_rows:
        st = rows[p]
        ids, lps = st.branch
        for t, lp in zip(ids, lps):
            origin.append(p)
            b = _Row(toks=[t], words=st.words, lp=lp, target=fixed_words or st.words + 1, base=st.toks)
            if t in member.eos:
                b.done = b.eos = True
                b.toks = []
            else:
                b.text = b.word = member.text_after(p, st.toks + [t])[len(st.text):]
                b.word_tokens = 1
            states.append(b)
    dev = member.s.device
    kv = member.kv.select(torch.tensor(origin, device=dev))
    first = [b.toks[0] if b.toks else member.s.pad_token_id for b in states]
    feed = {i: t for i, (t, b) in enumerate(zip(first, states)) if not b.done}
    main_kv, member.kv = member.kv, kv  # step works on member.kv
    try:
        while feed:
            logits = step(member, feed, len(states))
            for i in feed:
                props[origin[i]].forwards += 1
            lps = torch.log_softmax(logits.float(), -1)
            best_lp, best = lps.max(-1)
            best, best_lp = best.tolist(), best_lp.tolist()
            feed = {}
            for i, b in enumerate(states):
                if b.done:
                    continue
                p, t = origin[i], best[i]
                if t in member.eos:
                    b.words += 1
                    b.done = b.eos = True
                    continue
                full = member.text_after(p, b.base + b.toks + [t])
                base = rows[p].text
                piece, head, word = _extend(base + b.text, b.word, full)
                if b.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece):
                    b.words += 1
                    if b.words >= b.target:
                        b.done = True
                        continue
                    b.word, b.word_tokens = piece, 1
                else:
                    b.word = word + piece
                    b.word_tokens += 1
                if len(rows[p].toks) + len(b.toks) >= budgets[p]:
                    b.done = True
                    continue
                b.toks.append(t)
                b.text = head[len(base):] + piece
                b.lp += best_lp[i]
                feed[i] = t
    finally:
        member.kv = main_kv
    for i, b in enumerate(states):
        props[origin[i]].tokens += len(b.toks)
    grouped: dict[int, list] = {}
    for i, b in enumerate(states):
        grouped.setdefault(origin[i], []).append(b)
    return {p: select_branches(member, cfg, bs) for p, bs in grouped.items()}
