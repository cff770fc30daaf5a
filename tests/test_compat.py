"""Issue 24: the compatibility mode. Each behaviour of the official code (method.md lists them as
its defects) is a DecodeConfig field whose None means "as compat says"; compat=true turns every
one on, a value given wins over compat. Each test pins one behaviour on tiny members, and fails
if the option were ignored: it compares with the option off or checks the exact scores.
"""
import dataclasses
import os

import pytest
import torch

from adafuse_lab.decoding import ConfigError, DecodeConfig, decode
from adafuse_lab.decoding.config import OFFICIAL
from adafuse_lab.decoding.methods.batch import make_stop, official_stop
from adafuse_lab.decoding.runtime import Member, Runtime
from adafuse_lab.decoding.words import official_words, split_words
from adafuse_lab.models import load_session
from test_decoding import (PROMPTS, _one_thread, full_nll, generate_ids, n_words, scribble_old_logits, steer, tiny,  # noqa: F401 (fixtures)
                           winners, wordy_table)


@pytest.fixture(scope="module")
def words2(tiny):
    """Two tiny:char members writing words (letters, then " ", "\\n", "." or ","), never EOS."""
    return [steer(tiny["char"], wordy_table(tiny["char"], seed=s)) for s in (1, 2)]


@pytest.fixture(scope="module")
def unsure2(tiny):
    """words2 never sure where a word starts: each forced whitespace (or "\n" after ",") is only
    8 nats above two other whitespace characters, so every word start has a margin below 1."""
    s = tiny["char"]
    spaces = [s.encode(c)[0] for c in (" ", "\n", "\t")]
    out = []
    for seed in (1, 2):
        table = wordy_table(s, seed=seed)
        for row in (table == 20.0).nonzero()[:, 0].tolist():
            table[row, table[row] == 20.0] = 8.0
            table[row, spaces] = torch.maximum(table[row, spaces], torch.zeros(3))
        out.append(steer(s, table))
    return out


def calls(monkeypatch):
    """Record every score stream: (id of the member's session, prompt row) -> [(ids fed, first scored, extra, bare)]."""
    seen: dict = {}
    real = Runtime.score_streams

    def record(self, p, text, eos, extra, bare):
        new, _, first = self.m.retokenize(p, text, eos, bare)
        seen.setdefault((id(self.m.s), p), []).append((new + list(extra), first, list(extra), bare))

    def spy(self, reqs):
        for p, _, text, eos, extra, bare in reqs:
            if bare and not eos:  # the stream that commits the text as it reads, then the bare one
                record(self, p, text, eos, (), False)
            record(self, p, text, eos, extra, bare)
        return real(self, reqs)
    monkeypatch.setattr(Runtime, "score_streams", spy)
    return seen


# ---- the fields and compat -------------------------------------------------------------

def test_defaults_are_ours_and_compat_turns_every_behaviour_on():
    ours, compat = DecodeConfig(), DecodeConfig(compat=True)
    for name, (official, mine) in OFFICIAL.items():
        assert getattr(ours, name) is None and getattr(compat, name) is None
        assert ours.effective(name) == mine and compat.effective(name) == official, name
    assert [compat.effective(n) for n in ("span_length", "max_span_rounds")] == [4, 5]
    assert [ours.effective(n) for n in ("span_length", "max_span_rounds")] == [1, 0]


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_a_field_given_wins_over_compat(name):
    official, mine = OFFICIAL[name]
    assert DecodeConfig(compat=True, **{name: mine}).effective(name) == mine
    cfg = DecodeConfig(**{name: official})
    assert cfg.effective(name) == official
    assert all(cfg.effective(n) == OFFICIAL[n][1] for n in OFFICIAL if n != name)  # the others stay ours


def test_compat_decodes_as_every_field_set(tiny):
    members = [tiny["bpe"], tiny["spm"]]
    base = DecodeConfig(max_new_tokens=24)
    every = dataclasses.replace(base, **{n: v for n, (v, _) in OFFICIAL.items()})
    compat = [o.text for o in decode("adafuse", members, PROMPTS, dataclasses.replace(base, compat=True))]
    assert compat == [o.text for o in decode("adafuse", members, PROMPTS, every)]
    assert compat != [o.text for o in decode("adafuse", members, PROMPTS, base)]


@pytest.mark.parametrize("cap", [0, 2])
def test_nothing_kept_is_a_view_of_a_replayed_logits_buffer(tiny, cap, monkeypatch):
    """With a feed cap the look-ahead scorer's stream is fed steps before its commit, which
    needs the logits at its committed end: kept as a copy, in fp32 too (.float() is no copy)."""
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=24, compat=True, max_span_rounds=0, feed_cap=cap)
    plain = decode("adafuse", members, PROMPTS, cfg)
    scribble_old_logits(monkeypatch)
    static = decode("adafuse", members, PROMPTS, cfg)
    assert [o.text for o in static] == [o.text for o in plain]
    flat = lambda outs: [x for o in outs for r in o.trace for c in r["candidates"] for x in c["nll"]]
    assert flat(static) == pytest.approx(flat(plain), abs=1e-5)


