"""Invariants of the decoding engine (adafuse_lab/decoding), on the tiny in-memory members.

The tiny members have random weights. `steer` adds a fixed bias to a member's logits
(per last input token) so that a test can force what it emits: only printable ASCII,
a multi-byte character split over byte tokens, EOS after a given token.
"""
import copy
import dataclasses
import gc
import math
import string
import warnings
from types import SimpleNamespace

import pytest
import torch

from adafuse_lab.decoding import ConfigError, DecodeConfig, decode
from adafuse_lab.decoding.criteria import Threshold
from adafuse_lab.decoding.methods import STEP, Batch, make_stop
from adafuse_lab.decoding.methods import tokens as token_methods
from adafuse_lab.decoding.methods.proposal import _gate, _Row
from adafuse_lab.decoding.runtime import Member, Runtime
from adafuse_lab.decoding.select import combine_scores, pick, select_branches
from adafuse_lab.decoding.words import has_content, split_words
from adafuse_lab.decoding.attention import get_backend
from adafuse_lab.models import load_session

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Hi",
    "The quick brown fox jumps over the lazy dog. Then",
    "Let's think step by step.\n",
    "x = 3 +",
]
METHODS_2 = ["adafuse", "single", "sweetspan", "coolfusion", "unite", "gac", "rerank"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models run faster on one thread, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return {n: load_session(f"tiny:{n}") for n in ("char", "bpe", "spm")}


def steer(session, bias):
    """A copy of `session` whose logits get `bias` added: a vector (every position) or a
    V x V table indexed by the position's input token (forces what follows a token)."""
    model = copy.deepcopy(session.model)
    seen = {}
    model.model.embed_tokens.register_forward_hook(lambda mod, args, out: seen.__setitem__("ids", args[0]))

    def add(mod, args, out):
        b = bias if bias.dim() == 1 else bias[seen["ids"][:, -out.shape[1]:]]
        return out + b.to(out.dtype)
    model.lm_head.register_forward_hook(add)
    return dataclasses.replace(session, model=model)


def ascii_bias(session, eos=True):
    """-1e4 on every token that is not one printable ASCII character (or EOS)."""
    ok = set(string.printable) - set("\r\x0b\x0c")
    bias = torch.full((session.vocab_size,), -1e4)
    for i in range(len(session.tokenizer)):
        text = session.decode([i])
        if (len(text) == 1 and text in ok and session.encode(text) == [i]) or (eos and i in session.eos_token_ids):
            bias[i] = 0.0
    return bias


@pytest.fixture(scope="module")
def char_ascii(tiny):
    """tiny:char emitting printable ASCII only: its output text re-tokenizes to the same ids.
    (Left alone it also emits bytes >= 0x80, invalid UTF-8 that no text can hold.)"""
    return steer(tiny["char"], ascii_bias(tiny["char"]))


def wordy_table(session, seed=0, noise=3.0):
    r"""A bigram bias for tiny:char that makes it write words: lowercase letters in a random
    rank order, a letter followed only by a higher-ranked one (random preferences, plus the
    model's own logits), and 9 letters, the last-ranked among them, always followed by " ",
    "\n", "." or ","; then "." -> " ", "," -> "\n". So every word ends within 18 letters.
    Nothing else is ever emitted, not even EOS."""
    g = torch.Generator().manual_seed(seed)
    V = session.vocab_size
    tid = lambda c: session.encode(c)[0]
    letters = [tid(c) for c in string.ascii_lowercase]
    order = [letters[i] for i in torch.randperm(26, generator=g).tolist()]
    ends = {order[-1]: " "}
    for i, e in zip(torch.randperm(25, generator=g)[:8].tolist(), [" "] * 5 + ["\n", ".", ","]):
        ends[order[i]] = e
    table = torch.full((V, V), -1e4)
    for a in range(V):
        if a in ends:
            table[a, tid(ends[a])] = 20.0
            continue
        after = order[order.index(a) + 1:] if a in order else order  # after a space, the prompt: any
        table[a, torch.tensor(after)] = noise * torch.randn(len(after), generator=g)
    table[tid("."), tid(" ")] = table[tid(","), tid("\n")] = 20.0
    return table


@pytest.fixture(scope="module")
def char_words(tiny):
    """tiny:char writing words separated by spaces, newlines and punctuation."""
    return steer(tiny["char"], wordy_table(tiny["char"], seed=1))


@pytest.fixture(scope="module")
def char_words2(tiny):
    return steer(tiny["char"], wordy_table(tiny["char"], seed=2))


def generate_ids(session, prompt, max_new_tokens):
    ids = torch.tensor([session.encode_prompt(prompt)])
    out = session.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    for i, t in enumerate(new):
        if t in session.eos_token_ids:
            return new[:i], True
    return new, False


def n_words(text):
    r"""Words that hold a letter or digit. A token such as "):\n" keeps its trailing newline in
    its word, while split_words, one character at a time, makes the "\n" a word of its own."""
    return sum(has_content(w) for w in split_words(text))


def winners(out):
    return [r["candidates"][r["winner"]] for r in out.trace]


# ---- 1. one member, B = 1, equals its greedy decoding ------------------------------

@pytest.mark.parametrize("method", ["single", "adafuse"])
@pytest.mark.parametrize("member", ["char_ascii", "char_words"])
def test_one_member_equals_greedy_generate(request, member, method):
    s, n = request.getfixturevalue(member), 24
    outs = decode(method, [s], PROMPTS, DecodeConfig(max_new_tokens=n, B=1))
    for prompt, out in zip(PROMPTS, outs):
        ids, eos = generate_ids(s, prompt, n)
        assert out.text == s.decode(ids), prompt
        assert out.stats["stopped_by"] == ("eos" if eos else "budget")
        assert out.stats["tokens"] == [len(ids)]


@pytest.mark.parametrize("theta", [0.0, 0.7, 1.0])
def test_one_member_b1_any_theta_equals_single(char_words, theta):
    """Confident spans of up to M words or single branch words: with B = 1 both are greedy."""
    cfg = DecodeConfig(max_new_tokens=30, B=1, theta=theta, M=2)
    a = decode("adafuse", [char_words], PROMPTS, cfg)
    b = decode("single", [char_words], PROMPTS, cfg)
    assert [o.text for o in a] == [o.text for o in b]
    assert max(len(o.trace) for o in a) >= 3


@pytest.mark.parametrize("name", ["bpe", "spm"])
def test_single_equals_generate_token_level(tiny, name):
    """tiny:bpe/tiny:spm with random weights emit stray UTF-8 byte tokens (their text is
    "\ufffd", which re-tokenizes as EF BF BD) and non-canonical token sequences, so a text
    ensemble cannot reproduce their ids; `single` keeps the member's own ids: same ids
    (count) and the same decoded text as generate()."""
    s = tiny[name]
    outs = decode("single", [s], PROMPTS, DecodeConfig(max_new_tokens=24))
    for prompt, out in zip(PROMPTS, outs):
        ids, eos = generate_ids(s, prompt, 24)
        assert out.stats["tokens"] == [len(ids)]
        assert out.text == s.decode(ids)
        assert out.stats["eos"] == eos


def test_multibyte_character_split_over_byte_tokens(tiny):
    """'é' is two byte tokens in tiny:char: the committed text holds 'é', not U+FFFD."""
    s = tiny["char"]
    chain = s.encode(":Xé\nok") + [s.eos_token_ids[0]]
    table = torch.zeros(s.vocab_size, s.vocab_size)
    for a, b in zip(chain, chain[1:]):
        table[a, b] = 100.0
    m = steer(s, table)
    assert generate_ids(m, "Say:", 12) == (s.encode("Xé\nok"), True)
    for method, cfg in [("single", DecodeConfig(B=1)), ("adafuse", DecodeConfig(B=1)),
                        ("adafuse", DecodeConfig(B=2, theta=1.0)), ("sweetspan", DecodeConfig()),
                        ("coolfusion", DecodeConfig())]:
        out = decode(method, [m], ["Say:"], dataclasses.replace(cfg, max_new_tokens=12))[0]
        assert out.text == "Xé\nok", (method, cfg)
        assert out.stats["eos"]


# ---- 2. cached scoring equals one plain forward ------------------------------------

def runtime(session, prompts, window_tokens=8, **cfg):
    """A member's runtime for `prompts` (what the engine decodes on)."""
    return Runtime(session, prompts, DecodeConfig(window_tokens=window_tokens, **cfg), get_backend("auto", "cpu"))


def full_nll(session, ids, first):
    """Mean NLL of ids[first:] from one uncached forward of the whole sequence."""
    with torch.inference_mode():
        logits = session.model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    lp = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    if ids[-1] in session.eos_token_ids:  # an ending: the probability of any of the member's EOS ids
        lp[-1] = torch.logsumexp(logp[-1, sorted(session.eos_token_ids)], -1)
    return float(-lp[first - 1:].mean()), logits[-1]


SCORE_CASES = [  # (prefix, candidate, eos)
    ("Question: hi\n", "\nThe", False),     # newline at the boundary
    ("Answer: ", "the answer", False),      # the prefix's trailing space merges with "the" (bpe, spm)
    ("It is 1", "2 apples", False),         # digits merge across the boundary
    ("Answer:", " Paris.", True),           # scored with EOS
    ("Natalia sold", " clips to 48 of her friends in April, and then she", False),  # longer than the window
]


@pytest.mark.parametrize("name", ["char", "bpe", "spm"])
def test_score_equals_full_forward(tiny, name):
    s = tiny[name]
    prefixes = [p for p, _, _ in SCORE_CASES]
    rt = runtime(s, prefixes, window_tokens=4)
    m = rt.m
    rows = list(range(len(SCORE_CASES))) + [0, 2]       # two candidates for some rows
    texts = [c for _, c, _ in SCORE_CASES] + [" Paris", "0 apples"]
    eos = [e for _, _, e in SCORE_CASES] + [False, False]
    nll = rt.score_texts(rows, texts, eos)
    merged = 0
    for i, (r, t, e) in enumerate(zip(rows, texts, eos)):
        new, keep, first = m.retokenize(r, t, e)
        assert new == s.encode_prompt(prefixes[r] + t) + ([min(s.eos_token_ids)] if e else [])  # fed as one EOS id
        merged += keep < len(m.ids[r])
        ref, _ = full_nll(s, new, first)
        assert nll[i] == pytest.approx(ref, rel=1e-4, abs=1e-4), (prefixes[r], t)
    if name != "char":
        assert merged >= 2  # the boundary re-tokenization path was exercised


@pytest.mark.parametrize("name", ["char", "bpe", "spm"])
def test_score_after_commits_equals_full_forward(tiny, name):
    """Commit candidates one by one (the cache grows incrementally, with holes where the
    boundary was re-tokenized) and score more on top: still one plain forward's values."""
    s = tiny[name]
    rt = runtime(s, ["Answer:", "Question: Who wrote the play?\nAnswer:"], window_tokens=4)
    m = rt.m
    steps = [(" It is 1", "\nSo the"), ("2 apples", " answer "), (" and ", "is 7"), ("the", "2.\n")]
    for k, pair in enumerate(steps):
        rows = [0, 1, 0, 1]
        texts = list(pair) + [" more", "\n"]
        nll = rt.score_texts(rows, texts, [False] * 4)
        for i, (r, t) in enumerate(zip(rows, texts)):
            new, _, first = m.retokenize(r, t, False)
            ref, _ = full_nll(s, new, first)
            assert nll[i] == pytest.approx(ref, rel=1e-4, abs=1e-4), (k, r, t)
        expected = [m.retokenize(r, t, False)[0] for r, t in enumerate(pair)]
        for r in range(2):
            rt.commit(r, 0)
        for r in range(2):
            assert m.ids[r] == expected[r]
            _, last = full_nll(s, m.ids[r], 1)
            assert torch.allclose(m.last_logits[r], last, atol=1e-4)  # what the next proposal reads
    texts = ["Answer: It is 12 apples and the", "Question: Who wrote the play?\nAnswer:\nSo the answer is 72.\n"]
    for r in range(2):
        assert m.ids[r] == s.encode_prompt(texts[r])


def test_score_streams_reuse_early_plans_until_commit(tiny):
    """A candidate that early scoring tokenized while it grew is not tokenized again when it is
    scored; a plan made before a commit is not used after it."""
    s = tiny["bpe"]
    rt = runtime(s, ["Answer:"], window_tokens=4)
    m, calls = rt.m, []
    encode = m._encode_first
    m._encode_first = lambda texts, heads: calls.extend(texts) or encode(texts, heads)  # texts tokenized
    rt.grow_early({0: {" It is": None}})
    rt.score_texts([0], [" It is"], [False])
    assert len(calls) == 1
    rt.grow_early({0: {" 12 apples": None}})  # planned on the ids before the commit
    rt.commit(0, 0)
    rt.score_texts([0], [" 12 apples"], [False])
    rt.commit(0, 0)
    assert m.ids[0] == s.encode_prompt("Answer: It is 12 apples") and len(calls) == 3


def sliding(session, kind, window=5):
    """`session` with its weights in a sliding-window architecture: Mistral (every layer
    slides) or Qwen2 with layer types (layer 0 slides, layer 1 attends to everything)."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
    c = session.model.config
    common = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                  num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                  num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                  tie_word_embeddings=False, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                  pad_token_id=c.pad_token_id)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=window, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=True, sliding_window=window, attention_bias=False,
                                             layer_types=["sliding_attention", "full_attention"], **common))
    state = {k: v for k, v in session.model.state_dict().items() if "rotary" not in k}
    model.load_state_dict(state, strict=False)
    return dataclasses.replace(session, model=model.eval())


@pytest.mark.parametrize("pair,slack,cap", [("bpe+spm", 320, 16), ("bpe+spm", 0, 16), ("bpe+mistral", 320, 16),
                                            ("spm+qwen2", 3, 16), ("bpe+spm", 320, 0), ("bpe+spm", 320, 2),
                                            ("spm+qwen2", 3, 1)])
def test_stream_scores_equal_full_forward(tiny, pair, slack, cap, monkeypatch):
    """The streaming engine reads candidates off a token tree in the prompt's cache row
    (a 4-D mask); every score in the trace is still one plain forward's mean NLL, also
    for sliding-window members whose window the prompts outgrow, when the fixed-width
    cache has so little slack that it compacts and widens often, and when a prompt's
    candidates are fed over several forwards (feed_cap) or all in one (0)."""
    from adafuse_lab.decoding.runtime import kv
    compactions = []
    real = kv.KVCache.compact
    monkeypatch.setattr(kv.KVCache, "compact", lambda self, need, live: (compactions.append(need), real(self, need, live))[1])
    split = []  # forwards that left a prompt's candidates partly fed
    forward = Runtime.forward
    monkeypatch.setattr(Runtime, "forward", lambda self, *a, **k: (forward(self, *a, **k), split.append(bool(self.unfed())))[0])
    a, b = pair.split("+")
    members = [tiny[a], tiny[b] if b in tiny else sliding(tiny[a], b)]
    cfg = DecodeConfig(theta=1.0, B=3, M=3, max_new_tokens=16, kv_slack=slack, feed_cap=cap)
    outs = decode("adafuse", members, PROMPTS, cfg)
    checked = 0
    for prompt, o in zip(PROMPTS, outs):
        text = prompt
        for r in o.trace:
            for c in r["candidates"]:
                for k, s in enumerate(members):
                    new, _, first = Member(s, [text], window_tokens=8).retokenize(0, c["text"], c["eos"])
                    if first >= len(new):
                        continue
                    ref, _ = full_nll(s, new, first)
                    assert c["nll"][k] == pytest.approx(ref, rel=1e-4, abs=1e-4), (pair, text, c["text"], k)
                    checked += 1
            text += r["candidates"][r["winner"]]["text"]
    assert checked >= 50
    assert slack >= 16 or len(compactions) > 5
    assert any(split) if 0 < cap <= 2 else not (cap == 0 and any(split))


# ---- 3. batched equals unbatched ----------------------------------------------------

@pytest.mark.parametrize("method", METHODS_2)
def test_batched_equals_unbatched(tiny, method):
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=16, batch_size=1)
    one = decode(method, members, PROMPTS, cfg)
    four = decode(method, members, PROMPTS, dataclasses.replace(cfg, batch_size=4))
    assert [o.text for o in one] == [o.text for o in four]
    assert [o.stats["tokens"] for o in one] == [o.stats["tokens"] for o in four]


def test_decoding_keeps_older_objects_out_of_the_collector_then_restores_it(tiny):
    """While decoding, the objects alive before it are frozen (gc.freeze: no full collection
    walks the members' modules and tables); after it, nothing is; a caller's own freeze stays."""
    if gc.get_freeze_count():
        pytest.skip("something froze objects before this test")
    during = []

    def stop(text):
        during.append(gc.get_freeze_count())
        return None
    members = [tiny["bpe"], tiny["spm"]]
    outs = decode("adafuse", members, PROMPTS[:2], DecodeConfig(max_new_tokens=6), stop)
    assert during and min(during) > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        assert [o.text for o in decode("adafuse", members, PROMPTS[:2], DecodeConfig(max_new_tokens=6), stop)] == \
            [o.text for o in outs]
        assert gc.get_freeze_count() > 0  # not unfrozen (objects that died leave it, so the count may fall)
    finally:
        gc.unfreeze()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_graphs_survive_the_other_members_widening():
    """With no slack the caches widen often, and a widening replaces that member's graphs while
    the other member's live on. Graphs captured on one stream share its cuBLAS workspace, which
    destroying any of them frees (pytorch/pytorch#193402): the other member's next replay would
    then read freed memory. Every capture succeeds, and the answers and scores are those of
    eager forwards."""
    from adafuse_lab.decoding.runtime.counters import COUNTS
    members = [load_session("tiny:bpe", device="cuda"), load_session("tiny:spm", device="cuda")]
    cfg = DecodeConfig(theta=1.0, B=3, M=3, max_new_tokens=32, kv_slack=0, batch_size=4)
    eager = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, cuda_graphs=False))
    before = sum(COUNTS[id(m.model), "captures"] for m in members)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed = decode("adafuse", members, PROMPTS, cfg)
    # a capture that fails falls back to eager forwards: right answers, but no graphs (an H100
    # lease saw "use_count > 0 INTERNAL ASSERT" here once the first graphs were destroyed)
    assert not [w for w in caught if "eagerly" in str(w.message)], [str(w.message) for w in caught]
    assert sum(COUNTS[id(m.model), "captures"] for m in members) - before > 10, "no graph was captured again"
    assert [o.text for o in graphed] == [o.text for o in eager]
    shape, values = _floats_apart([o.trace for o in eager])
    assert _floats_apart([o.trace for o in graphed])[0] == shape
    assert _floats_apart([o.trace for o in graphed])[1] == pytest.approx(values, rel=1e-4, abs=1e-4, nan_ok=True)


@pytest.mark.parametrize("method", METHODS_2)
def test_batches_in_flight_decode_as_one_batch_at_a_time(tiny, method):
    """batches_in_flight n: n batches take turns step by step (on CUDA each on a stream of its
    own). Each batch computes what it computes alone: the same answers, traces and forwards,
    whatever n, also when n exceeds the batches or the last batch is short."""
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=12, batch_size=2, theta=0.5)
    one = decode(method, members, PROMPTS, cfg)
    for n in (2, 3, 4):
        many = decode(method, members, PROMPTS, dataclasses.replace(cfg, batches_in_flight=n))
        assert [(o.text, o.trace, o.stats) for o in many] == [(o.text, o.trace, o.stats) for o in one]


@pytest.mark.parametrize("method", ["adafuse", "single", "unite"])
@pytest.mark.parametrize("n", [1, 2])
def test_reused_buffers_decode_as_fresh_ones(tiny, method, n, monkeypatch):
    """reuse_buffers (on CUDA: where graphs are captured; here switched on for the CPU): a
    batch takes over the KV cache of a finished batch of the same rows and width, refilled in
    place. Each batch computes what it computes with fresh buffers (decoded alone, in a call of
    its own): the same answers, traces and stats. Caches are taken over, for each member, and
    a batch of another width gets fresh ones (the held ones freed first)."""
    from adafuse_lab.decoding.runtime import reuse as reuse_mod, streams
    monkeypatch.setattr(streams, "REUSE_DEVICES", {"cuda", "cpu"})
    taken = []
    take = reuse_mod.Reuse.take

    def spy(self, key, *a):
        held = take(self, key, *a)
        taken.append((key[0], key[3], held is not None))
        if held is None:  # a batch that allocates its own cache: this member holds no other
            assert key[0] not in self.idle
        return held
    monkeypatch.setattr(reuse_mod.Reuse, "take", spy)
    members = [tiny["bpe"], tiny["spm"]]
    prompts = PROMPTS + ["Why?", "Once upon a time, " * 40 + "there"]  # 4 batches, the last one wider
    cfg = DecodeConfig(max_new_tokens=12, batch_size=2, theta=0.5, batches_in_flight=n)
    many = decode(method, members, prompts, cfg)
    calls = list(taken)
    alone = [o for i in range(0, len(prompts), 2) for o in decode(method, members, prompts[i:i + 2], cfg)]
    assert [(o.text, o.trace, o.stats) for o in many] == [(o.text, o.trace, o.stats) for o in alone]
    for model in [members[0].model] if method == "single" else [m.model for m in members]:
        mine = [(width, hit) for key, width, hit in calls if key == id(model)]
        # n=1: batches 2 and 3 take over the cache of the batch before; n=2: batch 3 takes batch 1's
        assert [hit for _, hit in mine] == [False] + [True] * (2 - n) + [False] * (n - 1) + [True, False], mine
        assert mine[-1][0] > mine[0][0], "the last batch has no wider cache"
    assert not any(hit for *_, hit in taken[len(calls):]), "a decode call took another call's cache"


def test_reuse_off_and_a_refilled_cache_equals_a_fresh_one(tiny, monkeypatch):
    """KVCache.refill writes a prefill as a new cache of that width holds it (buffers, committed
    columns, positions, owners, front), over whatever the cache held; it refuses other rows and
    too few columns. reuse_buffers=false takes nothing over."""
    from adafuse_lab.decoding.runtime import reuse as reuse_mod, streams
    from adafuse_lab.decoding.runtime.kv import KVCache
    from transformers import DynamicCache
    s = tiny["spm"]
    make = lambda prompts: runtime(s, prompts, max_new_tokens=8, kv_slack=4)
    used = make(["A longer prompt for the first cache, then", "Hi"])
    with torch.inference_mode():  # stale values everywhere, as a batch leaves them
        used.m.kv.cache.k[0].normal_()
        used.m.kv.owner.fill_(7)
    used.m.kv.front = 3
    caught = {}

    def as_wide(prefill, committed, pos, extra):  # a fresh cache as wide as the used one
        caught["args"] = (prefill, committed, pos)
        return KVCache(prefill, committed, pos, used.m.kv.width - committed.shape[1])
    monkeypatch.setattr(streams, "KVCache", as_wide)
    fresh = runtime(s, ["Hi there", "x ="], max_new_tokens=8, kv_slack=4)
    prefill, committed, pos = caught["args"]
    assert fresh.m.kv.width == used.m.kv.width
    with torch.inference_mode():
        assert used.m.kv.refill(prefill, committed, pos)
    a, b = used.m.kv, fresh.m.kv
    for x, y in zip(a.cache.k + a.cache.v + [a.committed, a.pos, a.owner], b.cache.k + b.cache.v + [b.committed, b.pos, b.owner]):
        assert torch.equal(x, y)
    assert (a.front, a.compactions) == (b.front, 0)
    assert not used.m.kv.refill(prefill, committed[:1], pos[:1])  # other rows
    wide = DynamicCache()
    for layer, (k, v) in enumerate(zip(a.cache.k, a.cache.v)):
        wide.update(torch.cat([k, k], 2), torch.cat([v, v], 2), layer)
    n = 2 * a.width
    assert not used.m.kv.refill(wide, committed.new_ones((2, n)), pos.new_zeros((2, n)))  # too few columns
    monkeypatch.setattr(streams, "REUSE_DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(reuse_mod.Reuse, "take", lambda *a: pytest.fail("reuse_buffers=false took a cache"))
    decode("adafuse", [tiny["bpe"], s], PROMPTS, DecodeConfig(max_new_tokens=4, batch_size=2, reuse_buffers=False))


def test_batches_in_flight_take_turns_at_each_step(tiny):
    """The batches really interleave: the second batch's first step comes before the first
    batch has finished (else the option would run them one after the other)."""
    from adafuse_lab.decoding.methods import batch as batch_mod
    order = []
    append = batch_mod.Batch.append

    def record(self, p, *a, **kw):
        order.append(self.idx[0])
        return append(self, p, *a, **kw)
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=12, batch_size=2, theta=0.5, batches_in_flight=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_mod.Batch, "append", record)
        decode("adafuse", members, PROMPTS[:4], cfg)
    first_of_second = order.index(2)
    assert 0 in order[first_of_second:], order  # batch 0 still committing after batch 2 began


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need CUDA")
def test_batches_in_flight_on_cuda_streams():
    """On CUDA, batches in flight queue their work on streams of their own, with graphs: the
    answers are those of one batch at a time (scores within float rounding)."""
    members = [load_session("tiny:bpe", device="cuda"), load_session("tiny:spm", device="cuda")]
    cfg = DecodeConfig(theta=0.5, B=3, max_new_tokens=32, batch_size=2)
    one = decode("adafuse", members, PROMPTS, cfg)
    many = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, batches_in_flight=3))
    assert [o.text for o in many] == [o.text for o in one]
    shape, values = _floats_apart([o.trace for o in one])
    assert _floats_apart([o.trace for o in many])[0] == shape
    assert _floats_apart([o.trace for o in many])[1] == pytest.approx(values, rel=1e-4, abs=1e-4, nan_ok=True)


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_small_graphs_add_scores_once_and_pads_nothing(device):
    """The scores added through SmallGraphs (captured on CUDA, eager on the CPU, both on an
    index padded to a bucket) equal plain arithmetic, call after call of one captured layout,
    and the pad rows (computed on index 0) add nothing to slot 0."""
    from adafuse_lab.decoding.runtime.graphs import SmallGraphs
    from adafuse_lab.decoding.runtime.streams import _add_here_nll
    from adafuse_lab.decoding.scoring import token_log_probs
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11, device=device)
    eos = torch.tensor([10], device=device)
    nll = torch.zeros(5, 2, device=device)
    small = SmallGraphs(device, "test", capture=device == "cuda")
    want = torch.zeros(5, 2)
    for r, c, t, slot in [([0, 2, 1], [1, 3, 0], [4, 10, 7], [3, 1, 3]), ([2, 0, 0], [2, 0, 3], [1, 2, 3], [2, 4, 4])]:
        small(_add_here_nll, (logits, nll, eos), [r, c, t, slot, [1] * 3])  # 3 rows in a bucket of 4
        lp = token_log_probs(logits[r, c].cpu(), torch.tensor(t), eos.cpu())
        want.index_add_(0, torch.tensor(slot), torch.stack([-lp, torch.ones(3)], 1))
    assert want[0].tolist() == [0.0, 0.0]
    assert nll.cpu() == pytest.approx(want, abs=1e-5)
    assert len(small.graphs) == (device == "cuda") and small.failed is None


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_commit_through_small_graphs_writes_the_wins_only(device):
    """commit_many's device work as one SmallGraphs call: on an index of zeros (what a capture's
    warm-up runs, valid 0) it changes nothing; with the wins padded by copies of the first it
    writes what plain arithmetic gives for those wins, and nothing else."""
    from adafuse_lab.decoding.runtime.graphs import SmallGraphs
    from adafuse_lab.decoding.runtime.kv import NOBODY
    from adafuse_lab.decoding.runtime.streams import _commit_wins
    torch.manual_seed(0)
    R, W, P, S, V = 3, 8, 3, 6, 5
    committed = torch.rand(R, W, device=device) > 0.5
    pos = torch.arange(W, device=device).repeat(R, 1)
    owner = torch.randint(-1, 4, (R, W), device=device, dtype=torch.int32)
    last_logits, last = torch.randn(P, V, device=device), torch.randn(S, V, device=device)
    nll = torch.rand(S, 2, device=device)
    state = lambda: [x.clone().cpu() for x in (committed, pos, owner, last_logits, last, nll)]
    fixed = (committed, pos, owner, last_logits, last, nll)
    before = state()
    _commit_wins(*fixed, torch.zeros(8, 4, dtype=torch.long, device=device), True)
    assert all(torch.equal(a, b) for a, b in zip(state(), before))
    # two wins: row 2 (prompt 1, owner 3, also 1, hide from 5, committed up to 7) and row 0 (prompt
    # 2, owner 2, no second stream, hide from 3, no end); padded to 4 with copies of the first
    wins = [[2, 0], [3, 2], [1, -2], [5, 3], [7, 1 << 40], [1, 1], [1, 2], [4, 0]]
    small = SmallGraphs(device, "test", capture=device == "cuda")
    small(_commit_wins, fixed, [w + w[:1] * 2 for w in wins], (True,))
    c, o = before[0].clone(), before[2].clone()
    for r, own, also, hide, end in zip(*wins[:5]):
        written = (o[r] == own) | (o[r] == also)
        c[r] = (c[r] & (before[1][r] < hide)) | (written & (before[1][r] < end))
        o[r] = o[r].masked_fill(written, NOBODY)
    ll, n = before[3].clone(), before[5].clone()
    ll[[1, 2]] = before[4][[4, 0]]
    n[[4, 0]] = 0
    after = state()
    assert torch.equal(after[0], c) and torch.equal(after[2], o) and torch.equal(after[3], ll) and torch.equal(after[5], n)
    assert torch.equal(after[1], before[1]) and torch.equal(after[4], before[4])


def _floats_apart(x, out=None):
    """(x with every float as "f", the floats in order): structures compare exactly, values
    within a tolerance (CUDA's index_add_ sums in no fixed order)."""
    out = [] if out is None else out
    if isinstance(x, float):
        out.append(x)
        return "f", out
    if isinstance(x, dict):
        return {k: _floats_apart(v, out)[0] for k, v in x.items()}, out
    if isinstance(x, (list, tuple)):
        return [_floats_apart(v, out)[0] for v in x], out
    return x, out


def test_batched_equals_unbatched_branching(tiny):
    members = [tiny["char"], tiny["bpe"]]
    cfg = DecodeConfig(max_new_tokens=16, batch_size=1, theta=0.9, branch_select="distinct")
    one = decode("adafuse", members, PROMPTS, cfg)
    four = decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, batch_size=4))
    assert [o.text for o in one] == [o.text for o in four]
    assert [[r["winner"] for r in o.trace] for o in one] == [[r["winner"] for r in o.trace] for o in four]


@pytest.mark.parametrize("method", ["adafuse", "sweetspan", "coolfusion"])
def test_feed_cap_changes_only_how_candidates_are_fed(tiny, method):
    """Candidates fed over several forwards (feed_cap 1, 3) score and decode as fed in one (0)."""
    members = [tiny["char"], tiny["bpe"]]
    cfg = DecodeConfig(max_new_tokens=16, batch_size=4, theta=0.9, feed_cap=0)
    whole = decode(method, members, PROMPTS, cfg)
    flat = lambda outs: [x for o in outs for r in o.trace for c in r["candidates"] for x in c["nll"]]
    for cap in (1, 3):
        split = decode(method, members, PROMPTS, dataclasses.replace(cfg, feed_cap=cap))
        assert [o.text for o in split] == [o.text for o in whole], cap
        assert flat(split) == pytest.approx(flat(whole), abs=1e-4), cap
        assert sum(o.stats["forwards"][0] for o in split) > sum(o.stats["forwards"][0] for o in whole), cap


@pytest.mark.parametrize("method,pair,theta", [("adafuse", "char+bpe", 0.9), ("adafuse", "bpe+spm", 1.0),
                                                ("adafuse", "spm+char", 0.0), ("sweetspan", "char+bpe", 0.9),
                                                ("coolfusion", "bpe+spm", 0.9)])
def test_early_scoring_changes_only_when_candidates_are_fed(tiny, method, pair, theta, monkeypatch):
    """Candidates scored as they grow decode, score and trace as candidates scored after they
    are complete, in fewer forwards (a round no longer spends one on scoring)."""
    steps = []
    forward = Runtime.forward
    monkeypatch.setattr(Runtime, "forward", lambda self, *a, **k: (steps.append(1), forward(self, *a, **k))[1])
    members = [tiny[m] for m in pair.split("+")]
    cfg = DecodeConfig(max_new_tokens=24, batch_size=4, theta=theta, early_scoring=False)
    late = decode(method, members, PROMPTS, cfg)
    late_steps, steps[:] = len(steps), []
    early = decode(method, members, PROMPTS, dataclasses.replace(cfg, early_scoring=True))
    flat = lambda outs: [x for o in outs for r in o.trace for c in r["candidates"] for x in c["nll"]]
    assert [o.text for o in early] == [o.text for o in late]
    assert [[r["winner"] for r in o.trace] for o in early] == [[r["winner"] for r in o.trace] for o in late]
    assert flat(early) == pytest.approx(flat(late), abs=1e-4)
    assert len(steps) < late_steps, (len(steps), late_steps)


@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
def test_own_candidates_are_scored_from_the_streams_that_decoded_them(tiny, theta, monkeypatch):
    """Early scoring takes a member's own candidates' scores from its look-ahead and branch
    streams (no score stream re-feeds their tokens) and commits those streams' columns when
    one wins: same answers, winners and scores as score streams fed anew, fewer tokens fed."""
    from adafuse_lab.decoding.runtime.counters import COUNTS
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=24, batch_size=4, theta=theta, trace=True)
    fed = lambda: sum(v for (key, name), v in COUNTS.items() if name == "fed")
    taken = []
    as_decoded = Runtime._as_decoded
    monkeypatch.setattr(Runtime, "_as_decoded", lambda self, *a: (taken.append(as_decoded(self, *a)), taken[-1])[1])
    start = fed()
    shared = decode("adafuse", members, PROMPTS, cfg)
    shared_fed, start = fed() - start, fed()
    assert sum(taken) > 0
    monkeypatch.setattr(Runtime, "_as_decoded", lambda self, *a: False)
    fresh = decode("adafuse", members, PROMPTS, cfg)
    flat = lambda outs: [x for o in outs for r in o.trace for c in r["candidates"] for x in c["nll"]]
    assert [o.text for o in shared] == [o.text for o in fresh]
    assert [[r["winner"] for r in o.trace] for o in shared] == [[r["winner"] for r in o.trace] for o in fresh]
    assert flat(shared) == pytest.approx(flat(fresh), abs=1e-4)
    assert shared_fed < fed() - start


