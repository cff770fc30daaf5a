"""AdaFuse rounds with ragged progress: one forward per member per step, for every prompt at once.

A lock-step loop (every prompt proposes, then every prompt branches, then every
prompt is scored) would wait each round for the slowest prompt's look-ahead and the
longest branch word of the batch (it made 8.5x generate's forward calls on an H100,
BENCHMARKS.md). Here each member's cache rows are *streams*:

  main    a prompt's committed text plus this round's look-ahead tokens
  branch  a copy of a main row at its branch point, completing one alternative word
  score   a copy of a main row rolled back to the committed text, reading one candidate

Each step a member decides, for every main and branch stream, what to feed next
(from that row's latest logits), spawns branch and score rows as copies, and runs
one forward over all its rows (a row with nothing to feed gets a masked pad).
When every member's proposal for a prompt is complete, its candidates are scored
in the next forward and the winner's score row becomes the prompt's main row: the
committed cache comes from the scoring pass, with no extra pass to commit.
Logically every prompt follows the rounds of method.md §1, whatever the others do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .criteria import Threshold, confidences
from .pieces import next_piece
from .propose import Proposal, _Row, _gate
from .select import combine_scores, pick, select_branches
from .state import Member, pad_right
from .words import split_words, starts_new_word


@dataclass
class Stream:
    p: int                      # prompt row in the batch
    kind: str                   # main | branch | score
    st: _Row | None = None      # look-ahead (main) or branch state
    feed: list = field(default_factory=list)  # tokens to feed in this step
    plan: tuple | None = None   # score: (new_ids, start, first_scored)
    cand: int = -1              # score: candidate index within the prompt's union
    dead: bool = False


class Streams:
    """One member's rows for a batch of prompts, and the per-prompt committed state (Member)."""

    def __init__(self, member: Member):
        self.m = member
        P = len(member.ids)
        self.rows = [Stream(p, "main", _Row()) for p in range(P)]
        self.last = member.last_logits.clone()   # newest logits of every row
        self.spawn: list[tuple[int, Stream]] = []  # (source row, new stream) copies to make

    def main_row(self, p: int) -> int:
        return next(i for i, s in enumerate(self.rows) if s.p == p and s.kind == "main" and not s.dead)

    def restructure(self) -> None:
        """Drop dead rows and add the spawned copies, in one gather of the cache."""
        if not self.spawn and not any(s.dead for s in self.rows):
            return
        keep = [i for i, s in enumerate(self.rows) if not s.dead]
        src = keep + [i for i, _ in self.spawn]
        index = torch.tensor(src, dtype=torch.long, device=self.m.s.device)
        self.m.kv.keep_rows(index)
        self.last = self.last.index_select(0, index)
        self.rows = [self.rows[i] for i in keep] + [s for _, s in self.spawn]
        self.spawn = []

    def compact(self, slack: int = 256) -> None:
        """Squeeze out columns that are holes, once they are many (rows keep their order)."""
        kv = self.m.kv
        real = kv.mask.sum(1)
        width = int(real.max()) if real.numel() else 0
        if kv.width - width < slack:
            return
        order = torch.sort((kv.mask == 0).to(torch.int8), dim=1, stable=True).indices[:, :width]
        rank = kv.mask.cumsum(1) - 1  # new column of each real column
        for layer in kv.cache.layers:
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        kv.mask = kv.mask.gather(1, order)
        for p in range(len(self.m.ids)):
            if any(s.p == p and s.kind == "main" and not s.dead for s in self.rows):
                r = self.main_row(p)
                self.m.cols[p] = rank[r, torch.tensor(self.m.cols[p], device=rank.device)].tolist()


