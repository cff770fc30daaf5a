import pytest
import torch
from hypothesis import given, settings, strategies as st

from adafuse_lab.models import load_session
from adafuse_lab.tiny import NAMES, make_tiny


@pytest.fixture(scope="module")
def members():
    return {n: make_tiny(n) for n in NAMES}


ASCII_TEXTS = ["Hello, world!", "  two  leading spaces", "line one\nline two\n\n\tindented ", " x = 3 + 4 ", ""]
UNICODE_TEXTS = ["héllo → 你好 🙂", "naïve café ∑ x²", "\r\n\x00"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", ASCII_TEXTS + UNICODE_TEXTS)
def test_round_trip(members, name, text):
    s = members[name]
    assert s.decode(s.encode(text)) == text


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=40))
def test_round_trip_any_unicode(members, name, text):
    s = members[name]
    assert s.decode(s.encode(text)) == text


@pytest.mark.parametrize("name", NAMES)
def test_slice_after_other_tokens_keeps_its_leading_space(members, name):
    s = members[name]
    head, tail = "The answer", " is 72.\n Next"
    ids = s.encode(head + tail)
    n = len(s.encode(head))
    assert ids[:n] == s.encode(head)  # word boundary: no token spans the cut
    assert s.decode(ids[n:]) == tail


def test_spm_limitation_literal_metaspace_char(members):
    """tiny:spm (like Gemma/Llama) writes spaces as "▁": a literal "▁" in the text comes back as a space."""
    s = members["spm"]
    assert s.decode(s.encode("a▁b")) == "a b"


@settings(max_examples=100, deadline=None)
@given(a=st.text(max_size=20), b=st.text(max_size=20))
def test_char_tokenization_is_unique(members, a, b):
    """One token per printable ASCII char or per byte: encoding is concatenative."""
    s = members["char"]
    assert s.encode(a + b) == s.encode(a) + s.encode(b)
    assert len(s.encode(a)) == sum(1 if c.isascii() else len(c.encode()) for c in a)


def test_tokenizations_and_vocabularies_differ(members):
    text = "The answer is 72."
    toks = {n: tuple(members[n].encode(text)) for n in NAMES}
    assert len(set(toks.values())) == 3
    assert len({len(m.tokenizer) for m in members.values()}) == 3
    assert len(toks["char"]) == len(text) > len(toks["bpe"])


@pytest.mark.parametrize("name", NAMES)
def test_special_tokens(members, name):
    s = members[name]
    tok = s.tokenizer
    assert s.vocab_size == len(tok) == s.model.config.vocab_size
    assert s.eos_token_ids and tok.eos_token_id == s.eos_token_ids[0]
    assert tok.pad_token_id == s.pad_token_id is not None
    ids = s.encode("hi there")
    assert not set(ids) & set(tok.all_special_ids)  # encode never adds specials
    if name == "spm":  # Gemma-like: the tokenizer adds BOS by default, prompts start with it
        assert s.bos_token_id == tok.convert_tokens_to_ids("<bos>") == 2
        assert s.encode_prompt("hi there") == tok("hi there")["input_ids"] == [s.bos_token_id] + ids
    else:
        assert s.bos_token_id is None and s.encode_prompt("hi there") == tok("hi there")["input_ids"] == ids


def test_bpe_has_two_eos_like_qwen(members):
    s = members["bpe"]
    assert [s.tokenizer.convert_ids_to_tokens(i) for i in s.eos_token_ids] == ["<|endoftext|>", "<|im_end|>"]


def test_weights_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = make_tiny("char"), make_tiny("tiny:char", seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    c = make_tiny("char", seed=1)
    assert not torch.equal(a.model.lm_head.weight, c.model.lm_head.weight)


@pytest.mark.parametrize("name", NAMES)
def test_generate_and_load_session(name):
    s = load_session(f"tiny:{name}")
    assert s.name == f"tiny:{name}" and s.device.type == "cpu" and s.dtype == torch.float32
    assert not s.model.training
    prompt = torch.tensor([s.encode_prompt("Question: 3 + 4 = ")])
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    out = s.model.generate(prompt, **kw)
    assert out.shape[1] <= prompt.shape[1] + 5 and torch.equal(out[0, : prompt.shape[1]], prompt[0])
    assert torch.equal(out, make_tiny(name).model.generate(prompt, **kw))
    with torch.no_grad():
        probs = s.model(prompt).logits[0].softmax(-1)
    assert probs.max(-1).values.max() > 0.3  # peaked, not near-uniform


def test_unknown_tiny_name():
    with pytest.raises(ValueError, match="tiny:char"):
        make_tiny("tiny:nope")
