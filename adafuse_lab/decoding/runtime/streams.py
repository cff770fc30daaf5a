"""The runtime of one member: its streams, one forward plan per step, and the results.

A stream is a sequence of uncommitted tokens hanging off a prompt's committed text:

  main    this round's look-ahead (or a whole greedy answer)
  branch  the look-ahead up to its branch point, plus one alternative word
  score   a candidate text appended to the committed text (minus a re-tokenized tail)

All streams of a prompt live in that prompt's cache row as a token tree: each step, every
stream with tokens to feed gets its columns in the row, and the attention backend lets each
token read the visible committed columns, its own stream's columns (and its parent's) and
nothing else. So a branch or a candidate never copies the prefix, and the prefix is read
once per row, however many streams hang off it. A score stream that wins becomes committed
text and the prompt's next main stream: no extra pass to commit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...session import spans_devices
from ..attention import AttentionBackend
from ..criteria import confidences
from ..scoring import token_log_probs
from .counters import COUNTS, gpu_time, gpu_timer
from .graphs import Graphs, SmallGraphs, bucket, eager_forward
from .kv import KVCache, commit_columns
from .member import HostCopy, Member, on_device, on_device_many
from .reuse import REUSE_DEVICES, Reuse

NO_STREAM = -2   # a query's parent when it has none
PAD = -3         # the owner of a pad column: nobody reads it
NO_LIMIT = 1 << 40
# Where prefetch() pays: a GPU runs the forwards while the host works. On the CPU everything
# runs in turn, so computing rows nobody asks for is only a cost (the tests switch it on there).
PREFETCH_DEVICES = {"cuda"}


@dataclass(slots=True)  # dozens are made and read per step
class Stream:
    p: int                      # prompt row in the batch
    kind: str                   # main | branch | score
    uid: int                    # owner id of the columns it writes
    st: object = None           # the method's state of a main or branch stream
    feed: list = field(default_factory=list)  # tokens to feed (a score stream's may take several steps)
    parent: int = NO_STREAM     # a stream whose columns it also reads (a branch: its look-ahead)
    n: int = 0                  # position id of the next token it feeds
    plan: tuple | None = None   # score: (new_ids, start, first_scored)
    cand: int = -1              # score: candidate index within the prompt's union
    limit: int = NO_LIMIT       # committed columns at positions >= limit are hidden (score streams)
    tail: int = 0               # score: trailing ids scored but never committed (lookahead_scoring)
    role: str = "both"          # score: scored and committed if it wins | "score" only | "commit" only
    dead: bool = False
    slot: int = 0               # its row of Runtime.last and Runtime.nll (reused once it dies)
    off: int = 0                # where its feed sits in its prompt's row in this step
    take: int = 0               # how many of its feed tokens this step feeds (the rest: next steps)
    end_logits: object = None   # score with tail: the logits after its committed part, kept when fed
    toks: list = field(default_factory=list)  # main, branch with score_decoded: the tokens it fed this round
    fed_at: int = -1            # the member's forward that last changed its NLL sums (-1: they are zero)


class Runtime:
    """One member's streams for a batch of prompts, over its Member (committed text, KV cache)."""

    @torch.inference_mode()
    def __init__(self, session, prompts: list[str], cfg, backend: AttentionBackend, reuse: Reuse | None = None):
        self.backend = backend
        self.model_key = id(session.model)
        # the buffers and graphs of a finished batch of the same shape (reuse.py); rows stay fixed then
        self.reuse = reuse if (reuse is not None and cfg.reuse_buffers and session.device.type in REUSE_DEVICES
                               and not spans_devices(session.model)) else None
        held = None  # what make_kv took over

        def make_kv(prefill, committed, pos, extra):
            nonlocal held
            if self.reuse is None:
                return KVCache(prefill, committed, pos, extra)
            n = committed.shape[1]
            width = Reuse.width(n + extra)
            held = self.reuse.take(self._reuse_key(committed.shape[0], width), prefill, committed, pos)
            return held.kv if held else KVCache(prefill, committed, pos, width - n)

        self.m = m = Member(session, prompts, cfg.window_tokens, cfg.max_new_tokens + cfg.kv_slack, make_kv)
        P = len(prompts)
        # A model spread over several GPUs (device "auto") runs eagerly: one graph per device
        # and cross-device copies are not worth it for members that big.
        use = cfg.cuda_graphs and session.device.type == "cuda" and not spans_devices(session.model)
        self.graphs = (held.graphs if held else Graphs(session.device, cfg.compile)) if use else None
        self.small = SmallGraphs(session.device, id(session.model), capture=use)
        self.compiled = cfg.compile  # rows stay fixed while graphs or compiled shapes live
        self._uid = 0
        self.rows: list[Stream] = []
        self.spawn: list[Stream] = []
        self.last = m.last_logits.clone()      # newest logits of every stream, by slot
        self.nll = self.last.new_zeros((P, 2))  # score streams, by slot: summed token NLL, scored tokens
        self.free = list(range(P - 1, -1, -1))  # slots of no live stream (main stream p takes slot p)
        self.main = {p: self.new_stream(p, "main", n=len(m.ids[p])) for p in range(P)}
        self.restructure()
        self.early: dict[int, dict[str, Stream]] = {}  # grow_early's score streams: prompt -> text -> stream
        self.told: dict[int, dict[str, tuple]] = {}    # the tokenizer's plans of those texts: prompt -> text -> plan
        # Early scoring of the texts a member decoded itself: its look-ahead and branch streams sum
        # the NLL of the tokens they feed, and a candidate they decoded as it tokenizes is scored
        # from those sums, with no stream of its own (about half of the tokens early scoring fed).
        self.score_decoded = False
        self.decoded: dict[int, dict[str, tuple]] = {}   # prompt -> own text -> (look-ahead, branch or None)
        self.virtual: dict[int, dict[int, tuple]] = {}   # prompt -> candidate -> (look-ahead, branch or None, eos)
        self.logits = None                     # logits of the last forward (rows x T x V)
        self.fed: HostCopy | None = None       # the tokens a greedy forward chose
        self.version = 0                       # counts the writes to self.last (prefetch() is valid until one)
        self.peeked: _Peeked | None = None
        self.landed: _Peeked | None = None     # the newest prefetch() known to be on the host
        self.crow: list[int | None] = list(range(P))  # cache row of each live prompt
        self.window, self.mixed = _sliding_window(session.model.config)

    def _reuse_key(self, rows: int, width: int) -> tuple:
        return self.model_key, self.backend.name, rows, width

    def release(self) -> None:
        """The batch is over: its cache buffers and graphs go to the next batch of its shape."""
        if self.reuse is not None:
            kv = self.m.kv
            self.reuse.give(self._reuse_key(kv.rows, kv.width), kv, self.graphs)
            self.reuse = None

    # ---- streams -------------------------------------------------------------
    def new_stream(self, p: int, kind: str, **kw) -> Stream:
        self._uid += 1
        s = Stream(p, kind, self._uid, **kw)
        self.spawn.append(s)
        return s

    def score_streams(self, reqs) -> None:
        """A stream per (p, cand, text, eos, extra, bare): it feeds `text` (and an EOS id) after
        prompt p's committed text, then the `extra` ids, which are scored too but never
        committed; `bare`: `text` tokenized alone. One tokenizer call for all of them.
        A stream that grow_early() fed for the same text is taken over where its tokens are
        the start of the candidate's: only the rest is fed (often nothing). A text it tokenized
        is not tokenized again: same committed ids, same plan. A text this member decoded itself
        gets no stream where it tokenizes as decoded: its score comes from the decoding streams
        (candidate_nll), and a win commits their columns (commit_many)."""
        items = []
        for p, cand, text, eos, extra, bare in reqs:
            if bare and not eos:  # scored tokenized alone, committed as the text reads
                items += [(p, cand, text, eos, (), False, "commit"), (p, cand, text, eos, extra, True, "score")]
            else:
                items.append((p, cand, text, eos, extra, bare, "both"))
        early = {p: self.early.pop(p, {}) for p in {it[0] for it in items}}
        told = {p: self.told.pop(p, {}) for p in early}
        decoded = {p: self.decoded.pop(p, {}) for p in early}
        known = [None if eos or extra or bare else told[p].get(text) for p, _, text, eos, extra, bare, _ in items]
        fresh = iter(self._plans([(p, text, eos, bare, extra) for (p, _, text, eos, extra, bare, _), plan
                                  in zip(items, known) if plan is None]))
        for (p, cand, text, eos, extra, bare, role), plan in zip(items, known):
            plan = plan or next(fresh)
            as_grown = role == "both" and not extra and not bare  # the text early scoring saw grow
            mine = decoded[p].get(text) if as_grown else None
            if mine is not None and self._as_decoded(p, mine, plan, eos):
                self.virtual.setdefault(p, {})[cand] = (*mine, eos)
                continue
            s = early[p].pop(text, None) if as_grown else None
            if s is not None and not _extend(s, plan):
                s.dead = True  # its tokens are not how the candidate tokenizes
                s = None
            if s is None:
                s = self.new_stream(p, "score", plan=plan, feed=list(plan[0]), n=plan[1], limit=plan[1],
                                    tail=len(extra), role=role)
            s.cand = cand
        for left in early.values():
            for s in left.values():
                s.dead = True

    def grow_early(self, wanted: dict[int, dict[str, tuple | None]]) -> None:
        """Early scoring: for each prompt, a score stream per text in wanted[p] (the candidates
        of a round still growing, one token per step), fed as the text grows, so that the
        round needs no forward of its own to score them once they are complete. A stream whose
        tokens are the start of a longer text's goes on with it; the streams of texts no longer
        wanted die. A text this member decoded itself comes with the streams that decoded it,
        (look-ahead, branch or None), and gets no stream: score_streams scores it from their
        sums (score_decoded) where the text tokenizes as they decoded it, and feeds it anew where not."""
        todo, spares = [], []
        for p, texts in wanted.items():
            have, told = self.early.pop(p, {}), self.told.pop(p, {})
            self.decoded[p] = {t: d for t, d in texts.items() if d is not None}
            self.early[p] = {t: have.pop(t) for t, d in texts.items() if d is None and t in have}
            self.told[p] = {t: told[t] for t in texts if t in told}
            spares.append(have)  # streams of texts no longer wanted: extended, or they die
            todo += [(p, t, have) for t, d in texts.items() if d is None and t not in self.early[p]]
        fresh = iter(self._plans([(p, t, False, False, ()) for p, t, _ in todo]))
        for p, text, spare in todo:
            plan = self.told[p][text] = next(fresh)
            old = next((t for t, s in spare.items() if text.startswith(t) and _extend(s, plan)), None)
            self.early[p][text] = spare.pop(old) if old is not None else self.new_stream(
                p, "score", plan=plan, feed=list(plan[0]), n=plan[1], limit=plan[1])
        for spare in spares:
            for s in spare.values():
                s.dead = True

    def _as_decoded(self, p: int, mine: tuple, plan: tuple, eos: bool) -> bool:
        """Does `plan` (a candidate's ids as the text tokenizes) feed what the streams `mine`
        (look-ahead, branch or None) decoded after the committed text, plus an EOS id if `eos`?"""
        seg, start, first = plan
        toks = mine[0].toks + (mine[1].toks if mine[1] is not None else [])
        n = len(self.m.ids[p])
        return (start == first == n and seg[:len(toks)] == toks
                and len(seg) == len(toks) + eos and (not eos or seg[-1] in self.m.eos))

    def _plans(self, items) -> list[tuple[list[int], int, int]]:
        """(seg, start, first_scored) of (p, text, eos, bare, extra) items: the ids a score
        stream feeds from position `start` on (re-feeding one kept committed token to get the
        logits after it), in one tokenizer call."""
        out = []
        for (p, _, _, _, extra), (ws, after, keep, first) in zip(items, self.m.retokenize_tails(
                [(p, text, eos, bare) for p, text, eos, bare, _ in items])):
            ids = self.m.ids[p]
            start = len(ids) if keep == len(ids) else keep - 1
            out.append((ids[start:ws] + after[max(0, start - ws):] + list(extra), start, first))
        return out

    @torch.inference_mode()
    def restructure(self) -> None:
        """Drop dead streams and add the spawned ones (no cache copies: they share the row).
        A spawned stream takes the slot of a dead one: the logits of hundreds of streams are
        not copied each step to close the gaps; the slots grow, by doubling, only when full."""
        if not self.spawn and not any(s.dead for s in self.rows):
            return
        self.free += [s.slot for s in self.rows if s.dead]
        self.rows = [s for s in self.rows if not s.dead]
        if self.spawn:
            short = len(self.spawn) - len(self.free)
            if short > 0:
                have = self.last.shape[0]
                grow = max(short, have)
                self.last = torch.cat([self.last, self.last.new_empty((grow, self.last.shape[1]))])
                self.nll = torch.cat([self.nll, self.nll.new_zeros((grow, 2))])
                self.free += range(have + grow - 1, have - 1, -1)
            slots = [self.free.pop() for _ in self.spawn]
            for s, slot in zip(self.spawn, slots):
                s.slot = slot
            self.nll.index_fill_(0, on_device(slots, self.nll.device, torch.long), 0)
            self.rows += self.spawn
        self.spawn = []

    def groups(self, kind: str | None = None) -> dict[int, list[Stream]]:
        """Live streams (spawned ones included), or those of one kind, by prompt."""
        out: dict[int, list[Stream]] = {}
        for s in self.rows + self.spawn:
            if not s.dead and (kind is None or s.kind == kind):
                out.setdefault(s.p, []).append(s)
        return out

    def end_prompt(self, p: int) -> None:
        for held in (self.early, self.told, self.decoded, self.virtual):
            held.pop(p, None)
        for s in self.rows + self.spawn:
            if s.p == p:
                s.dead = True

    def unfed(self) -> set[int]:
        """Prompts with score streams that have tokens left to feed."""
        return {s.p for s in self.rows + self.spawn if s.kind == "score" and s.feed and not s.dead}

    def pending(self) -> set[int]:
        """Prompts whose sums the host cannot read yet without waiting for a forward: unfed(),
        and those with a stream fed in a forward whose results have not landed (land())."""
        at = self.landed_at()
        return {s.p for s in self.rows + self.spawn
                if not s.dead and ((s.kind == "score" and s.feed) or s.fed_at > at)}

    def drop_prompts(self, finished: list[int]) -> None:
        """Remove the cache rows of finished prompts (not with graphs: they need fixed shapes;
        a finished prompt's row is then fed pads)."""
        if not finished or self.graphs is not None or self.compiled or self.reuse is not None:
            return
        alive = sorted((r, p) for p, r in enumerate(self.crow) if r is not None and p not in finished)
        self.m.kv.keep_rows(on_device([r for r, _ in alive], self.m.s.device, torch.long))
        self.crow = [None] * len(self.crow)
        for new, (_, p) in enumerate(alive):
            self.crow[p] = new

    # ---- one forward -----------------------------------------------------------
    @torch.inference_mode()
    def forward(self, greedy: bool = False, cap: int = 0) -> torch.Tensor | None:
        """Feed the streams' tokens in one forward; returns its logits (rows x T x V), or None
        when nothing was fed. The plan (ids, positions, and what each token reads) is a few
        lists per stream on the host and tensor operations on the device.

        cap: at most this many tokens per row (0: no cap). Look-ahead and branch tokens always
        go in; score streams fill what is left and feed the rest in later forwards, so one
        prompt's long candidates do not widen every row's forward (unfed() names the prompts
        left with score tokens to feed; their scores are read once none are).

        greedy: every feeding stream feeds one token, the argmax of its newest logits, chosen
        on the device (s.feed holds a placeholder). self.fed then holds those tokens, copied to
        the host behind the previous forward only: the caller reads them while this one runs."""
        self.logits = None
        feeding, used = self._plan_rows(cap)
        if not feeding:
            return None
        m, kv = self.m, self.m.kv
        T = bucket(max(used))
        width, compactions = kv.width, kv.compactions
        F = kv.reserve(T, [s.uid for s in self.rows if not s.dead])
        key = id(m.s.model)
        COUNTS[key, "forwards"] += 1
        COUNTS[key, "fed"] += sum(used)
        COUNTS[key, "slots"] += kv.rows * T
        COUNTS[key, "compactions"] += kv.compactions - compactions
        if self.graphs is not None and kv.width != width:
            self.graphs.clear()
        entries = np.array([(self.crow[s.p], s.off + j, t, s.n + j, s.uid, s.parent, s.limit)
                            for s in feeding for j, t in enumerate(s.feed[:s.take])], dtype=np.int64)
        dev = m.s.device
        # the fed tokens' ids, positions, owners, parents and limits, and the columns they go to,
        # rows x T each, filled on the host and sent in one copy: the forward's one input
        plan = np.empty((6, kv.rows, T), dtype=np.int64)
        for x, fill in zip(plan, (m.s.pad_token_id, 0, PAD, NO_STREAM, 0)):
            x.fill(fill)
        plan[5] = np.arange(F, F + T)
        plan[:5, entries[:, 0], entries[:, 1]] = entries[:, 2:].T
        plan = on_device(plan, dev, torch.long)
        if greedy:
            assert all(s.take == 1 for s in feeding), "a greedy forward feeds one token per stream"
            r, q, slots = on_device_many([entries[:, 0].tolist(), entries[:, 1].tolist(), [s.slot for s in feeding]], dev)
            chosen = self.last.index_select(0, slots).argmax(-1)
            self.fed = HostCopy(chosen)
            plan[0, r, q] = chosen  # one entry per stream, in feeding order
        # a forward that captures its graph counts in capture_s instead
        timer = gpu_timer(dev) if self.graphs is None or T in self.graphs.captured else None
        if self.graphs is not None:
            logits = self.graphs(m.s.model, self.backend, kv, plan, self.window, self.mixed)
        else:
            logits = eager_forward(m.s.model, self.backend, kv, plan, self.window, self.mixed, self.compiled)
        if timer:
            gpu_time(key, "model_gpu_s", timer)
        m.forwards += 1
        self._score(feeding, logits)  # reads self.last before it moves on
        rows, ends, slots = on_device_many([[self.crow[s.p] for s in feeding], [s.off + s.take - 1 for s in feeding],
                                            [s.slot for s in feeding]], dev)
        self.last[slots] = logits[rows, ends].float()
        self.version += 1
        for s in feeding:
            if self.score_decoded and s.kind != "score":
                s.toks += s.feed[:s.take]
            s.n += s.take
            s.fed_at = m.forwards
            s.feed = s.feed[s.take:]
        kv.front = F + T
        self.logits = logits
        return logits

    def _plan_rows(self, cap: int) -> tuple[list[Stream], list[int]]:
        """The streams that feed in this forward, each with its offset in its row (s.off) and
        its number of tokens (s.take): everything, or with a cap as forward() says; and the
        tokens each cache row feeds."""
        feeding = [s for s in self.rows if s.feed and not s.dead]
        used = [0] * self.m.kv.rows
        whole = [s for s in feeding if not cap or s.kind != "score" or s.tail]  # never split
        for s in whole:
            r = self.crow[s.p]
            s.off, s.take, used[r] = used[r], len(s.feed), used[r] + len(s.feed)
        for s in feeding if cap else []:
            if s.kind == "score" and not s.tail:
                r = self.crow[s.p]
                s.off, s.take = used[r], max(0, min(len(s.feed), cap - used[r]))
                used[r] += s.take
        return [s for s in feeding if s.take], used

    def _score(self, feeding: list[Stream], logits: torch.Tensor) -> None:
        """Add the NLL of the scored tokens this forward fed to their streams' sums. A token is
        predicted by the logits after the token before it: fed in this forward, the stream's
        newest logits (its previous chunk), or those after the committed text."""
        m = self.m
        here_r, here_c, here_t, here_s = [], [], [], []
        prev_t, prev_s, prev_from = [], [], []  # prev_from: a stream's slot (>= 0) or -1 - prompt
        for s in feeding:
            if s.kind != "score":
                if self.score_decoded:  # its tokens' NLL, summed in its slot (score_streams' own candidates)
                    for j, t in enumerate(s.feed[:s.take]):
                        if j:
                            here_r.append(self.crow[s.p]), here_c.append(s.off + j - 1), here_t.append(t)
                            here_s.append(s.slot)
                        else:  # a branch's first token was chosen from its look-ahead's logits
                            prev_t.append(t), prev_s.append(s.slot)
                            prev_from.append(self.main[s.p].slot if s.kind == "branch" and not s.toks else s.slot)
                continue
            if s.role == "commit":
                continue
            seg, start, first = s.plan  # seg[i]: the new id at position start + i
            done = s.n - start  # tokens fed before this forward
            for j in range(max(first, start + done), start + done + s.take):
                if j - 1 >= start + done:
                    here_r.append(self.crow[s.p]), here_c.append(s.off + j - 1 - start - done)
                    here_t.append(seg[j - start]), here_s.append(s.slot)
                else:
                    prev_t.append(seg[j - start]), prev_s.append(s.slot)
                    prev_from.append(s.slot if j - 1 >= start else -1 - s.p)
            if s.tail and s.take == len(s.feed):  # the winner's next logits come from here (commit)
                end = start + len(seg) - s.tail
                # a copy: a replayed graph writes its next logits into the same buffer
                s.end_logits = (logits[self.crow[s.p], s.off + end - 1 - start - done].to(torch.float32, copy=True)
                                if end > start else None)
        # each a captured graph on a GPU: a dozen kernels whose launches cost the host more than they run
        if here_t:
            self.small(_add_here_nll, (logits, self.nll, m.eos_t), [here_r, here_c, here_t, here_s, [1] * len(here_t)])
        if prev_t:
            self.small(_add_prev_nll, (self.last, m.last_logits, self.nll, m.eos_t),
                       [prev_from, prev_t, prev_s, [1] * len(prev_t)])

    # ---- reading the results ---------------------------------------------------
    def peek(self, streams: list[Stream], pool: int, criterion: str):
        """For each stream's newest logits: (criterion, margin, entropy) and the top `pool`
        token ids and log-probabilities, as host lists; from prefetch() where it covers them."""
        pre = self.peeked
        if pre is not None and pre.key == (self.version, pool, criterion) and all(s.slot in pre.index for s in streams):
            rows = pre.rows().numpy()[[pre.index[s.slot] for s in streams]]
        else:  # waits for all the work queued, the other members' forwards too
            if pre is not None:
                COUNTS[id(self.m.s.model), "sync_peeks"] += 1
            rows = self._peeks([s.slot for s in streams], pool, criterion).cpu().numpy()
        k = (rows.shape[1] - _HEAD) // 2  # numpy: slicing host rows through torch cost a dispatch each
        return rows[:, :3].tolist(), rows[:, _HEAD + k:].astype(np.int64).tolist(), rows[:, _HEAD:_HEAD + k].tolist()

    def _peeks(self, slots: list[int], pool: int, criterion: str) -> torch.Tensor:
        return self.small(_peek_slots, (self.last, self.m.eos_t), [slots], (pool, criterion))

    def prefetch(self, pool: int, criterion: str) -> None:
        """Queue peek()'s work for every stream fed to its end, with the streams' NLL sums, right
        behind this member's forward, copied to the host: the next peek() then waits for this
        forward only, the host decides for this member while the GPU runs the next member's
        forward, and candidate_nll(host=True) reads the sums without waiting for the forwards
        after it. Complete score streams are covered too: a candidate that wins goes on as the
        main stream and is peeked in the same step (engine v18 counted a peek that waited, for
        both members' forwards, in 3 of 4 steps of each member when they were left out)."""
        if self.last.device.type not in PREFETCH_DEVICES:
            return
        streams = [s for s in self.rows if not s.dead and not s.feed
                   and (s.kind != "score" or s.role != "score")]
        slots = [s.slot for s in streams]
        rows = self._peeks(slots, pool, criterion) if slots else None
        self.peeked = _Peeked((self.version, pool, criterion), self.m.forwards, {slot: i for i, slot in enumerate(slots)},
                              HostCopy(rows) if slots else None, HostCopy(self.nll))

    def land(self) -> None:
        """Wait for the newest prefetch()'s copies: the member's results up to its last forward
        are on the host from here on. Only at fixed points of the rounds (never when a copy
        happens to be done), so that what is scored when does not depend on timing."""
        pre = self.peeked
        if pre is not None and pre is not self.landed:
            pre.wait()
            self.landed = pre

    def landed_at(self) -> int:
        """The newest forward whose results the host reads without waiting (every one where
        nothing is prefetched: there reads wait)."""
        if self.peeked is None:
            return self.m.forwards
        return self.landed.at if self.landed is not None else 0

    def candidate_nll(self, n_cands: dict[int, int], host: bool = False) -> dict[int, list[float]]:
        """Mean token NLL of every candidate of the prompts in n_cands (prompt -> number of
        candidates), from the sums the forwards kept; a candidate with no scored token is NaN.
        host: from the landed prefetch() (none of those prompts pending()), without waiting for
        the forwards queued since; where it lacks a row, from the device."""
        keys, streams = [], []
        for s in self.rows:
            if s.kind == "score" and not s.dead and s.p in n_cands and s.role != "commit":
                keys.append((s.p, s.cand))
                streams.append(s)
        mine = [(p, c, v) for p in n_cands for c, v in self.virtual.get(p, {}).items()]
        out = {p: [float("nan")] * n for p, n in n_cands.items()}
        if not streams and not mine:
            return out
        sums = self._landed_sums(streams, [v for _, _, v in mine]) if host and self.landed is not None else None
        if sums is None:
            if host and self.peeked is not None:
                COUNTS[id(self.m.s.model), "sync_reads"] += 1
            sums = self.nll.index_select(0, on_device([s.slot for s in streams], self.nll.device, torch.long))
            if mine:
                sums = torch.cat([sums, self._decoded_sums([v for _, _, v in mine])])
        keys += [(p, c) for p, c, _ in mine]
        means = torch.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1].clamp_min(1), float("nan")).tolist()
        for (p, c), mean in zip(keys, means):
            out[p][c] = mean
        return out

    def _landed_sums(self, streams: list[Stream], mine: list[tuple]) -> torch.Tensor | None:
        """candidate_nll's sums from the landed prefetch, on the host, in the order and float32
        arithmetic of the device path; None where it lacks an ending's row. A stream that has
        not fed since its sums were zeroed (fed_at -1) reads zero, whatever its slot held."""
        pre = self.landed
        # one row of zeros after the slots: where a stream has not fed since its sums were zeroed
        sums = pre.nll.wait()
        nll = torch.cat([sums, sums.new_zeros((1, 2))])
        zero = len(nll) - 1

        def rows(ss):
            return nll[[s.slot if s is not None and s.fed_at >= 0 else zero for s in ss]]
        own = [rows(streams)]
        if mine:
            lasts = [(b or a).slot for a, b, _ in mine]
            if any(slot not in pre.index for slot in lasts):
                return None
            ending = pre.rows()[[pre.index[slot] for slot in lasts], 3].float()
            eos = torch.tensor([float(e) for _, _, e in mine])
            own.append((rows([a for a, _, _ in mine]) + rows([b for _, b, _ in mine]))
                       + torch.stack([ending, torch.ones_like(ending)], 1) * eos[:, None])
        return torch.cat(own)

    def _decoded_sums(self, mine: list[tuple]) -> torch.Tensor:
        """(summed NLL, tokens) of candidates scored from the streams that decoded them, each
        (look-ahead, branch or None, eos): the two streams' sums, and an ending's EOS scored
        from the logits after the last token."""
        dev = self.nll.device
        look, branch, last, eos = on_device_many([[a.slot for a, _, _ in mine],
                                                  [b.slot if b is not None else -1 for _, b, _ in mine],
                                                  [(b or a).slot for a, b, _ in mine], [int(e) for _, _, e in mine]], dev)
        sums = self.nll.index_select(0, look) + torch.where((branch >= 0)[:, None],
                                                            self.nll.index_select(0, branch.clamp_min(0)), 0.0)
        ending = _ending_nll(self.last.index_select(0, last), self.m.eos_t)
        return sums + torch.stack([ending, torch.ones_like(ending)], 1) * eos[:, None]

    @torch.inference_mode()
    def score_texts(self, rows: list[int], texts: list[str], eos: list[bool]) -> list[float]:
        """Mean token NLL of each text appended to its prompt's committed text, in one forward
        (the score streams stay: commit one of them per prompt with commit(p, i), i counting
        that prompt's texts in order)."""
        count: dict[int, int] = {}
        keys = []
        for p in rows:
            keys.append((p, count.get(p, 0)))
            count[p] = count.get(p, 0) + 1
        self.score_streams([(p, c, text, e, (), False) for (p, c), text, e in zip(keys, texts, eos)])
        for s in self.rows:
            s.feed = s.feed if s.kind == "score" else []
        self.restructure()
        self.forward()
        nll = self.candidate_nll(count)
        return [nll[p][c] for p, c in keys]

    # ---- committing --------------------------------------------------------------
    def commit(self, p: int, cand: int, make_state=lambda: None) -> None:
        self.commit_many([(p, cand)], make_state)

    @torch.inference_mode()
    def commit_many(self, wins: list[tuple[int, int]], make_state=lambda: None) -> None:
        """For each (p, cand): candidate `cand`'s score stream becomes prompt p's committed text
        and main stream; p's other streams die. One cache update for all of them."""
        if not wins:
            return
        m, groups = self.m, self.groups()
        rows, owners, also, hide, ends, slots, prompts = [], [], [], [], [], [], []
        for p, cand in wins:
            self.early.pop(p, None)
            self.told.pop(p, None)  # planned on the ids this commit replaces
            self.decoded.pop(p, None)
            mine = self.virtual.pop(p, {}).get(cand)
            if mine is not None:  # the candidate is what this member's look-ahead (and branch) decoded
                look, branch, eos = mine
                s = branch or look
                for x in groups.get(p, ()):
                    x.dead = x is not s
                rows.append(self.crow[p]), owners.append(look.uid), also.append(branch.uid if branch else NO_STREAM)
                hide.append(len(m.ids[p])), ends.append(NO_LIMIT)
                m.ids[p] = m.ids[p] + look.toks + (branch.toks if branch else []) + ([min(m.eos)] if eos else [])
                slots.append(s.slot), prompts.append(p)
                s.kind, s.st, s.parent, s.toks = "main", make_state(), NO_STREAM, []
                self.main[p] = s
                continue
            for s in groups.get(p, ()):
                if s.kind != "score" or s.cand != cand or s.role == "score":
                    s.dead = True
                    continue
                seg, start, _ = s.plan
                end = start + len(seg) - s.tail
                rows.append(self.crow[p]), owners.append(s.uid), also.append(NO_STREAM), hide.append(start)
                ends.append(end if s.tail else NO_LIMIT)
                if s.tail:  # the logits after the committed text, not after the extra ids
                    s.n = end
                    self.last[s.slot] = s.end_logits if s.end_logits is not None else m.last_logits[p]
                    self.version += 1
                m.ids[p] = m.ids[p][:start] + seg[:end - start]
                slots.append(s.slot), prompts.append(p)
                s.kind, s.st, s.plan, s.cand, s.limit, s.tail, s.role = "main", make_state(), None, -1, NO_LIMIT, 0, "both"
                self.main[p] = s
        if not rows:
            return
        # one captured graph on a GPU (two dozen kernels eagerly); padded to its bucket with
        # copies of the first win, which write what that win writes
        index = [x + x[:1] * (bucket(len(x)) - len(x)) for x in (rows, owners, also, hide, ends, [1] * len(rows),
                                                                  prompts, slots)]
        kv = m.kv
        self.small(_commit_wins, (kv.committed, kv.pos, kv.owner, m.last_logits, self.last, self.nll), index,
                   (self.score_decoded,))
        if self.score_decoded:  # the new look-ahead sums its own tokens from zero
            for p in prompts:
                self.main[p].fed_at = -1