@pytest.mark.parametrize("kw, msg", [
    (dict(compat="yes"), "compat must be true or false"),
    (dict(bare_cross_scoring=1), "bare_cross_scoring must be true, false or null"),
    (dict(official_text="on"), "official_text must be true, false or null"),
    (dict(span_length=0), "span_length must be >= 1"),
    (dict(span_length=2.5), "span_length must be a whole number or null"),
    (dict(max_span_rounds=-1), "max_span_rounds must be >= 0"),
    (dict(max_span_rounds=True), "max_span_rounds must be a whole number or null"),
])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        DecodeConfig(**kw)


# ---- 1. bare_cross_scoring ----------------------------------------------------------------

def test_bare_cross_scoring(tiny):
    """A member that did not propose a candidate scores it tokenized alone, without its leading
    space, after the committed ids; the proposer scores it as the text reads. The committed text
    stays tokenized as it reads (the later rounds' scores equal a fresh tokenization's)."""
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(theta=1.0, B=3, max_new_tokens=16, bare_cross_scoring=True)
    outs = decode("adafuse", members, PROMPTS[:3], cfg)
    bare = joined = 0
    for prompt, o in zip(PROMPTS, outs):
        text = prompt
        for r in o.trace:
            for c in r["candidates"]:
                for k, s in enumerate(members):
                    m = Member(s, [text])
                    new, _, first = m.retokenize(0, c["text"], c["eos"], bare=k not in c["from"])
                    if first >= len(new):
                        continue
                    assert c["nll"][k] == pytest.approx(full_nll(s, new, first)[0], rel=1e-4, abs=1e-4)
                    if k not in c["from"]:
                        assert new[first:] == s.encode(c["text"].lstrip()) + ([min(s.eos_token_ids)] if c["eos"] else [])
                        joined_new, _, joined_first = m.retokenize(0, c["text"], c["eos"])
                        bare += 1
                        joined += c["nll"][k] != pytest.approx(full_nll(s, joined_new, joined_first)[0], rel=1e-4)
            text += r["candidates"][r["winner"]]["text"]
    assert bare >= 20 and joined >= 10  # scored bare, and that differs from scoring the text as it reads


def test_bare_tokenization():
    s = load_session("tiny:bpe")
    m = Member(s, ["Answer:"])
    new, keep, first = m.retokenize(0, " John", False, bare=True)
    assert new == m.ids[0] + s.encode("John") and keep == first == len(m.ids[0])
    assert s.encode("John") != s.encode(" John")
    new, _, first = m.retokenize(0, " John", True, bare=True)
    assert new[first:] == s.encode("John") + [min(s.eos_token_ids)]


# ---- 2. lookahead_scoring ------------------------------------------------------------------

def test_lookahead_scoring(words2, monkeypatch):
    """With B > 1 the proposer scores its candidate's tokens and the greedy tokens after them, up
    to 7 from the first token of the candidate's last unit (12 when those 7 hold fewer than 2
    words); they are never committed. (tiny:char: one token per character.)"""
    seen = calls(monkeypatch)
    cfg = DecodeConfig(theta=0.9, B=3, M=3, max_new_tokens=40, lookahead_scoring=True)
    outs = decode("adafuse", words2, PROMPTS[:3], cfg)
    with_tail = branched = 0
    for p, o in enumerate(outs):
        for k, s in enumerate(words2):
            streams = iter(seen[(id(s), p)])
            text = PROMPTS[p]
            for r in o.trace:
                mine = [r["candidates"][i]["text"] for i in r["members"][k]["proposed"]]
                for c in r["candidates"]:
                    fed, first, extra, _ = next(streams)
                    nll, _ = full_nll(s, fed, first)
                    assert c["nll"][k] == pytest.approx(nll, rel=1e-4, abs=1e-4)
                    if k not in c["from"]:
                        assert extra == []
                        continue
                    n = len(fed) - len(extra)
                    assert fed[:n] == Member(s, [text]).retokenize(0, c["text"], False)[0]
                    if len(text) - len(PROMPTS[p]) + len(c["text"]) >= cfg.max_new_tokens:
                        continue  # cut by the budget: no look-ahead after it
                    # the last unit: the branch word, or the last word of a greedy span
                    if r["members"][k]["branched"]:
                        unit_text = c["text"][len(os.path.commonprefix(mine)):]
                        branched += 1
                    else:
                        unit_text = split_words(c["text"])[-1]
                    unit = fed[n - len(unit_text):]
                    want = 7 if len(s.decode(unit[:7]).split()) >= 2 else 12
                    assert len(unit) == max(want, len(unit_text)), (c["text"], s.decode(unit))
                    with torch.inference_mode():  # the extra tokens are the member's greedy ones
                        logits = s.model(torch.tensor([fed])).logits[0]
                    assert logits[n - 1:-1].argmax(-1).tolist() == extra
                    if extra:
                        with_tail += 1
                        assert nll != pytest.approx(full_nll(s, fed[:n], first)[0], rel=1e-4)
                text += r["candidates"][r["winner"]]["text"]
            assert o.text == text[len(PROMPTS[p]):]  # the extra tokens are never committed
    assert with_tail >= 20 and branched >= 10


