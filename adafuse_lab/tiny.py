"""Tiny random members with genuinely different tokenizers, built in memory.

For tests and demos: nothing is downloaded, and the same name and seed always
give the same weights. The three tokenizers mimic the families of the real zoo:

- ``tiny:char``  one token per character (bytes for the rest): every string has
  exactly one tokenization, so it is the easy case for cross-tokenizer fusion.
- ``tiny:bpe``   GPT-2/Qwen-style byte-level BPE, special tokens at the end of the
  vocabulary, two EOS tokens (like Qwen's <|im_end|> and <|endoftext|>).
- ``tiny:spm``   Gemma/Llama-style sentencepiece BPE ("▁" for spaces, byte
  fallback), expects a BOS token.
"""
from __future__ import annotations

import functools
import json
import string
import zlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .session import ModelSession

NAMES = ("char", "bpe", "spm")

# Model shape: small enough to run generate() in milliseconds on CPU.
HIDDEN, LAYERS, HEADS, KV_HEADS, MAX_POS = 64, 2, 4, 2, 2048
# Std of the logits: with Llama's default init (0.02) they are ~0.15 and every
# next-token distribution is nearly uniform; ~4 gives peaked, varied ones, so
# confidence criteria see a spread of values and argmax has no near-ties.
LOGIT_STD = 4.0

_BYTE = "<0x{:02X}>".format


def _corpus() -> list[str]:
    """Small English + maths + numbers corpus to train the BPE tokenizers on."""
    text = [
        "The quick brown fox jumps over the lazy dog.",
        "Question: What is the capital of France? Answer: Paris.",
        "Question: Who wrote the play Hamlet? Answer: William Shakespeare.",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
        "How many clips did Natalia sell altogether in April and May? The answer is 72.",
        "Let's think step by step. First, we add the numbers. Then we multiply the result by two.",
        "Translate English to German: The house is small. Das Haus ist klein.",
        "The model reads the context and then answers the question in a few words.",
        "def add(a, b):\n    return a + b\n",
        "for i in range(10):\n\tprint(i * i)\n",
        "If x = 3 and y = 4, then x^2 + y^2 = 25, so the hypotenuse is 5.",
        "She has 12 apples and gives away 5, so she has 7 apples left.",
        "In 1969, the first humans landed on the Moon; it was July 20.",
        "The price is $3.50 per pound, or 10% less when you buy 100 pounds.",
    ]
    # Deterministic arithmetic lines so digits and operators get merges too.
    for a in range(0, 60, 7):
        for b in range(1, 40, 9):
            text.append(f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. {a + b} - {b} = {a}.")
    return text


@functools.lru_cache(maxsize=None)
def _tokenizer_json(name: str) -> str:
    """Serialised `tokenizers` tokenizer (cached: training is deterministic)."""
    if name == "char":
        # One entry per byte: printable ASCII, "\t", "\n" as characters, every other
        # byte as <0xNN> (UTF-8 of non-ASCII text). No merges, so each string has
        # exactly one tokenization and decoding is the inverse.
        specials = ["<pad>", "<s>", "</s>", "<unk>"]
        chars = set(string.printable) - set("\r\x0b\x0c")
        pieces = [chr(b) if chr(b) in chars else _BYTE(b) for b in range(256)]
        vocab = {t: i for i, t in enumerate(specials + pieces)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        tok.add_special_tokens(specials)
        return tok.to_str()

    if name == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
            vocab_size=509, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        # Specials after the regular tokens, as in Qwen/GPT-2.
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        return tok.to_str()

    if name == "spm":
        # Gemma layout: <pad>=0, <eos>=1, <bos>=2, <unk>=3, then the 256 byte
        # tokens, then the trained pieces. Spaces become "▁" and stay attached to
        # the following word; no dummy prefix, so " x" and "x" differ.
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, show_progress=False))
        trained = json.loads(tok.to_str())["model"]
        pieces = specials + [_BYTE(b) for b in range(256)]
        pieces += [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])]
        merges = [tuple(m) for m in trained["merges"]]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(pieces)}, merges=merges,
                                   unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        # Gemma's decoder: a plain replace (the Metaspace decoder would strip the
        # leading space of a slice), then bytes back to UTF-8.
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        tok.add_special_tokens(specials)
        # Like Gemma's, the tokenizer adds <bos> unless add_special_tokens=False.
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
        return tok.to_str()

    raise ValueError(f"unknown tiny tokenizer {name!r}; choose from {', '.join('tiny:' + n for n in NAMES)}")


# eos (first is the tokenizer's own), bos, pad, and whether prompts start with BOS.
_SPECIALS = {
    "char": dict(eos=["</s>"], bos="<s>", pad="<pad>", unk="<unk>", add_bos=False),
    "bpe": dict(eos=["<|endoftext|>", "<|im_end|>"], bos=None, pad="<|endoftext|>", unk=None, add_bos=False),
    "spm": dict(eos=["<eos>"], bos="<bos>", pad="<pad>", unk="<unk>", add_bos=True),
}


def make_tokenizer(name: str) -> PreTrainedTokenizerFast:
    name = name.removeprefix("tiny:")
    tok = Tokenizer.from_str(_tokenizer_json(name))  # raises on unknown names
    sp = _SPECIALS[name]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=sp["eos"][0], bos_token=sp["bos"], pad_token=sp["pad"],
        unk_token=sp["unk"], clean_up_tokenization_spaces=False)


def make_tiny(name: str, seed: int = 0, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None) -> ModelSession:
    """A tiny random LlamaForCausalLM with the `name` tokenizer ("char", "bpe", "spm").

    Runs on CPU in fp32 unless told otherwise (deterministic, and faster than a
    GPU at this size).
    """
    short = name.removeprefix("tiny:")
    tok = make_tokenizer(short)
    sp = _SPECIALS[short]
    eos = [tok.convert_tokens_to_ids(t) for t in sp["eos"]]
    bos = tok.convert_tokens_to_ids(sp["bos"]) if sp["bos"] else None
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POS, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    # Seed from name and seed together so the three members differ at seed 0,
    # without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(short.encode()) + seed)
        model = LlamaForCausalLM(config)
        model.lm_head.weight.data.normal_(0.0, LOGIT_STD / HIDDEN**0.5)  # final RMSNorm gives unit-scale states
    from .models import place
    dtype = dtype or torch.float32
    device = place(model, device or "cpu", dtype)
    model.eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tok.pad_token_id
    return ModelSession(
        name=f"tiny:{short}", model=model, tokenizer=tok, device=device, dtype=dtype,
        eos_token_ids=eos, bos_token_id=bos if sp["add_bos"] else None, pad_token_id=tok.pad_token_id,
        info={"source": "tiny", "seed": seed, "licence": "n/a (random weights)"})