def test_early_scoring_stays_off_where_the_scored_text_is_not_the_grown_one(tiny):
    """Under the official code's behaviours (compat: bare cross-scoring, official text, look-ahead
    tails) candidates are scored after they are complete, early_scoring or not."""
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=16, batch_size=4, compat=True)
    on, off = (decode("adafuse", members, PROMPTS, dataclasses.replace(cfg, early_scoring=e)) for e in (True, False))
    assert [o.stats["forwards"] for o in on] == [o.stats["forwards"] for o in off]
    assert [o.text for o in on] == [o.text for o in off]


@pytest.mark.parametrize("theta,tail", [(0.0, False), (0.5, False), (1.0, False), (0.5, True)])
def test_prefetched_peeks_decode_as_fresh_ones(tiny, theta, tail, monkeypatch):
    """Runtime.prefetch() queues the next step's confidences and top-k right behind a member's
    forward: the peeks it serves give what peeks computed when asked give, and a write to the
    newest logits after it (a commit with a look-ahead tail) is not missed. It serves every peek
    and score but those after such a write, winners that were score streams included: a read
    that waits on a GPU waits for the other member's forward too."""
    from adafuse_lab.decoding.runtime import streams
    from adafuse_lab.decoding.runtime.counters import COUNTS
    from adafuse_lab.decoding.runtime.streams import _Peeked
    waits = lambda: sum(v for (_, name), v in COUNTS.items() if name in ("sync_peeks", "sync_reads"))
    monkeypatch.setattr(streams, "PREFETCH_DEVICES", {"cuda", "cpu"})
    members = [tiny["bpe"], tiny["spm"]]
    # without member turns: there every member's copies land before a round is scored, as reads
    # that wait would (turns read the other members' scores a turn later: test_member_turns_*)
    cfg = DecodeConfig(max_new_tokens=24, batch_size=4, theta=theta, B=2 if tail else 3, lookahead_scoring=tail,
                       member_turns=False)
    asked, served = [], []
    peek, rows = Runtime.peek, _Peeked.rows
    monkeypatch.setattr(Runtime, "peek", lambda self, *a: (asked.append(1), peek(self, *a))[1])
    monkeypatch.setattr(_Peeked, "rows", lambda self: (served.append(1), rows(self))[1])
    before = waits()
    prefetched = decode("adafuse", members, PROMPTS, cfg)
    assert len(served) > 0.8 * len(asked), (len(served), len(asked))
    assert tail or waits() == before
    monkeypatch.setattr(Runtime, "prefetch", lambda self, *a: None)
    fresh = decode("adafuse", members, PROMPTS, cfg)
    assert [o.text for o in prefetched] == [o.text for o in fresh]
    assert [o.trace for o in prefetched] == [o.trace for o in fresh]


