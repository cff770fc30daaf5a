"""AdaFuse rounds (and the fixed-span ensembles SweetSpan and Cool-Fusion), with ragged progress.

Each prompt follows the rounds of method.md §1 on its own: every member proposes (look-ahead
words while confident, B branch words where not), the union of the candidates is scored by
every member, the best one is committed. Each step, every member feeds all its live streams
of all prompts in one forward, so a prompt never waits for another's round to end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..criteria import Threshold
from ..pieces import next_piece
from ..select import combine_scores, pick, select_branches
from ..words import more_words, official_words, starts_new_word
from ..runtime.counters import host_phase
from .batch import STEP, Batch, official_stop
from .proposal import Proposal, _gate, _Row, _unit


def span_rounds(runtimes: list, batch: Batch, cfg, span_words: int | None = None):
    """AdaFuse (span_words None) or a fixed span of `span_words` words per round."""
    K, P = len(runtimes), len(batch.idx)
    fixed = span_words is not None
    first = 1 if fixed else cfg.effective("span_length")
    span = _Span(span_words or cfg.M + first - 1, fixed, first,
                 cfg.B > 1 and not fixed and cfg.effective("lookahead_scoring"))
    bare, text_rule = cfg.effective("bare_cross_scoring"), cfg.effective("official_text")
    max_rounds = cfg.effective("max_span_rounds")
    if text_rule:
        batch.stop = official_stop(batch.stop)
    pool = cfg.B if cfg.branch_select == "topk" else cfg.B * cfg.branch_pool
    thresholds = [Threshold(cfg) for _ in runtimes]
    props = [[Proposal([], []) for _ in range(P)] for _ in runtimes]
    fwd_round = [[0] * P for _ in runtimes]
    cands: list = [None] * P          # union of candidates while a prompt is being scored
    owners: list = [None] * P
    words_so_far = [0] * P
    last_word = [""] * P              # the answer's last word (words_so_far counts on from it)
    for rt in runtimes:
        for s in rt.main.values():
            s.st = _Row()

    def budget(rt, p):
        return max(1, cfg.max_new_tokens - rt.m.answer_tokens(p))

    # Early scoring: each member scores the candidates of all members as they grow, so a round
    # whose candidates are complete is scored, picked and committed before the step's forwards,
    # and the next round starts in that step (the plain order spends a forward per round on
    # scoring). Not where the scored text is not the growing text (bare, official text, tails).
    early = cfg.early_scoring and not (bare or text_rule or span.tail)
    for rt in runtimes:
        rt.score_decoded = early

    def decide(k, rt):
        """Every main and branch stream not yet decided this step decides what it feeds next."""
        deciding = [s for s in rt.rows if s.kind != "score" and not s.dead and not s.feed and cands[s.p] is None
                    and not batch.done[s.p] and not s.st.done]
        if not deciding:
            return
        host, top_ids, top_lp = rt.peek(deciding, pool, cfg.criterion)
        for s, h, ids, lps in zip(deciding, host, top_ids, top_lp):
            if s.kind == "main":
                _lookahead(rt, s, cfg, ids, lps, h, thresholds[k], props[k][s.p], words_so_far[s.p],
                           budget(rt, s.p), span)
            else:
                _branch_step(rt, s, cfg, ids[0], lps[0], budget(rt, s.p), span.tail)

    def propose(live):
        """Proposals that are complete (a stopped look-ahead whose branches are all done); the
        union of a prompt's proposals once all are in, with its score streams in every member."""
        for k, rt in enumerate(runtimes):
            groups = None  # built once a stopped look-ahead needs it (most calls have none)
            for p in live:
                main = rt.main[p]
                if cands[p] is not None or props[k][p].texts or not main.st.done:
                    continue
                groups = rt.groups("branch") if groups is None else groups
                branches = groups.get(p, [])
                if all(b.st.done for b in branches):
                    _finish_proposal(rt, props[k][p], main, branches, cfg, text_rule)
                    if not early:  # early: a branch may win and its columns be committed, so it lives on
                        for b in branches:
                            b.dead = True
        reqs = [[] for _ in runtimes]
        for p in live:
            if cands[p] is None and all(pr[p].texts for pr in props):
                cands[p], owners[p] = _union([(pr[p].texts, pr[p].eos) for pr in props], cfg.score_eos)
                for k in range(K):
                    for c, (text, eos) in enumerate(cands[p]):
                        reqs[k].append(_score_request(k in owners[p][c], props[k][p], p, c, text, eos, cfg, bare,
                                                      text_rule))
        for rt, r in zip(runtimes, reqs):
            rt.score_streams(r)

    def settle(live) -> tuple[list[int], list[int]]:
        """Score the prompts whose candidates are all fed, pick the winners, commit them; the
        prompts committed and, of them, those finished."""
        pending = set().union(*(rt.pending() for rt in runtimes))
        scoring = {p: len(cands[p]) for p in live if cands[p] is not None and p not in pending}
        if not scoring:
            return [], []
        nll = [rt.candidate_nll(scoring, host=True) for rt in runtimes]
        wins = {}
        for p in scoring:
            scores = [x[p] for x in nll]
            combined = combine_scores(scores, cfg)
            w = wins[p] = pick(combined)
            if cfg.trace:
                batch.traces[p].append(_trace(props, p, cands[p], owners[p], scores, combined, w, fwd_round, cfg))
        for rt in runtimes:
            rt.commit_many(list(wins.items()), _Row)
        finished = []
        for p, w in wins.items():
            text, is_eos = cands[p][w]
            if is_eos and text_rule:  # the answer takes the text without the end token glued on
                text = _own(props[owners[p][w][0]][p], text, is_eos)[0]
            for k in range(K):
                batch.add_forwards(k, p, fwd_round[k][p])
                props[k][p], fwd_round[k][p] = Proposal([], []), 0
            cands[p] = owners[p] = None
            if batch.append(p, text, is_eos, runtimes[0].m.answer_tokens(p), max_rounds):
                finished.append(p)
            added, last_word[p] = more_words(last_word[p], text)
            words_so_far[p] += added
        for rt in runtimes:
            for p in finished:
                rt.end_prompt(p)
            rt.restructure()
            rt.drop_prompts(finished)
        return list(wins), finished

    # Member turns: each member in turn reads its last forward's results, decides, and plans and
    # launches its next forward, while the GPU runs the other members' forwards; the scores of a
    # member's forward are read from its turn after it on (Runtime.pending). Off: every member
    # decides, then every member's forward (the host plans one while the GPU runs the one before).
    turns = [[k] for k in range(K)] if cfg.member_turns else [list(range(K))]
    while batch.live():
        for turn in turns:
            for k in turn:
                for s in runtimes[k].rows:
                    if s.kind != "score":  # a score stream may have tokens left from the last forward
                        s.feed = []
            # 1-3. decide, propose, score what is complete; a prompt whose round ends here starts
            # its next round in this turn
            while True:
                live = batch.live()
                for k in turn:  # member k decides while the GPU still runs the forwards queued after its own
                    with host_phase("wait"):  # for member k's last forward (its prefetched copies)
                        runtimes[k].land()
                    with host_phase("decide"):
                        decide(k, runtimes[k])
                with host_phase("propose"):
                    propose(live)
                with host_phase("settle"):
                    committed, finished = settle(live)
                for p in finished:
                    yield batch.output(p, [rt.m.answer_tokens(p) for rt in runtimes])
                if len(committed) == len(finished):
                    break
            if not batch.live():
                break
            with host_phase("growing"):
                growing = _growing(runtimes, props, [p for p in batch.live() if cands[p] is None], turn) if early else None
            # 4. one forward per member of the turn over all its streams; the next decide(k)
            # reads member k's peek, queued right behind its forward
            for k in turn:
                rt = runtimes[k]
                with host_phase("grow_early"):  # with the restructure that adds its streams
                    if early:
                        rt.grow_early(growing[k])
                    rt.restructure()
                for p in {s.p for s in rt.rows if s.feed}:
                    fwd_round[k][p] += 1
                with host_phase("forward"):  # the plan, the launch, and the scores of what it fed
                    rt.forward(cap=cfg.feed_cap)
                    rt.prefetch(pool, cfg.criterion)
            yield STEP