@torch.inference_mode()
def stream_rounds(batch, cfg, span_words: int | None, score_cfg):
    """AdaFuse (span_words None) or a fixed-span ensemble, with ragged progress across prompts."""
    members = [Streams(m) for m in batch.members]
    K, P = len(members), len(batch.idx)
    fixed = span_words is not None
    max_words = span_words or cfg.M
    pool = cfg.B if cfg.branch_select == "topk" else cfg.B * cfg.branch_pool
    thresholds = [Threshold(cfg) for _ in members]
    props: list[list[Proposal | None]] = [[None] * P for _ in members]
    fwd_round = [[0] * P for _ in members]
    cands: list = [None] * P          # union of candidates while a prompt is being scored
    owners: list = [None] * P
    done = [False] * P
    words_so_far = [0] * P

    def budget(k, p):
        return max(1, cfg.max_new_tokens - members[k].m.answer_tokens(p))

    def new_round(p):
        words_so_far[p] = len(split_words(batch.answers[p]))
        for k in range(K):
            props[k][p] = Proposal([], [])
            fwd_round[k][p] = 0

    for p in range(P):
        new_round(p)

    while not all(done):
        # 1. decisions of main (look-ahead) and branch rows, from each row's newest logits
        for k, ms in enumerate(members):
            m = ms.m
            live = [i for i, s in enumerate(ms.rows) if s.kind in ("main", "branch") and not s.dead
                    and not done[s.p] and cands[s.p] is None and not s.st.done]
            for s in ms.rows:
                s.feed = []
            if not live:
                continue
            index = torch.tensor(live, dtype=torch.long, device=m.s.device)
            logits = ms.last.index_select(0, index)
            conf = confidences(logits)
            lps = torch.log_softmax(logits.float(), -1)
            top_lp, top_ids = lps.topk(min(pool, lps.shape[-1]), dim=-1)
            host = torch.stack([conf[cfg.criterion], conf["margin"], conf["entropy"]], 1).tolist()
            top_ids, top_lp = top_ids.tolist(), top_lp.tolist()
            for j, i in enumerate(live):
                s = ms.rows[i]
                if s.kind == "main":
                    _lookahead(ms, i, s, cfg, top_ids[j], top_lp[j], host[j], thresholds[k], props[k][s.p],
                               words_so_far[s.p], budget(k, s.p), max_words, fixed)
                else:
                    _branch_step(ms, s, cfg, top_ids[j][0], top_lp[j][0], budget(k, s.p))
        # 2. proposals that are complete: a stopped look-ahead whose branches are all done
        for k, ms in enumerate(members):
            for p in range(P):
                if done[p] or cands[p] is not None or props[k][p].texts:
                    continue
                main = ms.rows[ms.main_row(p)]
                if not main.st.done:
                    continue
                branches = [s for s in ms.rows if s.p == p and s.kind == "branch" and not s.dead] + \
                           [s for _, s in ms.spawn if s.p == p and s.kind == "branch"]
                if any(not b.st.done for b in branches):
                    continue
                _finish_proposal(ms, props[k][p], main.st, [b.st for b in branches] + main.st.ready, cfg)
                for b in branches:
                    b.dead = True
                ms.spawn = [(i, s) for i, s in ms.spawn if not (s.p == p and s.kind == "branch")]
        # 3. prompts whose proposals are all in: union, and score rows in every member
        for p in range(P):
            if done[p] or cands[p] is not None or any(not props[k][p].texts for k in range(K)):
                continue
            seen: dict = {}
            for k in range(K):
                for text, eos in zip(props[k][p].texts, props[k][p].eos):
                    seen.setdefault((text, eos), []).append(k)
            cands[p], owners[p] = list(seen), list(seen.values())
            for ms in members:
                r = ms.main_row(p)
                for c, (text, eos) in enumerate(cands[p]):
                    new, keep, first = ms.m.retokenize(p, text, eos)
                    n = len(ms.m.ids[p])
                    start = n if keep == n else keep - 1
                    ms.spawn.append((r, Stream(p, "score", plan=(new, start, first), cand=c, feed=new[start:])))
        # 4. copies and forwards
        for k, ms in enumerate(members):
            n_old = sum(1 for s in ms.rows if not s.dead)
            spawned = list(ms.spawn)
            ms.restructure()
            rows, cuts = [], []  # roll score rows back to the committed text
            for j, (_, s) in enumerate(spawned):
                if s.kind == "score":
                    cols, start = ms.m.cols[s.p], s.plan[1]
                    rows.append(n_old + j)
                    cuts.append(cols[start] if start < len(cols) else cols[-1] + 1)
            if rows:
                kv = ms.m.kv
                dev = kv.mask.device
                r = torch.tensor(rows, dtype=torch.long, device=dev)
                keep = torch.arange(kv.width, device=dev)[None, :] < torch.tensor(cuts, device=dev)[:, None]
                kv.mask[r] = kv.mask[r] * keep
                kv.n_real[r] = kv.mask[r].sum(1)
            feeds = [s.feed for s in ms.rows]
            if not any(feeds):
                continue
            ids, in_mask = pad_right(feeds, ms.m.s.pad_token_id, ms.m.s.device)
            width0 = ms.m.kv.width
            logits = ms.m.kv.forward(ms.m.s.model, ids, in_mask)
            ms.m.forwards += 1
            fed_rows = [i for i, f in enumerate(feeds) if f]
            for p in {ms.rows[i].p for i in fed_rows}:
                fwd_round[k][p] += 1
            last_pos = torch.tensor([len(feeds[i]) - 1 for i in fed_rows], device=logits.device)
            fr = torch.tensor(fed_rows, dtype=torch.long, device=logits.device)
            ms.last[fr] = logits[fr, last_pos].float()
            ms.fed_logits, ms.width0 = logits, width0
        # 5. score the candidates, pick winners, commit them
        finished_now = []
        scores = [_nll_all(ms, cands) for ms in members]
        for p in range(P):
            if done[p] or cands[p] is None:
                continue
            nll = [sc[p] for sc in scores]
            combined = combine_scores(nll, score_cfg)
            w = pick(combined)
            text, is_eos = cands[p][w]
            if cfg.trace:
                batch.traces[p].append({
                    "members": [{"conf": pr[p].conf, "margin": pr[p].margin, "entropy": pr[p].entropy,
                                 "theta": pr[p].theta, "words": pr[p].words, "branched": pr[p].branched,
                                 "tokens": pr[p].tokens, "forwards": fwd_round[k][p]} for k, pr in enumerate(props)],
                    "candidates": [{"text": t, "eos": e, "from": owners[p][c],
                                    "nll": [_finite(x[c]) for x in nll], "score": _finite(combined[c])}
                                   for c, (t, e) in enumerate(cands[p])],
                    "winner": w,
                })
            for k, ms in enumerate(members):
                batch.add_forwards(k, p, fwd_round[k][p])
                _commit(ms, p, w)
            cands[p] = owners[p] = None
            if batch.append(p, text, is_eos):
                done[p] = True
                finished_now.append(p)
                for ms in members:
                    for s in ms.rows:
                        if s.p == p:
                            s.dead = True
            else:
                new_round(p)
        for ms in members:
            ms.compact()
        for p in finished_now:
            yield batch.idx[p], batch.output(p)