@pytest.mark.parametrize("method,theta", [("adafuse", 0.0), ("adafuse", 0.5), ("adafuse", 1.0), ("sweetspan", 0.5)])
def test_member_turns_decode_as_one_schedule(tiny, method, theta, monkeypatch):
    """member_turns: each member in turn decides and launches its forward while the other
    members' forwards run, and reads their scores from copies queued behind those forwards from
    their next turn on. The answers and scores are those of the schedule without turns (every
    member decides, then every member's forward); the shapes of the forwards differ, so the
    scores agree within float rounding. Every peek and score is served by those copies."""
    from adafuse_lab.decoding.runtime import streams
    from adafuse_lab.decoding.runtime.counters import COUNTS
    monkeypatch.setattr(streams, "PREFETCH_DEVICES", {"cuda", "cpu"})
    waits = lambda: sum(v for (_, name), v in COUNTS.items() if name in ("sync_peeks", "sync_reads"))
    before = waits()
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=24, batch_size=4, theta=theta, B=3)
    turns = decode(method, members, PROMPTS, dataclasses.replace(cfg, member_turns=True))
    assert waits() == before
    one = decode(method, members, PROMPTS, dataclasses.replace(cfg, member_turns=False))
    assert [o.text for o in turns] == [o.text for o in one]

    def rounds(outs):
        return _floats_apart([[(r["candidates"], r["winner"]) for r in o.trace] for o in outs])
    shape, values = rounds(one)
    assert rounds(turns)[0] == shape
    assert rounds(turns)[1] == pytest.approx(values, rel=1e-5, abs=1e-5, nan_ok=True)


