import pytest
import torch

from adafuse_lab import models
from adafuse_lab.models import load_session
from adafuse_lab.tiny import make_tiny


def _save(session, d):
    session.model.save_pretrained(d)
    session.tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("name", ["char", "spm"])
def test_local_hf_folder_matches_the_original(tmp_path, name):
    tiny = make_tiny(name)
    s = load_session(str(_save(tiny, tmp_path / "m")), device="cpu")
    assert s.dtype == torch.float32 and s.info["source"] == "local" and not s.model.training
    ids = torch.tensor([tiny.encode_prompt("Hello there")])
    assert s.encode_prompt("Hello there") == ids[0].tolist()  # BOS found from the tokenizer alone
    assert s.eos_token_ids == tiny.eos_token_ids and s.pad_token_id == tiny.pad_token_id
    with torch.no_grad():
        assert torch.allclose(s.model(ids).logits, tiny.model(ids).logits, atol=1e-5)


def test_dtype_and_extra_eos(tmp_path):
    tiny = make_tiny("bpe")
    s = load_session(str(_save(tiny, tmp_path / "m")), dtype=torch.bfloat16)
    assert s.dtype == next(s.model.parameters()).dtype == torch.bfloat16
    eos, bos = models._special_ids(s.model.generation_config, s.tokenizer, extra_eos=("<|im_start|>", "<not-a-token>"))
    assert eos == tiny.eos_token_ids + [s.tokenizer.convert_tokens_to_ids("<|im_start|>")] and bos is None


def test_staged_folder_prefers_its_tokenizer_folder(tmp_path):
    """A staged zoo folder (hf/ + tokenizer/) loads with the tokenizer in tokenizer/."""
    tiny = make_tiny("char")
    _save(tiny, tmp_path / "hf")
    tok = make_tiny("char").tokenizer
    tok.model_max_length = 1234  # marks this copy
    tok.save_pretrained(tmp_path / "tokenizer")
    s = load_session(str(tmp_path))
    assert s.info["source"] == "staged" and s.tokenizer.model_max_length == 1234


def test_hub_id_goes_to_from_pretrained(monkeypatch):
    calls = []

    def fake(src, dtype, trust_remote_code=False, tokenizer_src=None):
        calls.append((src, dtype, trust_remote_code))
        t = make_tiny("char")
        return t.model, t.tokenizer

    monkeypatch.setattr(models, "_load_hf", fake)
    s = load_session("someorg/some-model", device="cpu", trust_remote_code=True)
    assert calls == [("someorg/some-model", torch.float32, True)] and s.info["source"] == "hub"


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match=r"smollm2-135m.*gemma3-270m"):
        load_session("smolm2-135m")
    with pytest.raises(ValueError, match="Did you mean qwen2.5-coder-0.5b"):
        load_session("qwen2.5-coder-0.5")


@pytest.mark.parametrize("name", ["tiny:bpe", "tiny:spm"])
def test_encode_many_equals_encode_of_each_text(name):
    s = load_session(name)
    texts = ["Tom has 3 apples.", " and then", "é😀 x", "", "Tom has 3 apples."]
    assert s.encode_many(texts) == [s.encode(t) for t in texts]
    assert s.encode_many([]) == []


@pytest.mark.parametrize("name", ["tiny:char", "tiny:bpe", "tiny:spm", "smollm2-135m"])
def test_decode_equals_the_tokenizers_decode(name, request):
    """session.decode (the Rust backend's decode where it passed its check) gives the
    tokenizer's own text for any ids: special tokens, byte pieces cut mid-character, all."""
    s = request.getfixturevalue("smollm2") if name == "smollm2-135m" else load_session(name)
    gen = torch.Generator().manual_seed(0)
    n = len(s.tokenizer)
    for _ in range(200):
        ids = torch.randint(0, n, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
        assert s.decode(ids) == s.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_decode_keeps_the_tokenizers_decode_where_the_backend_differs():
    """A tokenizer whose own decode is not its backend's (here: it cleans up spaces) keeps its own."""
    s = load_session("tiny:bpe")

    class Tidy:
        backend_tokenizer = s.tokenizer.backend_tokenizer

        def __call__(self, *a, **k):
            return s.tokenizer(*a, **k)

        def decode(self, ids, **k):
            return s.tokenizer.decode(ids, **k).replace(" ,", ",").replace(" ", "_")

    from adafuse_lab.session import _decoder
    ids = s.encode("a b , c")
    assert _decoder(Tidy(), s.eos_token_ids)(ids) == Tidy().decode(ids)
