"""Paper-scale members with random weights: the shapes are the published ones, and a
shrunken copy decodes through the engine like any member."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from adafuse_lab import paper_scale
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.models import load_session
from adafuse_lab.runs import UsageError, check_model_spec


@pytest.mark.parametrize("arch, billions", [("llama-3.1-8b", 8.03), ("mistral-7b-v0.3", 7.25)])
def test_published_parameter_counts(arch, billions):
    with torch.device("meta"):  # no memory: shapes only
        model = AutoModelForCausalLM.from_config(paper_scale.config(arch))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown architecture 'llama-9b'.*llama-3.1-8b"):
        paper_scale.parse("random:llama-9b+tiny:bpe")
    with pytest.raises(ValueError, match="names no tokenizer"):
        paper_scale.parse("random:mistral-7b-v0.3")
    with pytest.raises(UsageError, match="unknown tiny model"):
        check_model_spec("random:mistral-7b-v0.3+tiny:nope")
    check_model_spec("random:llama-3.1-8b+tiny:bpe")


def test_shrunken_members_decode():
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    a = paper_scale.load_random("random:llama-3.1-8b+tiny:bpe", device="cpu", **small)
    b = paper_scale.load_random("random:mistral-7b-v0.3+tiny:spm", device="cpu", **small)
    assert a.info["vocab_size"] == len(a.tokenizer) == a.vocab_size
    assert a.model.config.rope_scaling["rope_type"] == "llama3" and b.model.config.model_type == "mistral"
    assert b.bos_token_id is not None  # the tokenizer's conventions come along
    prompt = ["Question: What is the capital of France?\nAnswer:"]
    out = decode("adafuse", [a, b], prompt, DecodeConfig(theta=0.0, max_new_tokens=8))
    assert out[0].text and out[0].stats["forwards"]
    # seeded: the same spec gives the same weights
    again = paper_scale.load_random("random:llama-3.1-8b+tiny:bpe", device="cpu", **small)
    assert torch.equal(again.model.lm_head.weight, a.model.lm_head.weight)


def test_load_session_dispatch():
    with pytest.raises(ValueError, match="unknown architecture"):
        load_session("random:gpt-5+tiny:bpe")


# ------------------------------------------------------------------ device "auto" (members too big for one GPU)


def test_device_auto_places_and_decodes_like_cpu():
    from adafuse_lab.session import spans_devices
    a = load_session("tiny:bpe", device="auto")
    b = load_session("tiny:spm", device="auto")
    assert a.device == torch.device("cpu") and a.model.hf_device_map and not spans_devices(a.model)
    ref = [load_session("tiny:bpe", device="cpu"), load_session("tiny:spm", device="cpu")]
    prompts = ["Question: What is the capital of France?\nAnswer:", "Question: Who wrote Hamlet?\nAnswer:"]
    cfg = DecodeConfig(max_new_tokens=8)
    assert [o.text for o in decode("adafuse", [a, b], prompts, cfg)] == \
           [o.text for o in decode("adafuse", ref, prompts, cfg)]
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    r = paper_scale.load_random("random:llama-3.1-8b+tiny:bpe", device="auto", **small)
    assert r.device == torch.device("cpu") and r.model.hf_device_map


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_auto_over_two_gpus_decodes_like_one():
    # The balanced map puts layers of each member on both GPUs; every cache path (the column
    # cache of the streaming methods, HF's DynamicCache of the others) must follow each layer
    # to its device, and the text must be what the same members give on one GPU (fp32).
    from adafuse_lab.session import spans_devices
    spread = [load_session(m, device="auto", dtype=torch.float32) for m in ("tiny:bpe", "tiny:spm")]
    one = [load_session(m, device="cuda:0", dtype=torch.float32) for m in ("tiny:bpe", "tiny:spm")]
    assert all(spans_devices(s.model) for s in spread), [s.model.hf_device_map for s in spread]
    prompts = ["Question: What is the capital of France?\nAnswer:", "Question: Who wrote Hamlet?\nAnswer:"]
    cfg = DecodeConfig(max_new_tokens=12)
    for method in ("adafuse", "sweetspan", "unite", "gac", "rerank"):
        assert [o.text for o in decode(method, spread, prompts, cfg)] == \
               [o.text for o in decode(method, one, prompts, cfg)], method


def test_spans_devices():
    from adafuse_lab.session import spans_devices

    class Fake:
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    assert spans_devices(Fake())
    Fake.hf_device_map = {"": 0}
    assert not spans_devices(Fake()) and not spans_devices(torch.nn.Linear(1, 1))


def test_auto_initialises_on_the_gpu_when_the_member_fits(monkeypatch):
    # an 8B-class member in bf16 (about 15 GiB) fits an 80 GiB GPU, not a 10 GiB one, never the CPU
    cfg = paper_scale.config("llama-3.1-8b", vocab_size=32000)
    free = {"bytes": 80 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 2**30))
    assert paper_scale._fits(cfg, torch.bfloat16, torch.device("cuda"))
    free["bytes"] = 10 * 2**30
    assert not paper_scale._fits(cfg, torch.bfloat16, torch.device("cuda"))
    assert not paper_scale._fits(cfg, torch.bfloat16, torch.device("cpu"))