@pytest.mark.parametrize("method", ["single", "adafuse"])
def test_compiled_forwards_decode_as_eager(tiny, method):
    """compile=true runs the decode forwards through torch.compile (inductor; on CPU it builds
    C++ kernels): the same answers and, up to float rounding, the same scores."""
    members = [tiny["bpe"], tiny["spm"]][: 1 if method == "single" else 2]
    cfg = DecodeConfig(max_new_tokens=12, batch_size=3, theta=0.9, feed_cap=2)
    eager = decode(method, members, PROMPTS[:3], cfg)
    from torch._dynamo.utils import counters
    counters.clear()
    compiled = decode(method, members, PROMPTS[:3], dataclasses.replace(cfg, compile=True))
    assert all("_adafuse_compiled" in m.model.__dict__ for m in members)
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph per forward
    assert [o.text for o in compiled] == [o.text for o in eager]
    flat = lambda outs: [x for o in outs for r in (o.trace or []) for c in r["candidates"] for x in c["nll"]]
    assert flat(compiled) == pytest.approx(flat(eager), abs=1e-4)


def scribble_old_logits(monkeypatch) -> None:
    """Replayed CUDA graphs write each forward's logits into a buffer a later replay
    overwrites: a CPU stand-in that scribbles over a member's logits once its next forward is
    done (anything the runtime keeps past that must be a copy)."""
    from adafuse_lab.decoding.runtime import streams
    real, last = streams.eager_forward, {}

    def replayed(model, *args):
        out = real(model, *args)
        if id(model) in last:
            last[id(model)].normal_()
        last[id(model)] = out
        return out
    monkeypatch.setattr(streams, "eager_forward", replayed)


