"""An ending is scored by the member's probability of ending there: all of its EOS ids together.

Qwen instruct members list two EOS ids and predict the larger one (<|im_end|>) after an answer;
scoring the smaller one alone made every ending lose. These members have two EOS ids and
prefer the larger one, so the old rule (min of the ids) fails every test here.
"""
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.decoding.methods.proposal import _Row
from adafuse_lab.decoding.select import select_branches
from adafuse_lab.models import load_session

PROMPT = "Question: What is the capital of France?\nAnswer:"


@pytest.fixture(scope="module")
def two_eos():
    """tiny:bpe whose EOS ids are its favourite next token after PROMPT and an unlikely smaller id."""
    s = load_session("tiny:bpe")
    with torch.inference_mode():
        probs = torch.softmax(s.model(torch.tensor([s.encode_prompt(PROMPT)])).logits[0, -1].float(), -1)
    hi = int(probs.argmax())
    lo = int(probs[:hi].argmin())
    assert probs[lo] < probs[hi] / 100
    member = dataclasses.replace(s, eos_token_ids=[lo, hi])
    return member, float(probs[lo]), float(probs[hi])


@pytest.mark.parametrize("method", ["adafuse", "sweetspan", "coolfusion"])
def test_span_methods_score_an_ending_with_every_eos_id(two_eos, method):
    member, p_lo, p_hi = two_eos
    out = decode(method, [member], [PROMPT], DecodeConfig(B=1, max_new_tokens=8))[0]
    ending = out.trace[0]["candidates"][0]
    assert ending["eos"] and ending["text"] == ""
    assert ending["nll"][0] == pytest.approx(-math.log(p_lo + p_hi), rel=1e-4)
    assert out.text == "" and out.stats["stopped_by"] == "eos"


def test_ensemble_scores_an_ending_with_every_eos_id(two_eos):
    member, p_lo, p_hi = two_eos
    other = load_session("tiny:spm")
    out = decode("adafuse", [member, other], [PROMPT], DecodeConfig(max_new_tokens=8))[0]
    endings = [c for c in out.trace[0]["candidates"] if c["eos"] and c["text"] == ""]
    assert endings and endings[0]["nll"][0] == pytest.approx(-math.log(p_lo + p_hi), rel=1e-4)


@pytest.mark.parametrize("method", ["unite", "gac"])
def test_token_methods_map_every_eos_id_to_the_ending(two_eos, method):
    member, _, _ = two_eos
    out = decode(method, [member], [PROMPT], DecodeConfig(max_new_tokens=8))[0]
    assert out.text == "" and out.stats["eos"]


def test_semantic_selection_embeds_an_ending_by_every_eos_id():
    emb = torch.zeros(10, 2)
    emb[0] = torch.tensor([1.0, 0.0])   # the smaller EOS id: the same direction as " cat"
    emb[5] = torch.tensor([-1.0, 1.0])  # the larger one: with it, the ending is far from " cat"
    emb[1] = torch.tensor([1.0, 0.0])   # " cat"
    emb[2] = torch.tensor([1.0, 0.01])  # " cats"
    model = SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(weight=emb))
    member = SimpleNamespace(s=SimpleNamespace(model=model), eos={0, 5})
    branches = [_Row(toks=[1], text=" cat", lp=-0.1), _Row(toks=[2], text=" cats", lp=-0.2),
                _Row(toks=[], text="", eos=True, lp=-0.5)]
    cfg = DecodeConfig(B=2, branch_select="semantic", diversity_lambda=1.0)
    kept = select_branches(member, cfg, branches)
    assert [(b.text, b.eos) for b in kept] == [(" cat", False), ("", True)]