_HEAD = 4  # peek rows: criterion, margin, entropy, the NLL of ending here; then top log-probs, then top ids


def _peek_rows(last: torch.Tensor, slots: torch.Tensor, pool: int, criterion: str, eos: torch.Tensor) -> torch.Tensor:
    """Per slot: criterion, margin, entropy, the NLL of ending here (_ending_nll), then the top `pool` log-probabilities and token ids, as one float64 tensor (one copy to the
    host; float64 holds the float32 values and the ids exactly)."""
    logits = last.index_select(0, slots)
    conf = confidences(logits)
    ending = _ending_nll(logits, eos)
    top_lp, top_ids = torch.log_softmax(logits.float(), -1).topk(min(pool, logits.shape[-1]), dim=-1)
    return torch.cat([torch.stack([conf[criterion], conf["margin"], conf["entropy"], ending.float()], 1).double(),
                      top_lp.double(), top_ids.double()], 1)


def _commit_wins(committed, pos, owner, last_logits, last, nll, index, zero_nll: bool) -> torch.Tensor:
    """commit_many's device work (SmallGraphs' calling convention). index rows: the cache's
    (row, owner, also, hide_from, end, valid) as kv.commit_columns takes them, then prompt and
    slot: the prompt's logits after its committed text become its winner's newest logits, and
    with zero_nll the winner's NLL sums start from zero (it goes on as the look-ahead). Columns
    with valid 0 write back what they read."""
    commit_columns(committed, pos, owner, index[:6])
    valid, prompt, slot = index[5][:, None] > 0, index[6], index[7]
    last_logits[prompt] = torch.where(valid, last.index_select(0, slot), last_logits.index_select(0, prompt))
    if zero_nll:
        nll[slot] = torch.where(valid, 0.0, nll.index_select(0, slot))
    return slot