@pytest.mark.parametrize("method", METHODS_2)
def test_no_method_keeps_a_view_of_a_forwards_logits(tiny, method, monkeypatch):
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=16, batch_size=4, feed_cap=2)
    plain = decode(method, members, PROMPTS, cfg)
    scribble_old_logits(monkeypatch)
    assert [o.text for o in decode(method, members, PROMPTS, cfg)] == [o.text for o in plain]


# ---- 4. members with different tokenizers, each able to win ------------------------

@pytest.mark.parametrize("k", [0, 1])
def test_weights_force_each_member_to_win(tiny, k):
    weights = tuple(1.0 if j == k else 0.0 for j in range(2))
    outs = decode("adafuse", [tiny["bpe"], tiny["spm"]], PROMPTS[:3], DecodeConfig(max_new_tokens=16, weights=weights))
    rounds = [r for o in outs for r in o.trace]
    assert any(r["candidates"][r["winner"]]["from"] == [k] for r in rounds)  # a candidate only member k proposed
    for r in rounds:  # and member k's score alone decides
        own = [c["nll"][k] if c["nll"][k] is not None else math.inf for c in r["candidates"]]
        assert r["winner"] == min(range(len(own)), key=lambda i: (own[i], i))


def test_three_members_end_to_end(tiny, char_ascii):
    members = [char_ascii, tiny["bpe"], tiny["spm"]]
    outs = decode("adafuse", members, PROMPTS[:3], DecodeConfig(max_new_tokens=16))
    froms = set()
    for o in outs:
        assert o.stats["members"] == ["tiny:char", "tiny:bpe", "tiny:spm"]
        assert len(o.stats["tokens"]) == len(o.stats["forwards"]) == 3
        assert o.text == "".join(w["text"] for w in winners(o))
        for r in o.trace:
            assert len(r["members"]) == 3
            assert all(len(c["nll"]) == 3 for c in r["candidates"])
            froms.update(k for c in r["candidates"] for k in c["from"])
    assert froms == {0, 1, 2}


# ---- 5. the trace -------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["margin", "entropy", "prob"])
def test_trace_records_every_round(tiny, criterion):
    K, cfg = 2, DecodeConfig(max_new_tokens=20, criterion=criterion)
    outs = decode("adafuse", [tiny["bpe"], tiny["spm"]], PROMPTS, cfg)
    for o in outs:
        assert o.stats["rounds"] == len(o.trace) >= 1
        assert o.text == "".join(w["text"] for w in winners(o))
        for r in o.trace:
            for m in r["members"]:
                assert len(m["conf"]) == len(m["margin"]) == len(m["entropy"]) == len(m["theta"]) >= 1
                assert all(0.0 <= x <= 1.0 for x in m["margin"] + m["entropy"])
                if criterion == "prob":  # p1 >= p1 - p2
                    assert all(c >= x for c, x in zip(m["conf"], m["margin"]))
                else:
                    assert m["conf"] == m[criterion]
                assert isinstance(m["branched"], bool) and m["forwards"] >= 1
                # it branched exactly when its last word-start confidence was below theta
                assert m["branched"] == (m["conf"][-1] < m["theta"][-1])
            # each member's own candidates, in its order: exactly those listing it, one unless it branched
            for k, m in enumerate(r["members"]):
                assert sorted(m["proposed"]) == [i for i, c in enumerate(r["candidates"]) if k in c["from"]]
                assert len(m["proposed"]) == 1 or m["branched"]
            keys = [(c["text"], c["eos"]) for c in r["candidates"]]
            assert len(set(keys)) == len(keys)  # union by exact text
            for c in r["candidates"]:
                assert len(c["nll"]) == K and c["from"] and set(c["from"]) <= {0, 1}
                finite = [x for x in c["nll"] if x is not None]
                assert c["score"] == pytest.approx(sum(finite) / len(finite))
            scores = [c["score"] if c["score"] is not None else math.inf for c in r["candidates"]]
            assert r["winner"] == pick(scores)