def test_lookahead_scoring_only_with_branches(words2, monkeypatch):
    seen = calls(monkeypatch)
    decode("adafuse", words2, PROMPTS[:2], DecodeConfig(theta=1.0, B=1, max_new_tokens=16, lookahead_scoring=True))
    assert all(extra == [] for v in seen.values() for _, _, extra, _ in v)


@pytest.mark.parametrize("name", ["words", "bpe"])
def test_lookahead_scoring_keeps_the_answer_of_a_single_member(tiny, words2, name):
    """One member: the winner is its own candidate, scored with or without the look-ahead;
    the answer (its greedy text) is the same: the extra tokens never enter the committed text,
    nor the logits the next round starts from."""
    member = words2[0] if name == "words" else tiny[name]
    cfg = DecodeConfig(theta=0.0, B=3, max_new_tokens=32)
    ref = decode("adafuse", [member], PROMPTS, cfg)
    got = decode("adafuse", [member], PROMPTS, dataclasses.replace(cfg, lookahead_scoring=True))
    assert [o.text for o in got] == [o.text for o in ref]
    assert sum(o.stats["rounds"] for o in got) >= 2 * len(PROMPTS)


# ---- 3. greedy_word2 ----------------------------------------------------------------------

def test_greedy_word2(tiny):
    """Official gating, B > 1: a member confident at word 1 and unsure at word 2 proposes word 1
    alone (ours), or word 1 plus its greedy word 2 (the official code)."""
    members = [tiny["bpe"], tiny["spm"]]
    found = 0
    for theta in (0.3, 0.5, 0.7, 0.9):
        cfg = DecodeConfig(theta=theta, B=3, max_new_tokens=64, official_gating=True, max_span_rounds=1)
        off = decode("adafuse", members, PROMPTS, cfg)
        on = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, greedy_word2=True))
        for a, b in zip(off, on):
            for ma, mb in zip(a.trace[0]["members"], b.trace[0]["members"]):
                conf = ma["conf"]
                if not (len(conf) == 2 and conf[0] >= theta > conf[1]):
                    assert ma["words"] == mb["words"]
                    continue
                if mb["tokens"] >= cfg.max_new_tokens:
                    continue  # word 2 cut by the budget
                found += 1
                assert mb["conf"] == pytest.approx(conf, abs=1e-5) and not ma["branched"] and not mb["branched"]
                one = a.trace[0]["candidates"][ma["proposed"][0]]["text"]
                two = b.trace[0]["candidates"][mb["proposed"][0]]["text"]
                assert (ma["words"], mb["words"]) == (1, 2) and len(ma["proposed"]) == len(mb["proposed"]) == 1
                assert two.startswith(one) and two != one  # word 1, then its greedy word 2
    assert found >= 2


# ---- 4. span_length and max_span_rounds ---------------------------------------------------

@pytest.mark.parametrize("theta, B", [(1.0, 1), (1.0, 3), (0.0, 1)])
def test_span_length(unsure2, theta, B):
    """The first unit holds span_length words, the confidence read at its start only: unsure, a
    member proposes span_length words (each branch too); sure, M - 1 more words after them."""
    base = DecodeConfig(theta=theta, B=B, M=3, max_new_tokens=128, max_span_rounds=1)  # round 1 only
    for L in (1, 3):
        outs = decode("adafuse", unsure2, PROMPTS[:2], dataclasses.replace(base, span_length=L))
        for o in outs:
            r = o.trace[0]
            want = L if theta == 1.0 else L + 2
            assert all(len(m["conf"]) == (1 if theta == 1.0 else 3) for m in r["members"])
            assert all(n_words(c["text"]) == want for c in r["candidates"]), [c["text"] for c in r["candidates"]]