def _finite(x):
    return x if math.isfinite(x) else None


def _lookahead(ms: Streams, i: int, s: Stream, cfg, top_ids, top_lp, host, threshold, prop, words_before,
               budget, max_words, fixed) -> None:
    """One look-ahead decision of a main row: commit the word, branch, or stop."""
    m, st, p = ms.m, s.st, s.p
    t = top_ids[0]
    is_eos = t in m.eos
    piece, head, word = ("", st.text, st.word) if is_eos else next_piece(m, p, st.text, st.word, st.toks, t)
    new_word = not st.toks or is_eos or st.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece)
    if new_word:
        if st.toks:
            st.words += 1
        if st.words >= max_words or len(st.toks) >= budget:
            st.done = True
            return
        c, margin, ent = host
        theta = threshold(p, words_before + st.words)
        threshold.observe(p, c)
        prop.conf.append(c), prop.margin.append(margin), prop.entropy.append(ent), prop.theta.append(theta)
        action = _gate(cfg, c >= theta, st.words, fixed)
        if action != "commit":
            st.done = True
            if action == "branch":
                st.branch = (top_ids, top_lp)
                for rank, (bt, blp) in enumerate(zip(top_ids, top_lp)):
                    b = _Row(toks=[bt], words=st.words, lp=blp, target=(max_words if fixed else st.words + 1),
                             base=list(st.toks), base_text=st.text, rank=rank)
                    if bt in m.eos:  # nothing to decode: no row needed
                        b.done = b.eos = True
                        b.toks = []
                        st.ready.append(b)
                        continue
                    b.text = b.word = next_piece(m, p, st.text, "", st.toks, bt)[0]
                    b.word_tokens = 1
                    ms.spawn.append((i, Stream(p, "branch", b, feed=[bt])))
            return
        if is_eos:
            st.done = st.eos = True
            return
        st.word, st.word_tokens = piece, 1
    else:
        if len(st.toks) >= budget:
            st.done = True
            return
        st.word = word + piece
        st.word_tokens += 1
    st.toks.append(t)
    st.text = head + piece
    s.feed = [t]