def _peek_slots(last, eos, index, pool: int, criterion: str) -> torch.Tensor:
    """_peek_rows of the slots in index[0] (SmallGraphs' calling convention)."""
    return _peek_rows(last, index[0], pool, criterion, eos)


def _add_here_nll(logits, nll, eos, index) -> torch.Tensor:
    """Add to nll (by slot) the NLL of tokens predicted by this forward's logits. index rows:
    cache row, column, token, slot, valid (0: a pad, adds nothing)."""
    r, c, tok, slot, valid = index
    return _add_nll(nll, slot, valid, token_log_probs(logits[r, c].float(), tok, eos))


def _add_prev_nll(last, last_logits, nll, eos, index) -> torch.Tensor:
    """The same for tokens predicted by logits from before this forward. index rows: source (a
    stream's slot in last, or -1 - prompt for the logits after its committed text), token, slot, valid."""
    src, tok, slot, valid = index
    before = torch.where((src >= 0)[:, None], last.index_select(0, src.clamp_min(0)),
                         last_logits.index_select(0, (-1 - src).clamp_min(0)))
    return _add_nll(nll, slot, valid, token_log_probs(before, tok, eos))


def _add_nll(nll, slot, valid, lp) -> torch.Tensor:
    add = torch.where(valid[:, None] > 0, torch.stack([-lp, torch.ones_like(lp)], 1), 0.0)
    nll.index_add_(0, slot, add)
    return add