def test_theta_one_always_branches_into_up_to_b(tiny):
    B = 3
    outs = decode("adafuse", [tiny["bpe"], tiny["spm"]], PROMPTS, DecodeConfig(max_new_tokens=12, theta=1.0, B=B))
    full = 0
    for o in outs:
        for r in o.trace:
            for k, m in enumerate(r["members"]):
                assert m["branched"] and m["words"] == 0 and len(m["conf"]) == 1  # the first word start
                n = sum(k in c["from"] for c in r["candidates"])
                assert 1 <= n <= B
                full += n == B
            for c in r["candidates"]:  # a branch is one word
                assert n_words(c["text"]) <= 1
    assert full > 0


@pytest.mark.parametrize("M", [1, 3])
def test_theta_zero_one_greedy_span_of_at_most_m_words(tiny, M):
    outs = decode("adafuse", [tiny["bpe"], tiny["spm"]], PROMPTS, DecodeConfig(max_new_tokens=24, theta=0.0, M=M))
    longest = 0
    for o in outs:
        for r in o.trace:
            for k, m in enumerate(r["members"]):
                assert not m["branched"] and len(m["conf"]) <= M and m["words"] <= M
                assert sum(k in c["from"] for c in r["candidates"]) == 1
            for c in r["candidates"]:
                n = n_words(c["text"])
                assert n <= M
                longest = max(longest, n)
    assert longest == M


def test_threshold_fixed_and_dynamic():
    assert Threshold(cfg_(theta=0.4))(0, 10) == 0.4
    dyn = Threshold(cfg_(theta=0.4, threshold="dynamic", dyn_window=5, dyn_quantile=0.5, dyn_position_slope=1.0))
    for c in [0.9, 0.1, 0.2]:
        dyn.observe(7, c)
    assert dyn(7, 0) == 0.4                      # fewer than 4 confidences seen: the fixed theta
    for c in [0.3, 0.5, 0.6]:
        dyn.observe(7, c)
    assert dyn(7, 0) == pytest.approx(0.3)       # median of the last 5: 0.1 0.2 0.3 0.5 0.6
    assert dyn(7, 20) == pytest.approx(0.5)      # + slope * words / 100
    assert dyn(8, 0) == 0.4                      # per prompt


def test_trace_off(tiny):
    out = decode("adafuse", [tiny["bpe"]], PROMPTS[:1], DecodeConfig(max_new_tokens=8, trace=False))[0]
    assert out.trace is None and out.stats["rounds"] >= 1


# ---- 6. each rule on a constructed case ---------------------------------------------

def cfg_(**kw):
    return DecodeConfig(**kw)


def test_combine_mean_and_weights():
    assert combine_scores([[1.0, 3.0], [3.0, 5.0]], cfg_()) == [2.0, 4.0]
    assert combine_scores([[1.0], [5.0]], cfg_(weights=(3.0, 1.0))) == [2.0]
    assert combine_scores([[1.0], [5.0]], cfg_(weights=(0.0, 1.0))) == [5.0]
    with pytest.raises(ValueError):
        combine_scores([[1.0], [5.0]], cfg_(weights=(1.0,)))


def test_combine_ppl():
    assert combine_scores([[0.0], [math.log(3.0)]], cfg_(combine="ppl")) == [pytest.approx(2.0)]


def test_combine_skips_non_finite():
    nan, inf = float("nan"), float("inf")
    assert combine_scores([[nan, 2.0], [1.0, inf], [3.0, 4.0]], cfg_()) == [2.0, 3.0]
    assert combine_scores([[nan], [nan]], cfg_()) == [math.inf]


def test_outlier_filter():
    f = cfg_(outlier_filter=True)
    assert combine_scores([[1.0], [2.0], [30.0]], f) == [2.0]               # 30 > 10: drop max and min
    assert combine_scores([[1.0], [1.0], [2.0], [50.0]], f) == [1.5]        # one max and one min only
    assert combine_scores([[1.0], [2.0], [5.0]], f) == [pytest.approx(8 / 3)]  # 5 <= 10: kept
    assert combine_scores([[1.0], [30.0]], f) == [15.5]                     # fewer than 3 members
    assert combine_scores([[1.0], [2.0], [30.0]], cfg_()) == [11.0]         # off by default
    assert combine_scores([[1.0], [2.0], [2.5]], cfg_(outlier_filter=True, outlier_ratio=2.0)) == [2.0]
    assert combine_scores([[float("nan")], [2.0], [30.0]], f) == [16.0]     # non-finite first: 2 left


def test_pick_lowest_then_earliest():
    assert pick([3.0, 1.0, 2.0]) == 1
    assert pick([2.0, 1.0, 1.0]) == 1
    assert pick([math.inf, math.inf]) == 0


def rows_(*specs):
    return [_Row(toks=[i + 1], text=t, eos=e, lp=lp) for i, (t, e, lp) in enumerate(specs)]


def test_select_branches_topk_and_distinct():
    bs = rows_((" cat", False, -0.1), ("cat", False, -0.2), (" dog", False, -0.3), (" cat", True, -0.4),
               (" cow", False, -0.5))
    assert [b.text for b in select_branches(None, cfg_(B=2), bs)] == [" cat", "cat"]
    kept = select_branches(None, cfg_(B=3, branch_select="distinct"), bs)
    assert [(b.text, b.eos) for b in kept] == [(" cat", False), (" dog", False), (" cat", True)]


def test_select_branches_semantic():
    emb = torch.zeros(10, 2)
    emb[1] = torch.tensor([1.0, 0.0])   # " cat"
    emb[2] = torch.tensor([1.0, 0.01])  # " cats": close to " cat"
    emb[3] = torch.tensor([0.0, 1.0])   # " dog": far
    emb[4] = torch.tensor([1.0, 0.0])   # "cat": same word as the first
    member = SimpleNamespace(s=SimpleNamespace(model=SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(weight=emb))),
                             eos={0})
    bs = rows_((" cat", False, -0.1), (" cats", False, -0.2), (" dog", False, -0.6))
    bs = [bs[0], _Row(toks=[4], text="cat", lp=-0.15)] + bs[1:]
    sem = lambda lam: [b.text for b in select_branches(member, cfg_(B=2, branch_select="semantic", diversity_lambda=lam), bs)]
    assert sem(0.0) == [" cat", " cats"]  # log-probability only; the repeated word is skipped
    assert sem(1.0) == [" cat", " dog"]   # -0.6 + 1.0 * (1 - 0) beats -0.2 + ~0


def set_probs(member, row, probs):
    logits = torch.full_like(member.last_logits[row], -40.0)
    for text, p in probs.items():
        logits[member.s.encode(text)[0]] = math.log(p)
    member.last_logits = member.last_logits.clone()  # an inference tensor: no in-place update
    member.last_logits[row] = logits


def token_round(tiny, fn, cfg):
    """One step of a token-level method from hand-set next-token distributions:
    tiny:char: q .6, y .4; tiny:bpe: " the" .6, y .4. Averaged, y (.4) beats q and " the" (.3)."""
    prompts = ["Answer:"]
    cfg = dataclasses.replace(cfg, max_new_tokens=1)
    members = [runtime(tiny["char"], prompts, max_new_tokens=1), runtime(tiny["bpe"], prompts, max_new_tokens=1)]
    set_probs(members[0].m, 0, {"q": 0.6, "y": 0.4})
    set_probs(members[1].m, 0, {" the": 0.6, "y": 0.4})
    outs = [o for o in fn(members, Batch([0], cfg, make_stop(None), 2), cfg) if o is not STEP]  # STEP: a step's end
    assert [i for i, _ in outs] == [0]
    return outs[0][1].text


def test_unite_picks_highest_average_probability(tiny):
    assert token_round(tiny, token_methods.unite_rounds, cfg_()) == "y"