def _growing(runtimes, props, prompts: list[int], members: list[int]) -> dict[int, dict[int, dict]]:
    """The candidate texts of each prompt's round as they stand: each member's proposal where
    it is complete, else its look-ahead's text, or the texts of its branches as they grow.
    For each of `members`: {prompt: {text: the streams that decoded it, (look-ahead, branch or
    None), where the member decoded it, else None}}."""
    mine = [{p: {} for p in prompts} for _ in runtimes]
    for k, (rt, prop) in enumerate(zip(runtimes, props)):
        branches = rt.groups("branch")
        for p in prompts:
            if prop[p].texts:  # complete: its texts as they were decoded
                mine[k][p].update(zip(prop[p].texts, prop[p].decoded))
                continue
            main = rt.main[p]
            mine[k][p][main.st.text] = (main, None)
            if main.st.branch is not None:
                mine[k][p].update((main.st.text + b.st.text, (main, b)) for b in branches.get(p, ()))
    return {k: {p: {t: d for t, d in {**{t: None for m in mine for t in m[p]}, **mine[k][p]}.items() if t}
                for p in prompts} for k in members}


def _trace(props, p, cands, owners, nll, combined, w, fwd_round, cfg) -> dict:
    """The round's record: each member's confidences and proposals, the candidates and their scores."""
    index = {c: i for i, c in enumerate(cands)}
    if not cfg.score_eos:  # a going-on proposal merged into the ending candidate
        index.update({(t, False): i for i, (t, e) in enumerate(cands) if e})
    return {
        # "proposed": the member's own candidates in its order (the first is its top-1 word)
        "members": [{"conf": pr[p].conf, "margin": pr[p].margin, "entropy": pr[p].entropy,
                     "theta": pr[p].theta, "words": pr[p].words, "branched": pr[p].branched,
                     "tokens": pr[p].tokens, "forwards": fwd_round[k][p],
                     "proposed": [index[c] for c in zip(pr[p].texts, pr[p].eos)]}
                    for k, pr in enumerate(props)],
        "candidates": [{"text": t, "eos": e, "from": owners[c], "nll": [_finite(x[c]) for x in nll],
                        "score": _finite(combined[c])} for c, (t, e) in enumerate(cands)],
        "winner": w,
    }