def _ending_nll(logits: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """Per row, the NLL of ending after it (any EOS id, scoring.token_log_probs); 1 for a member
    with no EOS id. What a candidate that ends is scored with, read on the device
    (_decoded_sums) or from a prefetched copy (_landed_sums): the same values either way."""
    if not eos.numel():
        return logits.new_ones(len(logits), dtype=torch.float32)
    return -token_log_probs(logits, eos[:1].expand(len(logits)), eos)


class _Peeked:
    """prefetch()'s copies on their way to the host: its peek rows, valid while `key`
    (Runtime.version, pool, criterion) holds (index: slot -> row), and the NLL sums of every
    slot after the member's forward number `at`."""

    def __init__(self, key: tuple, at: int, index: dict[int, int], copy: HostCopy | None, nll: HostCopy):
        self.key, self.at, self.index, self.copy, self.nll, self._rows = key, at, index, copy, nll, None

    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = self.copy.wait()
        return self._rows

    def wait(self) -> None:
        self.nll.wait()
        if self.copy is not None:
            self.rows()


def _extend(s: Stream, plan: tuple) -> bool:
    """Make score stream s feed `plan` instead of its own plan when that only adds ids after
    them (same start, same first scored position): the ids it fed or queued stay; True if so."""
    seg, start, first = s.plan
    if s.dead or (start, first) != plan[1:] or plan[0][:len(seg)] != seg:
        return False
    s.feed += plan[0][len(seg):]
    s.plan = plan
    return True


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
