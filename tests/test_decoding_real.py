"""The engine on a real member (SmolLM2-135M from the model zoo): one member with B = 1,
and the single baseline, reproduce transformers' greedy generate().

Fails when the model cannot be loaded; set ADAFUSE_SKIP_REAL=1 to skip (see conftest.py).
"""
import pytest
import torch

from adafuse_lab.decoding import DecodeConfig, decode

pytestmark = pytest.mark.slow

PROMPTS = [  # (greedy answers: " The play ... William Shakespeare." and " 18\nThe answer is: 18")
    "Question: Who wrote the play Romeo and Juliet?\nAnswer:",
    "Question: How many legs does a spider have?\nAnswer:",
]
MAX_NEW = 16


def greedy_text(session, prompt):
    ids = torch.tensor([session.encode_prompt(prompt)], device=session.device)
    with torch.inference_mode():
        out = session.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                                     do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    for i, t in enumerate(new):
        if t in session.eos_token_ids:
            new = new[:i]
            break
    return session.decode(new)


@pytest.fixture(scope="module")
def reference(smollm2):
    return [greedy_text(smollm2, p) for p in PROMPTS]


@pytest.mark.parametrize("method", ["single", "adafuse"])
def test_one_real_member_equals_generate(smollm2, reference, method):
    outs = decode(method, [smollm2], PROMPTS, DecodeConfig(max_new_tokens=MAX_NEW, B=1))
    assert all(reference)  # the model says something
    assert [o.text for o in outs] == reference


def test_chat_prompt_on_the_real_member_equals_generate(smollm2):
    """--chat: the member reads its own template (SmolLM2's adds its default system turn) and one
    member still reproduces greedy generate on those ids."""
    chat = smollm2.as_chat()
    text = chat.decode(chat.encode_prompt(PROMPTS[0]))
    assert text.startswith("<|im_start|>system\n") and f"<|im_start|>user\n{PROMPTS[0]}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    reference = [greedy_text(chat, p) for p in PROMPTS]
    assert all(reference)
    outs = decode("single", [chat], PROMPTS, DecodeConfig(max_new_tokens=MAX_NEW, B=1))
    assert [o.text for o in outs] == reference