def _finite(x):
    return x if math.isfinite(x) else None


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


@dataclass(frozen=True)
class _Span:
    max_words: int  # most words in a member's proposal
    fixed: bool     # a fixed span of max_words words (SweetSpan, Cool-Fusion)
    first: int      # words in the first unit (span_length): the confidence is read at its start only
    tail: bool      # lookahead_scoring: decode the look-ahead tokens after the candidate's text


def _lookahead(rt, s, cfg, top_ids, top_lp, host, threshold, prop, words_before, budget, span: _Span) -> None:
    """One look-ahead decision of a main stream: commit the word, branch, or stop."""
    m, st, p = rt.m, s.st, s.p
    t = top_ids[0]
    if st.tail:
        _tail_step(m, st, s, t)
        return
    is_eos = t in m.eos
    piece, head, word = ("", st.text, st.word) if is_eos else next_piece(m, p, st.text, st.word, st.toks, t)
    new_word = not st.toks or is_eos or st.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece)
    if new_word:
        if st.toks:
            st.words += 1
        if len(st.toks) >= budget:
            st.done = True
            return
        if st.words >= min(span.max_words, st.cap):
            _text_done(m, st, s, t, span.tail)
            return
        unit = _unit(st.words, span.first)
        if unit is not None:  # inside the first span, words are committed unread
            c, margin, ent = host
            theta = threshold(p, words_before + st.words)
            threshold.observe(p, c)
            prop.conf.append(c), prop.margin.append(margin), prop.entropy.append(ent), prop.theta.append(theta)
            action = _gate(cfg, c >= theta, unit, span.fixed)
            if action == "stop":
                _text_done(m, st, s, t, span.tail)
                return
            if action == "branch":
                st.done = True
                _branch_out(rt, s, top_ids, top_lp, span.max_words if span.fixed else
                            st.words + (span.first if unit == 0 else 1))
                return
            st.unit = len(st.toks)
            if action == "last":
                st.cap = st.words + 1
        if is_eos:
            st.done = st.eos = True
            st.eos_id = t
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


def _text_done(m, st: _Row, s, t: int, tail: bool) -> None:
    """A stream's candidate text is complete; with lookahead_scoring its tokens go on from t."""
    if not tail:
        st.done = True
        return
    st.tail = True
    _tail_step(m, st, s, t)


# The official look-ahead decodes 1 + 6 tokens from a unit's first token, 5 more when they hold
# fewer than 2 words (and no end marker), and its proposer scores all of them.
_TAIL, _TAIL_LONG = 7, 12