def test_unite_scores_a_missing_string_by_its_own_first_token(tiny):
    """tiny:char has no " the" token: it scores " the" by its first token " "."""
    prompts = ["Answer:"]
    cfg = cfg_(max_new_tokens=1)
    members = [runtime(tiny["char"], prompts, max_new_tokens=1), runtime(tiny["bpe"], prompts, max_new_tokens=1)]
    set_probs(members[0].m, 0, {"q": 0.5, " ": 0.5})
    set_probs(members[1].m, 0, {" the": 0.55, "q": 0.45})
    (_, out), = [o for o in token_methods.unite_rounds(members, Batch([0], cfg, make_stop(None), 2), cfg) if o is not STEP]
    assert out.text == " the"  # char: q, " ", " the" 1/3 each after renormalising; bpe: " the" .55 > q .45


def test_gac_union_vocabulary_and_threshold(tiny):
    assert token_round(tiny, token_methods.gac_rounds, cfg_()) == "y"                    # .4 + .4 > .6
    assert token_round(tiny, token_methods.gac_rounds, cfg_(gac_threshold=0.7)) == "y"   # member 0 unsure: ensemble
    assert token_round(tiny, token_methods.gac_rounds, cfg_(gac_threshold=0.5)) == "q"   # member 0 sure: its own token


def test_rerank_picks_lowest_mean_nll(tiny):
    members = [tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=12)
    outs = decode("rerank", members, PROMPTS, cfg)
    singles = [decode("single", members, PROMPTS, dataclasses.replace(cfg, member=k)) for k in range(2)]
    for i, o in enumerate(outs):
        cands = o.stats["candidates"]
        assert [c["text"] for c in cands] == list(dict.fromkeys(s[i].text for s in singles))
        for c in cands:
            if not c["text"]:  # nothing to score
                assert all(math.isnan(x) for x in c["nll"]) and c["score"] == math.inf
                continue
            assert c["score"] == pytest.approx(sum(c["nll"]) / 2)
            for k, s in enumerate(members):  # each member's mean NLL of the answer after the prompt
                st = Member(s, [PROMPTS[i]])
                new, _, first = st.retokenize(0, c["text"], False)
                assert c["nll"][k] == pytest.approx(full_nll(s, new, first)[0], rel=1e-4, abs=1e-4)
        scores = [c["score"] for c in cands]
        assert o.stats["winner"] == pick(scores) and o.text == cands[o.stats["winner"]]["text"]


def many_words(n):
    """Stop once the answer has n words (keeps span lengths clear of the token budget)."""
    return lambda text: len(text) if len(split_words(text)) >= n else None


@pytest.mark.parametrize("words", [2, 3])
def test_sweetspan_fixed_span_length(char_words, char_words2, words):
    """(On members that write clean words: a random member may write a 24-token "word" with no
    space, which word_token_cap cuts where no text rule can see.)"""
    members = [char_words, char_words2]
    cfg = DecodeConfig(max_new_tokens=400, sweetspan_words=words)
    outs = decode("sweetspan", members, PROMPTS[:3], cfg, stop=many_words(10))
    for o in outs:
        for r in o.trace:
            for k, m in enumerate(r["members"]):
                assert not m["branched"]
                assert sum(k in c["from"] for c in r["candidates"]) == 1  # one span per member
            for c in r["candidates"]:
                if not c["eos"]:
                    assert n_words(c["text"]) == words, c["text"]


def test_sweetspan_filters_outliers_and_coolfusion_uses_ppl(tiny):
    members = [tiny["char"], tiny["bpe"], tiny["spm"]]
    cfg = DecodeConfig(max_new_tokens=16)
    for method, check in [("sweetspan", cfg_(outlier_filter=True)), ("coolfusion", cfg_(combine="ppl"))]:
        for o in decode(method, members, PROMPTS[:2], cfg):
            for r in o.trace:
                for c in r["candidates"]:
                    nll = [math.inf if x is None else x for x in c["nll"]]
                    assert c["score"] == pytest.approx(combine_scores([[x] for x in nll], check)[0])


def test_coolfusion_one_word_per_member_per_round(char_words, char_words2):
    members = [char_words, char_words2]
    outs = decode("coolfusion", members, PROMPTS[:3], DecodeConfig(max_new_tokens=400), stop=many_words(8))
    for o in outs:
        assert len(o.trace) >= 8
        for r in o.trace:
            for k in range(2):
                assert sum(k in c["from"] for c in r["candidates"]) == 1
            for c in r["candidates"]:
                assert c["eos"] or n_words(c["text"]) == 1, c["text"]


@pytest.mark.parametrize("gating, B, confident, unit, expected", [
    # paper: confident commits, uncertain branches, at any word
    (False, 3, True, 0, "commit"), (False, 3, False, 0, "branch"),
    (False, 3, True, 2, "commit"), (False, 3, False, 2, "branch"),
    (False, 1, False, 1, "branch"),
    # official gating with B > 1: word 2 (unit 1) uncertain ends the span; word 3 always branches
    (True, 3, True, 0, "commit"), (True, 3, False, 0, "branch"),
    (True, 3, True, 1, "commit"), (True, 3, False, 1, "stop"),
    (True, 3, True, 2, "branch"), (True, 3, False, 2, "branch"),
    # official gating with B = 1: the plain rule
    (True, 1, False, 1, "branch"), (True, 1, True, 2, "commit"),
])
def test_gate_table(gating, B, confident, unit, expected):
    assert _gate(cfg_(official_gating=gating, B=B), confident, unit, fixed=False) == expected
    # compat turns the official gating on, with greedy_word2: an uncertain word 2 is still proposed
    compat = cfg_(compat=gating, B=B)
    assert _gate(compat, confident, unit, fixed=False) == ("last" if expected == "stop" else expected)


@pytest.mark.parametrize("B, confident, word, expected", [
    (3, False, 0, "branch"), (3, True, 0, "commit"), (3, False, 1, "commit"), (1, False, 0, "commit"),
])
def test_gate_fixed_spans(B, confident, word, expected):
    assert _gate(cfg_(B=B, compat=True), confident, word, fixed=True) == expected


# ---- 8. stop rules ------------------------------------------------------------------

def committed_tokens(session, prompt, out):
    """The answer's token count after each round, replaying the engine's commits of the winners."""
    rt = runtime(session, [prompt])
    counts = []
    for w in winners(out):
        rt.score_texts([0], [w["text"]], [w["eos"]])
        rt.commit(0, 0)
        counts.append(rt.m.answer_tokens(0))
    return counts


def stop_string_of(text):
    """A 3-character piece of `text`, from its middle."""
    mid = len(text) // 2
    return text[mid:mid + 3]


@pytest.mark.parametrize("method, names", [("single", ["char"]), ("adafuse", ["bpe", "spm"]),
                                           ("sweetspan", ["bpe", "spm"]), ("unite", ["bpe", "spm"])])
def test_stop_string_cuts_the_answer(tiny, method, names):
    members = [tiny[n] for n in names]
    cfg = DecodeConfig(max_new_tokens=24)
    full = decode(method, members, PROMPTS[:3], cfg)
    stops = [stop_string_of(o.text) for o in full]
    for i, (o, s) in enumerate(zip(full, stops)):
        assert len(s) == 3, o.text
        cut = decode(method, members, [PROMPTS[i]], cfg, stop=[s, "\x01never"])[0]
        assert cut.text == o.text[:o.text.find(s)]
        assert cut.stats["stopped_by"] == "stop" and s not in cut.text


def test_make_stop():
    cut = make_stop(["Question:", "\n\n"])
    assert cut("Paris.\n\nQuestion: x") == 6  # the earliest of several stop strings
    assert cut("Paris. Question:\n\n") == 7
    assert cut("Paris.") is None
    assert make_stop(None)("Question:") is None
    f = lambda text: 3
    assert make_stop(f) is f


def test_stop_function(tiny):
    out = decode("adafuse", [tiny["bpe"], tiny["spm"]], PROMPTS[:1], DecodeConfig(max_new_tokens=24),
                 stop=lambda text: 2 if len(text) >= 5 else None)[0]
    assert len(out.text) == 2 and out.stats["stopped_by"] == "stop"


@pytest.fixture(scope="module")
def char_eos(tiny, char_words):
    """char_words emitting EOS after the first token of its greedy answer to PROMPTS[0] that
    is new at index 5 or later."""
    s = tiny["char"]
    ids, _ = generate_ids(char_words, PROMPTS[0], 24)
    first_new = next(i for i in range(5, len(ids)) if ids[i] not in ids[:i])
    table = wordy_table(s, seed=1)
    table[ids[first_new], min(s.eos_token_ids)] = 1e4
    m = steer(s, table)
    return m, s.decode(ids[:first_new + 1])


@pytest.mark.parametrize("method", ["single", "adafuse", "sweetspan", "coolfusion"])
def test_eos_winner_stops(char_eos, method):
    m, expected = char_eos
    out = decode(method, [m], PROMPTS[:1], DecodeConfig(max_new_tokens=24))[0]
    assert out.text == expected
    assert out.stats["eos"] and out.stats["stopped_by"] == "eos"
    if out.trace:
        assert winners(out)[-1]["eos"]