def _branch_step(ms: Streams, s: Stream, cfg, t: int, lp: float, budget: int) -> None:
    """One greedy step of a branch row, which ends where its word ends."""
    m, b, p = ms.m, s.st, s.p
    if t in m.eos:
        b.words += 1
        b.done = b.eos = True
        return
    piece, head, word = next_piece(m, p, b.base_text + b.text, b.word, b.base + b.toks, t)
    head = head[len(b.base_text):]
    if b.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece):
        b.words += 1
        if b.words >= b.target:
            b.done = True
            return
        b.word, b.word_tokens = piece, 1
    else:
        b.word = word + piece
        b.word_tokens += 1
    if len(b.base) + len(b.toks) >= budget:
        b.done = True
        return
    b.toks.append(t)
    b.text = head + piece
    b.lp += lp
    s.feed = [t]


def _finish_proposal(ms: Streams, prop: Proposal, st: _Row, branches: list, cfg) -> None:
    prop.words = st.words
    prop.tokens = len(st.toks) + sum(len(b.toks) for b in branches)
    if st.branch is not None:
        prop.branched = True
        for b in select_branches(ms.m, cfg, sorted(branches, key=lambda b: b.rank)):
            prop.texts.append(st.text + b.text)
            prop.eos.append(b.eos)
    else:
        prop.texts.append(st.text)
        prop.eos.append(st.eos)


def _nll_all(ms: Streams, cands: list) -> dict[int, list[float]]:
    """Mean token NLL of every candidate scored in the last forward, by prompt, in one gather."""
    logits, m = ms.fed_logits if hasattr(ms, "fed_logits") else None, ms.m
    src_r, src_c, tok, seg, use_last, prompt = [], [], [], [], [], []
    slots: dict[tuple[int, int], int] = {}
    for i, s in enumerate(ms.rows):
        if s.kind != "score" or s.dead:
            continue
        slot = slots.setdefault((s.p, s.cand), len(slots))
        new, start, first = s.plan
        for j in range(first, len(new)):
            prev = j - 1 - start
            use_last.append(prev < 0)
            src_r.append(i)
            src_c.append(max(prev, 0))
            tok.append(new[j])
            seg.append(slot)
            prompt.append(s.p)
    out = {p: [float("nan")] * len(c) for p, c in enumerate(cands) if c is not None}
    if not tok:
        return out
    dev = logits.device
    as_t = lambda x: torch.tensor(x, device=dev)
    t = as_t(tok)
    picked = logits[as_t(src_r), as_t(src_c)].float()
    lp = picked.gather(-1, t[:, None])[:, 0] - torch.logsumexp(picked, -1)
    committed = m.last_logits.index_select(0, as_t(prompt)).float()  # logits after the committed text
    lp_last = committed.gather(-1, t[:, None])[:, 0] - torch.logsumexp(committed, -1)
    lp = torch.where(as_t(use_last), lp_last, lp)
    total = torch.zeros(len(slots), device=dev).index_add_(0, as_t(seg), -lp)
    count = torch.zeros(len(slots), device=dev).index_add_(0, as_t(seg), torch.ones_like(lp))
    means = (total / count.clamp_min(1)).tolist()
    for (p, c), slot in slots.items():
        out[p][c] = means[slot]
    return out


def _commit(ms: Streams, p: int, w: int) -> None:
    """The winner's score row becomes prompt p's main row; the other rows of p die."""
    m = ms.m
    for i, s in enumerate(ms.rows):
        if s.p != p or s.dead:
            continue
        if s.kind == "score" and s.cand == w:
            new, start, _ = s.plan
            m.cols[p] = m.cols[p][:start] + list(range(ms.width0, ms.width0 + len(new) - start))
            m.ids[p] = new
            m.last_logits[p] = ms.last[i]
            s.kind, s.st, s.plan, s.cand = "main", _Row(), None, -1
        else:
            s.dead = True