def _tail_step(m, st: _Row, s, t: int) -> None:
    """lookahead_scoring: token t follows the complete text; keep it (scored, never committed)
    until the unit holds the official look-ahead's tokens, or ends with EOS."""
    if _tail_full(m, st.toks[st.unit:] + st.extra):
        st.done = True
        return
    st.extra.append(t)
    if t in m.eos or _tail_full(m, st.toks[st.unit:] + st.extra):
        st.done = True
        return
    s.feed = [t]


def _tail_full(m, unit: list) -> bool:
    if len(unit) >= _TAIL_LONG:
        return True
    if len(unit) < _TAIL:
        return False
    text = m.s.decode(unit[:_TAIL])
    low = text.lower()
    return len(text.split()) >= 2 or "</s>" in text or "question:" in low or "note:" in low


def _branch_out(rt, s, top_ids, top_lp, target: int) -> None:
    """A branch stream per top first token, reading the look-ahead it branches from."""
    m, st, p = rt.m, s.st, s.p
    st.branch = (top_ids, top_lp)
    for rank, (bt, blp) in enumerate(zip(top_ids, top_lp)):
        b = _Row(toks=[bt], words=st.words, lp=blp, target=target, base=list(st.toks), base_text=st.text, rank=rank)
        if bt in m.eos:  # nothing to decode: no stream needed
            b.done = b.eos = True
            b.eos_id = bt
            b.toks = []
            st.ready.append(b)
            continue
        b.text = b.word = next_piece(m, p, st.text, "", st.toks, bt)[0]
        b.word_tokens = 1
        rt.new_stream(p, "branch", st=b, feed=[bt], n=s.n, parent=s.uid)


def _branch_step(rt, s, cfg, t: int, lp: float, budget: int, tail: bool = False) -> None:
    """One greedy step of a branch stream, which ends where its word ends."""
    m, b, p = rt.m, s.st, s.p
    if b.tail:
        _tail_step(m, b, s, t)
        return
    if t in m.eos:
        b.words += 1
        b.done = b.eos = True
        b.eos_id = t
        return
    piece, head, word = next_piece(m, p, b.base_text + b.text, b.word, b.base + b.toks, t)
    head = head[len(b.base_text):]
    if b.word_tokens >= cfg.word_token_cap or starts_new_word(word, piece):
        b.words += 1
        if b.words >= b.target:
            _text_done(m, b, s, t, tail)
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


def _finish_proposal(rt, prop: Proposal, main, streams: list, cfg, text_rule: bool = False) -> None:
    """The proposal of a look-ahead stream `main` that has stopped, with its branch streams, all done."""
    st = main.st
    branches = [b.st for b in streams] + st.ready
    stream_of = {id(b.st): b for b in streams}  # an EOS branch (in st.ready) has none
    prop.words = st.words
    prop.tokens = len(st.toks) + len(st.extra) + sum(len(b.toks) + len(b.extra) for b in branches)
    if st.branch is not None:
        prop.branched = True
        ends = [(st.text + b.text, b) for b in select_branches(rt.m, cfg, sorted(branches, key=lambda b: b.rank))]
    else:
        ends = [(st.text, st)]
    for text, row in ends:
        own = official_words(text) if text_rule else text
        prop.texts.append(own + rt.m.s.decode([row.eos_id]) if text_rule and row.eos else own)
        prop.eos.append(row.eos)
        prop.own.append((own, row.extra))
        prop.decoded.append((main, stream_of.get(id(row))))


def _own(prop: Proposal, text: str, eos: bool) -> tuple[str, list]:
    """What the member that proposed candidate (text, eos) scores: its own text and look-ahead tokens."""
    for t, e, own in zip(prop.texts, prop.eos, prop.own):
        if t == text and e == eos:
            return own
    return next(own for t, own in zip(prop.texts, prop.own) if t == text)  # merged into an ending


def _score_request(mine: bool, prop: Proposal, p: int, c: int, text: str, eos: bool, cfg, bare: bool,
                   text_rule: bool) -> tuple:
    """Candidate c's score stream in a member, as Runtime.score_streams takes it: the proposer
    scores its own text (and, with lookahead_scoring, its look-ahead tokens); the others score
    the candidate's text, tokenized alone with bare_cross_scoring, and with official_text an
    end token glued on as text."""
    extra = ()
    if mine:
        text, extra = _own(prop, text, eos)
    elif text_rule and eos:
        eos = False
    # score_eos off: an ending is scored by its text, and by EOS only where it has no text
    return p, c, text, eos and (cfg.score_eos or not text), extra, bare and not mine