def test_eos_of_one_member_stops_the_ensemble(tiny, char_eos):
    m, expected = char_eos
    out = decode("adafuse", [m, tiny["bpe"]], PROMPTS[:1], DecodeConfig(max_new_tokens=40, weights=(1.0, 0.0)))[0]
    assert out.stats["stopped_by"] == "eos" and winners(out)[-1]["eos"]
    assert out.text == expected


def test_score_eos_off_scores_an_ending_by_its_text(tiny, char_eos, char_words):
    """score_eos=False: an ending candidate's NLL is that of its text alone (checked in the first
    round against a fresh member), one text is one candidate, and a member's EOS still stops."""
    m, expected = char_eos
    cfg = DecodeConfig(max_new_tokens=40, theta=1.0, score_eos=False)
    out = decode("adafuse", [m, char_words], PROMPTS[:1], cfg)[0]
    assert any(c["eos"] for r in out.trace for c in r["candidates"])  # the case is exercised
    for r in out.trace:
        texts = [c["text"] for c in r["candidates"]]
        assert len(set(texts)) == len(texts)
        assert all(i < len(texts) for mem in r["members"] for i in mem["proposed"])
    first = out.trace[0]["candidates"]
    for k, s in enumerate([m, char_words]):
        fresh = runtime(s, PROMPTS[:1], window_tokens=cfg.window_tokens)
        ref = fresh.score_texts([0] * len(first), [c["text"] for c in first], [False] * len(first))
        assert [c["nll"][k] for c in first] == pytest.approx(list(ref), rel=1e-4, abs=1e-4)
    on = decode("adafuse", [m, char_words], PROMPTS[:1], dataclasses.replace(cfg, score_eos=True))[0]
    ends = [(c["text"], c["nll"]) for c in on.trace[0]["candidates"] if c["eos"]]
    off = {c["text"]: c["nll"] for c in first}
    assert all(off[t] != nll for t, nll in ends)  # with EOS scored, the same text scores otherwise
    # char_words gives char_eos's EOS a huge NLL: scored with it, the ending loses to its own text
    # going on and the answer runs to the budget; scored by its text, the answer stops there
    assert on.stats["stopped_by"] == "budget"
    assert out.stats["stopped_by"] == "eos" and winners(out)[-1]["eos"]


@pytest.mark.parametrize("method", ["adafuse", "sweetspan", "coolfusion"])
@pytest.mark.parametrize("budget", [5, 17])
def test_budget(tiny, char_words, method, budget):
    """Member 0's answer reaches max_new_tokens in the last round, not before; a span member 0
    proposed itself stays within its budget. (Member 0 writes clean ASCII here: a byte token of
    a random member decodes to U+FFFD and re-tokenizes as three.)"""
    members = [char_words, tiny["bpe"]]
    outs = decode(method, members, PROMPTS, DecodeConfig(max_new_tokens=budget))
    own = 0
    for p, o in zip(PROMPTS, outs):
        n = o.stats["tokens"][0]
        assert o.stats["stopped_by"] == "budget" and n >= budget
        counts = committed_tokens(char_words, p, o)  # replay member 0's commits
        assert counts[-1] == n
        assert all(c < budget for c in counts[:-1])
        if 0 in winners(o)[-1]["from"]:
            assert n == budget
            own += 1
    assert own > 0


@pytest.mark.parametrize("method", ["unite", "gac"])
@pytest.mark.parametrize("budget", [5, 17])
def test_budget_token_level(tiny, method, budget):
    """One token string per step: stops at the first step that reaches the budget."""
    outs = decode(method, [tiny["bpe"], tiny["spm"]], PROMPTS, DecodeConfig(max_new_tokens=budget))
    for o in outs:
        n = o.stats["tokens"][0]
        if o.stats["stopped_by"] == "budget":
            assert budget <= n <= budget + 2
        else:
            assert o.stats["stopped_by"] == "eos" and n < budget


def test_budget_single_member_exact(char_words):
    outs = decode("adafuse", [char_words], PROMPTS, DecodeConfig(max_new_tokens=7, B=1))
    for o in outs:
        assert o.stats["tokens"][0] <= 7
        assert o.stats["stopped_by"] == "eos" or o.stats["tokens"][0] == 7


# ---- 9. configuration ---------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(theta=-0.1), dict(theta=1.5), dict(B=0), dict(M=0), dict(span_words=0),
                                dict(criterion="entropyy"), dict(combine="max"), dict(branch_select="mmr"),
                                dict(max_new_tokens=0), dict(batch_size=0), dict(outlier_ratio=1.0),
                                dict(dyn_quantile=1.0), dict(gac_threshold=2.0)])
def test_config_rejects(kw):
    with pytest.raises(ConfigError):
        DecodeConfig(**kw)


def test_config_bounds_accepted():
    DecodeConfig(theta=0.0), DecodeConfig(theta=1.0), DecodeConfig(B=1, M=1)


def test_config_from_dict():
    with pytest.raises(ConfigError, match=r"unknown decoding parameter 'thetta' \(did you mean theta"):
        DecodeConfig.from_dict({"thetta": 0.5})
    with pytest.raises(ConfigError, match="unknown decoding parameter 'zzz'$"):
        DecodeConfig.from_dict({"zzz": 1})
    cfg = DecodeConfig.from_dict({"theta": 0.5, "weights": [1, 2]})
    assert cfg.theta == 0.5 and cfg.weights == (1.0, 2.0)
    assert DecodeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        DecodeConfig.from_dict({"theta": 2.0})


def test_unknown_method_and_member(tiny):
    with pytest.raises(ConfigError, match="did you mean adafuse"):
        decode("adafusee", [tiny["bpe"]], ["x"])
    with pytest.raises(ConfigError, match="member 1 does not exist"):
        decode("single", [tiny["bpe"]], ["x"], DecodeConfig(member=1))
    with pytest.raises(ValueError, match="weights"):
        decode("adafuse", [tiny["bpe"], tiny["spm"]], ["x"], DecodeConfig(max_new_tokens=4, weights=(1.0,)))


@pytest.mark.parametrize("method", ["single", "adafuse", "unite", "gac", "sweetspan", "coolfusion", "rerank"])
def test_every_forward_runs_without_autograd(method):
    """An autograd graph would keep every step's KV cache alive (memory grew by the
    whole cache per step in `single` before this was pinned)."""
    from adafuse_lab.decoding import decode, DecodeConfig
    from adafuse_lab.models import load_session
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    grad_seen = []
    hooks = [m.model.register_forward_pre_hook(lambda *_: grad_seen.append(torch.is_grad_enabled()))
             for m in members]
    try:
        decode(method, members, ["The cat sat on the", "Question: 2 + 2?\nAnswer:"], DecodeConfig(max_new_tokens=6))
    finally:
        for h in hooks:
            h.remove()
    assert grad_seen and not any(grad_seen)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_on_device_keeps_values_and_dtypes(device):
    from adafuse_lab.decoding.runtime.member import on_device, on_device_many
    ids = on_device([[1, 2], [3, 4]], device)
    assert ids.dtype == torch.long and ids.device.type == device and ids.tolist() == [[1, 2], [3, 4]]
    assert on_device([True, False], device).dtype == torch.bool
    assert on_device([5, 6], device, torch.int32).dtype == torch.int32
    assert on_device([], device, torch.long).shape == (0,)
    a, empty, b = on_device_many([[1, 2, 3], [], [1 << 40]], device)
    assert (a.tolist(), empty.tolist(), b.tolist()) == ([1, 2, 3], [], [1 << 40])
    assert a.dtype == torch.long and a.device.type == device


def test_settle_adds_the_gpu_time_of_finished_forwards():
    """counters.settle: without waiting, only work already done is added (the rest stays
    queued); waiting adds the rest. Times are the end events' elapsed ms, in seconds, each in
    its own counter (forwards, prefills)."""
    from adafuse_lab.decoding.runtime.counters import COUNTS, TIMED, settle

    class Event:
        def __init__(self, done=True, ms=0.0):
            self.done, self.ms, self.waited = done, ms, False

        def query(self):
            return self.done

        def synchronize(self):
            self.waited = True

        def elapsed_time(self, end):
            return end.ms

    key = object()
    slow = Event(done=False, ms=7.0)
    saved = list(TIMED)
    TIMED[:] = [(key, "model_gpu_s", Event(), Event(ms=5.0)), (key, "model_gpu_s", Event(), slow),
                (key, "prefill_s", Event(), Event(ms=2.0))]
    try:
        settle(wait=False)
        assert COUNTS[key, "model_gpu_s"] == pytest.approx(0.005) and len(TIMED) == 1 and not slow.waited
        assert COUNTS[key, "prefill_s"] == pytest.approx(0.002)
        settle()
        assert COUNTS[key, "model_gpu_s"] == pytest.approx(0.012) and TIMED == [] and slow.waited
    finally:
        TIMED[:] = saved
        COUNTS.pop((key, "model_gpu_s"), None)
        COUNTS.pop((key, "prefill_s"), None)