def test_max_span_rounds(tiny):
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(theta=0.0, B=1, M=1, max_new_tokens=64)
    free = decode("adafuse", members, PROMPTS, cfg)
    assert max(o.stats["rounds"] for o in free) > 5
    only_rounds = {n: ours for n, (_, ours) in OFFICIAL.items() if n != "max_span_rounds"}
    for kw, cap in ((dict(max_span_rounds=2), 2), (dict(compat=True, **only_rounds), 5)):
        capped = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, **kw))
        for a, b in zip(free, capped):
            assert b.stats["rounds"] == min(cap, a.stats["rounds"])
            if a.stats["rounds"] > cap:
                assert b.stats["stopped_by"] == "rounds" and a.text.startswith(b.text) and a.text != b.text
    uncapped = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, compat=True, **only_rounds,
                                                                       max_span_rounds=0))
    assert [o.text for o in uncapped] == [o.text for o in free]


# ---- 5. official_text -------------------------------------------------------------------

def test_official_words():
    assert official_words(" Paris,\nthe  city\n") == " Paris, the city"
    assert official_words("\n\n72.") == " 72."
    assert official_words("\n") == "\n" and official_words("") == ""


@pytest.mark.parametrize("text, cut", [
    (" Paris.<|im_end|>", 7), (" Paris. Question: who", 8), (" Paris. QUESTION : who", 8),
    (" see note: x", 5), (" Note:", 1), (" footnote: x", None), (" a questionable: x", None), (" 3 < 4", 3),
    (" Paris.", None),
])
def test_official_stop(text, cut):
    assert official_stop(make_stop(None))(text) == cut
    assert official_stop(make_stop(["."]))(text) == (text.index(".") if "." in text else cut)


def cycle_member(tiny, text):
    """tiny:char writing `text` over and over (each character followed by one character)."""
    s = tiny["char"]
    tid = lambda c: s.encode(c)[0]
    table = torch.full((s.vocab_size, s.vocab_size), -1e4)
    table[:, tid(text[0])] = 0.0  # after the prompt
    for a, b in zip(text, text[1:] + text[0]):
        table[tid(a)] = -1e4
        table[tid(a), tid(b)] = 20.0
    return steer(s, table)


def test_official_text_stops_at_a_marker(tiny):
    member = cycle_member(tiny, " ab<cd")
    cfg = DecodeConfig(max_new_tokens=30)
    ours = decode("adafuse", [member], PROMPTS[:1], cfg)[0]
    assert "<" in ours.text and ours.stats["stopped_by"] == "budget"
    official = decode("adafuse", [member], PROMPTS[:1], dataclasses.replace(cfg, official_text=True))[0]
    assert official.text == " ab" and official.stats["stopped_by"] == "stop"


def test_official_text_drops_newlines(words2):
    cfg = DecodeConfig(theta=0.5, max_new_tokens=60)
    ours = decode("adafuse", words2, PROMPTS[:3], cfg)
    official = decode("adafuse", words2, PROMPTS[:3], dataclasses.replace(cfg, official_text=True))
    assert any("\n" in o.text for o in ours)
    for o in official:
        assert "\n" not in o.text and "  " not in o.text
        assert all(c["text"].startswith(" ") for r in o.trace for c in r["candidates"])


@pytest.fixture(scope="module")
def char_end(tiny, words2):
    """words2[0] emitting EOS after the first token of its greedy answer to PROMPTS[0] that is new
    at index 5 or later; and that answer."""
    s = tiny["char"]
    ids, _ = generate_ids(words2[0], PROMPTS[0], 24)
    first_new = next(i for i in range(5, len(ids)) if ids[i] not in ids[:i])
    table = wordy_table(s, seed=1)
    table[ids[first_new], min(s.eos_token_ids)] = 1e4
    return steer(s, table), s.decode(ids[:first_new + 1])


def test_official_text_glues_the_end_token(tiny, char_end):
    """An ending candidate carries the proposer's end token glued onto its last word: another
    member scores that text as text (no EOS); the answer ends without it."""
    member, answer = char_end
    other = tiny["bpe"]
    cfg = DecodeConfig(max_new_tokens=40, weights=(1.0, 0.0), official_text=True)
    out = decode("adafuse", [member, other], PROMPTS[:1], cfg)[0]
    last = winners(out)[-1]
    assert out.stats["stopped_by"] == "eos" and last["eos"] and last["text"].endswith("</s>")
    assert "</s>" not in out.text and out.text.endswith(last["text"][:-len("</s>")])
    text = PROMPTS[0]
    for r in out.trace:
        for c in r["candidates"]:
            if c["eos"]:
                assert c["text"].endswith("</s>") and c["from"] == [0]
                new, _, first = Member(other, [text]).retokenize(0, c["text"], False)
                assert c["nll"][1] == pytest.approx(full_nll(other, new, first)[0], rel=1e-4, abs=1e-4)
        text += r["candidates"][r["winner"]]["text"]
    ours = decode("adafuse", [member, other], PROMPTS[:1], dataclasses.replace(cfg, official_text=False))[0]
    assert ours.text == answer and not any(c["text"].endswith("</s>") for r in ours.trace for c in r["candidates"])
