"""AdaFuse rounds with ragged progress: one forward per member per step, for every prompt at once.

A lock-step loop (every prompt proposes, then every prompt branches, then every
prompt is scored) would wait each round for the slowest prompt's look-ahead and the
longest branch word of the batch (it made 8.5x generate's forward calls on an H100,
BENCHMARKS.md). Here each member has *streams* of tokens per prompt:

  main    a prompt's committed text plus this round's look-ahead tokens
  branch  the look-ahead up to its branch point, plus one alternative word
  score   the committed text (minus a re-tokenized tail) plus one candidate

Each step a member decides, for every main and branch stream, what to feed next
(from that stream's latest logits), and runs one forward over all streams. All
streams of a prompt live in that prompt's cache row as a token tree: each token's
4-D attention mask lets it read the committed columns and its own stream's columns
only, so a branch or a candidate never copies the prefix. When every member's
proposal for a prompt is complete, its candidates are scored in the next forward
and the winner's columns become the committed text: no extra pass to commit.
Logically every prompt follows the rounds of method.md §1, whatever the others do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import attention
from .criteria import Threshold, confidences
from .pieces import next_piece
from .propose import Proposal, _Row, _gate
from .scoring import token_log_probs
from .select import combine_scores, pick, select_branches
from .columns import ColumnCache, Graphs, bucket, eager_forward
from .state import Member, on_device
from ..session import spans_devices
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
    cols: list = field(default_factory=list)  # uncommitted cache columns this stream reads (its own tokens)
    n: int = 0                  # position id of the next token it feeds
    start: int | None = None    # score: committed tokens from here on are re-tokenized, so not read
    slot: int = 0               # index in Streams.rows and Streams.last
    off: int = 0                # where its feed sits in its prompt's row in this step


class Streams:
    """One member's streams for a batch of prompts, and the per-prompt committed state (Member).

    The cache keeps one row per prompt. Committed tokens are the row's 2-D mask; every
    stream's uncommitted tokens (look-ahead, branch words, scored candidates) are extra
    columns of the same row that only that stream reads: a token tree expressed as a
    4-D attention mask. Nothing is copied when a branch or a candidate starts, and the
    prefix is read once per row, however many streams hang off it."""

    slack = 320  # free columns beyond the answer's budget: live streams and a few steps' feeds

    def __init__(self, member: Member, max_new_tokens: int, cuda_graphs: bool):
        self.m = member
        P = len(member.ids)
        kv = member.kv
        self.front = kv.width  # columns from here on are free
        extra = max_new_tokens + self.slack
        kv.cache = ColumnCache(kv.cache, kv.width + extra)
        kv.mask, kv.pos = _free_columns(kv.mask, extra), _free_columns(kv.pos, extra)
        # A model spread over several GPUs (device "auto") runs eagerly: one graph per device
        # and cross-device copies are not worth it for members that big.
        use = cuda_graphs and member.s.device.type == "cuda" and not spans_devices(member.s.model)
        self.graphs = Graphs(member.s.device) if use else None  # rows stay fixed while graphs live
        self.rows = [Stream(p, "main", _Row(), n=len(member.ids[p]), slot=p) for p in range(P)]
        self.main = {p: s for p, s in enumerate(self.rows)}
        self.last = member.last_logits.clone()   # newest logits of every stream
        self.spawn: list[Stream] = []
        self.crow = list(range(P))                # cache row of each live prompt
        self.window, self.mixed = _sliding_window(member.s.model.config)
        self.eager = getattr(member.s.model.config, "_attn_implementation", "sdpa") == "eager"
        self.shared = 0  # leading columns every query reads (attention mode "cascade")
        if attention.mode == "cascade" and not self.eager:
            # Move each prompt to the front of its row (left padding squeezed out): then every
            # query reads columns [0, shortest prompt), less the tail a re-tokenization may hide.
            self.compact(0)
            self.shared = max(0, min(member.prompt_len) - member.window - 8)

    def restructure(self) -> None:
        """Drop dead streams and add the spawned ones (no cache copies: they share the row)."""
        if not self.spawn and not any(s.dead for s in self.rows):
            return
        keep = [s.slot for s in self.rows if not s.dead]
        last = self.last.index_select(0, on_device(keep, self.last.device, torch.long))
        self.last = torch.cat([last, last.new_empty((len(self.spawn), last.shape[1]))])
        self.rows = [s for s in self.rows if not s.dead] + self.spawn
        for i, s in enumerate(self.rows):
            s.slot = i
        self.spawn = []

    def groups(self) -> dict[int, list[Stream]]:
        """Live streams (spawned ones included) by prompt."""
        out: dict[int, list[Stream]] = {}
        for s in self.rows + self.spawn:
            if not s.dead:
                out.setdefault(s.p, []).append(s)
        return out

    def drop_prompts(self, finished: list[int]) -> None:
        """Remove the cache rows of finished prompts (not with graphs: they need fixed shapes;
        a finished prompt's row is then fed pads)."""
        if not finished or self.graphs is not None:
            return
        alive = sorted((r, p) for p, r in enumerate(self.crow) if r is not None and p not in finished)
        self.m.kv.keep_rows(on_device([r for r, _ in alive], self.m.s.device, torch.long))
        self.crow = [None] * len(self.crow)
        for new, (_, p) in enumerate(alive):
            self.crow[p] = new

    def forward(self) -> torch.Tensor | None:
        """Feed every stream's tokens in one forward: each token reads its prompt's committed
        columns (minus re-tokenized ones, for score streams), its stream's earlier columns, and
        itself. Returns the logits (rows x T x V), or None when nothing was fed."""
        feeding = [s for s in self.rows if s.feed and not s.dead]
        if not feeding:
            return None
        m, kv = self.m, self.m.kv
        used = [0] * kv.mask.shape[0]
        for s in feeding:
            r = self.crow[s.p]
            s.off, used[r] = used[r], used[r] + len(s.feed)
        R, T = kv.mask.shape[0], bucket(max(used))
        if self.front + T > kv.width:
            self.compact(T)
        F = self.front
        ids = [[m.s.pad_token_id] * T for _ in range(R)]
        pos = [[0] * T for _ in range(R)]
        on, off = [], []  # (row, query, column) entries of the mask to set / clear
        for s in feeding:
            r = self.crow[s.p]
            hidden = m.cols[s.p][s.start:] if s.start is not None else []
            for j, t in enumerate(s.feed):
                q = s.off + j
                ids[r][q], pos[r][q] = t, s.n + j
                on.extend((r, q, c) for c in s.cols)
                on.extend((r, q, F + s.off + i) for i in range(j))
                off.extend((r, q, c) for c in hidden)
        dev = m.s.device
        ids, pos = on_device(ids, dev), on_device(pos, dev)
        cols = torch.arange(F, F + T, device=dev)
        mask = kv.mask.bool()[:, None, :].repeat(1, T, 1)
        mask[:, cols - F, cols] = True  # every query reads itself (pads too: a row of only -inf is NaN)
        for entries, value in ((off, False), (on, True)):
            if entries:
                e = on_device(entries, dev, torch.long)
                mask[e[:, 0], e[:, 1], e[:, 2]] = value
        kv.pos[:, F:F + T] = pos
        attn = self._model_mask(mask, kv.pos, pos)
        with attention.shared_columns(self.shared):
            logits = (self.graphs or eager_forward)(m.s.model, kv.cache, ids, pos, attn, cols)
        m.forwards += 1
        rows = on_device([self.crow[s.p] for s in feeding], dev)
        ends = on_device([s.off + len(s.feed) - 1 for s in feeding], dev)
        slots = on_device([s.slot for s in feeding], dev)
        self.last[slots] = logits[rows, ends].float()
        for s in feeding:
            s.cols = s.cols + list(range(F + s.off, F + s.off + len(s.feed)))
            s.n += len(s.feed)
        self.front += T
        return logits

    def _model_mask(self, mask: torch.Tensor, key_pos: torch.Tensor, query_pos: torch.Tensor):
        """The 4-D mask in the form the model's attention wants (a dict for sliding-window layers)."""
        def form(x):
            x = x[:, None]
            if self.eager:  # eager attention adds the mask
                dtype = self.m.s.model.dtype
                return torch.zeros(x.shape, dtype=dtype, device=x.device).masked_fill(~x, torch.finfo(dtype).min)
            return attention.additive_mask(x, self.m.s.model.dtype) if attention.mode == "additive" else x
        if self.window is None:
            return form(mask)
        near = mask & (key_pos[:, None, :] > query_pos[:, :, None] - self.window)
        return {"full_attention": form(mask), "sliding_attention": form(near)} if self.mixed else form(near)

    def commit(self, p: int, s: Stream) -> None:
        """Score stream `s` won: its tokens become prompt p's committed text, and it the new main."""
        m, kv = self.m, self.m.kv
        new, start, _ = s.plan
        r = self.crow[p]
        dropped = m.cols[p][start:]
        if dropped:
            kv.mask[r, dropped] = 0
        kv.mask[r, s.cols] = 1
        m.cols[p] = m.cols[p][:start] + s.cols
        m.ids[p] = new
        m.last_logits[p] = self.last[s.slot]
        s.kind, s.st, s.plan, s.cand, s.start, s.cols = "main", _Row(), None, -1, None, []
        self.main[p] = s

    def compact(self, need: int) -> None:
        """Squeeze out the columns nobody reads any more (order kept), so that `need` free
        columns follow; widen the cache if that is not enough."""
        kv = self.m.kv
        read = kv.mask.bool()
        entries = [(self.crow[s.p], c) for s in self.rows if not s.dead for c in s.cols]
        if entries:
            e = on_device(entries, read.device, torch.long)
            read[e[:, 0], e[:, 1]] = True
        width = int(read.sum(1).max()) if read.numel() else 0
        order = torch.sort((~read).to(torch.int8), dim=1, stable=True).indices[:, :width]
        rank = (read.cumsum(1) - 1).tolist()  # new column of each read column
        kv.cache.gather_columns(order)
        for name in ("mask", "pos"):
            old = getattr(kv, name)
            new = torch.zeros_like(old)
            new[:, :width] = old.gather(1, order)
            setattr(kv, name, new)
        self.front = width
        if width + need > kv.width:  # rare: more live columns than planned
            grow = max(need, 256)
            kv.cache.grow(kv.width + grow)
            kv.mask, kv.pos = _free_columns(kv.mask, grow), _free_columns(kv.pos, grow)
            if self.graphs is not None:
                self.graphs.clear()
        for p, r in enumerate(self.crow):
            if r is not None:
                self.m.cols[p] = [rank[r][c] for c in self.m.cols[p]]
        for s in self.rows:
            if not s.dead:
                s.cols = [rank[self.crow[s.p]][c] for c in s.cols]


def _free_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """Per-column state (mask, positions) with n more columns, all zero: free."""
    return torch.cat([x, x.new_zeros((x.shape[0], n))], 1)


def _sliding_window(config) -> tuple[int | None, bool]:
    """(window, mixed): the sliding window the model's layers use, and whether only some do
    (then the model takes one mask per layer type). A custom 4-D mask replaces the model's
    own masks, so the window has to be in it, counted in positions."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None:
        return (window, True) if window and "sliding_attention" in types else (None, False)
    if window and getattr(config, "use_sliding_window", True):  # e.g. Mistral: every layer
        return window, False
    return None, False


def _union(proposals, score_eos: bool = True) -> tuple[list, list]:
    """Candidates of all members merged by exact text and ending: [(text, eos)] and, for each,
    the members that proposed it. Scored without EOS, a text proposed both as the answer's end
    and as going on is one candidate that ends the answer: a member's EOS stops the answer."""
    seen: dict = {}
    for k, (texts, eos) in enumerate(proposals):
        for text, e in zip(texts, eos):
            seen.setdefault((text, e) if score_eos else text, []).append(k)
    if score_eos:
        return list(seen), list(seen.values())
    ends = {t for texts, eos in proposals for t, e in zip(texts, eos) if e}
    return [(t, t in ends) for t in seen], list(seen.values())


@torch.inference_mode()
def stream_rounds(batch, cfg, span_words: int | None, score_cfg):
    """AdaFuse (span_words None) or a fixed-span ensemble, with ragged progress across prompts."""
    members = [Streams(m, cfg.max_new_tokens, cfg.cuda_graphs) for m in batch.members]
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
            index = on_device(live, m.s.device, torch.long)
            logits = ms.last.index_select(0, index)
            conf = confidences(logits)
            lps = torch.log_softmax(logits.float(), -1)
            top_lp, top_ids = lps.topk(min(pool, lps.shape[-1]), dim=-1)
            host = torch.stack([conf[cfg.criterion], conf["margin"], conf["entropy"]], 1).tolist()
            top_ids, top_lp = top_ids.tolist(), top_lp.tolist()
            for j, i in enumerate(live):
                s = ms.rows[i]
                if s.kind == "main":
                    _lookahead(ms, s, cfg, top_ids[j], top_lp[j], host[j], thresholds[k], props[k][s.p],
                               words_so_far[s.p], budget(k, s.p), max_words, fixed)
                else:
                    _branch_step(ms, s, cfg, top_ids[j][0], top_lp[j][0], budget(k, s.p))
        # 2. proposals that are complete: a stopped look-ahead whose branches are all done
        for k, ms in enumerate(members):
            groups = ms.groups()
            for p in range(P):
                if done[p] or cands[p] is not None or props[k][p].texts:
                    continue
                main = ms.main[p]
                if not main.st.done:
                    continue
                branches = [s for s in groups.get(p, ()) if s.kind == "branch"]
                if any(not b.st.done for b in branches):
                    continue
                _finish_proposal(ms, props[k][p], main.st, [b.st for b in branches] + main.st.ready, cfg)
                for b in branches:
                    b.dead = True
            ms.spawn = [s for s in ms.spawn if not s.dead]
        # 3. prompts whose proposals are all in: union, and score rows in every member
        for p in range(P):
            if done[p] or cands[p] is not None or any(not props[k][p].texts for k in range(K)):
                continue
            cands[p], owners[p] = _union([(pr[p].texts, pr[p].eos) for pr in props], score_cfg.score_eos)
            for ms in members:
                for c, (text, eos) in enumerate(cands[p]):
                    # score_eos off: an ending is scored by its text, and by EOS only where it has no text
                    new, keep, first = ms.m.retokenize(p, text, eos and (score_cfg.score_eos or not text))
                    n = len(ms.m.ids[p])
                    start = n if keep == n else keep - 1  # re-feed one kept token to get the logits after it
                    ms.spawn.append(Stream(p, "score", plan=(new, start, first), cand=c, feed=new[start:],
                                           n=start, start=start))
        # 4. one forward per member over every stream
        for k, ms in enumerate(members):
            ms.restructure()
            ms.logits = ms.forward()
            for p in {s.p for s in ms.rows if s.feed}:
                fwd_round[k][p] += 1
        # 5. score the candidates, pick winners, commit them
        finished_now = []
        scores = [_nll_all(ms, cands) for ms in members]
        groups = [ms.groups() for ms in members]
        for p in range(P):
            if done[p] or cands[p] is None:
                continue
            nll = [sc[p] for sc in scores]
            combined = combine_scores(nll, score_cfg)
            w = pick(combined)
            text, is_eos = cands[p][w]
            if cfg.trace:
                index = {c: i for i, c in enumerate(cands[p])}
                if not score_cfg.score_eos:  # a going-on proposal merged into the ending candidate
                    index.update({(t, False): i for i, (t, e) in enumerate(cands[p]) if e})
                batch.traces[p].append({
                    # "proposed": the member's own candidates in its order (the first is its top-1 word)
                    "members": [{"conf": pr[p].conf, "margin": pr[p].margin, "entropy": pr[p].entropy,
                                 "theta": pr[p].theta, "words": pr[p].words, "branched": pr[p].branched,
                                 "tokens": pr[p].tokens, "forwards": fwd_round[k][p],
                                 "proposed": [index[c] for c in zip(pr[p].texts, pr[p].eos)]}
                                for k, pr in enumerate(props)],
                    "candidates": [{"text": t, "eos": e, "from": owners[p][c],
                                    "nll": [_finite(x[c]) for x in nll], "score": _finite(combined[c])}
                                   for c, (t, e) in enumerate(cands[p])],
                    "winner": w,
                })
            for k, ms in enumerate(members):
                batch.add_forwards(k, p, fwd_round[k][p])
                _commit(ms, groups[k][p], p, w)
            cands[p] = owners[p] = None
            if batch.append(p, text, is_eos):
                done[p] = True
                finished_now.append(p)
                for g in groups:
                    for s in g[p]:
                        s.dead = True
            else:
                new_round(p)
        for ms in members:
            ms.restructure()
            ms.drop_prompts(finished_now)
        for p in finished_now:
            yield batch.idx[p], batch.output(p)


def _finite(x):
    return x if math.isfinite(x) else None


def _lookahead(ms: Streams, s: Stream, cfg, top_ids, top_lp, host, threshold, prop, words_before,
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
                    ms.spawn.append(Stream(p, "branch", b, feed=[bt], cols=list(s.cols), n=s.n))
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
    logits, m = ms.logits, ms.m
    src_r, src_c, tok, seg, use_last, prompt = [], [], [], [], [], []
    slots: dict[tuple[int, int], int] = {}
    for s in ms.rows:
        if s.kind != "score" or s.dead:
            continue
        slot = slots.setdefault((s.p, s.cand), len(slots))
        new, start, first = s.plan
        for j in range(first, len(new)):
            prev = j - 1 - start
            use_last.append(prev < 0)
            src_r.append(ms.crow[s.p])
            src_c.append(s.off + max(prev, 0))
            tok.append(new[j])
            seg.append(slot)
            prompt.append(s.p)
    out = {p: [float("nan")] * len(c) for p, c in enumerate(cands) if c is not None}
    if not tok:
        return out
    dev = m.last_logits.device
    as_t = lambda x: on_device(x, dev)
    t = as_t(tok)
    lp = token_log_probs(logits[as_t(src_r), as_t(src_c)], t, m.eos_t)
    committed = m.last_logits.index_select(0, as_t(prompt))  # logits after the committed text
    lp_last = token_log_probs(committed, t, m.eos_t)
    lp = torch.where(as_t(use_last), lp_last, lp)
    total = torch.zeros(len(slots), device=dev).index_add_(0, as_t(seg), -lp)
    count = torch.zeros(len(slots), device=dev).index_add_(0, as_t(seg), torch.ones_like(lp))
    means = (total / count.clamp_min(1)).tolist()
    for (p, c), slot in slots.items():
        out[p][c] = means[slot]
    return out


def _commit(ms: Streams, streams: list[Stream], p: int, w: int) -> None:
    """The winner's score stream becomes prompt p's main stream; p's other streams die."""
    for s in streams:
        if s.kind == "score" and s.cand == w:
            ms.commit(p, s)
        else:
            s.dead = True
