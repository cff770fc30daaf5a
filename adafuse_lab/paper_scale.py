"""Members with the paper's architectures and random weights, for speed measurements.

The paper ensembles Llama-3.1-8B-Instruct and Mistral-7B-Instruct-v0.3. Their weights
cannot be downloaded here, but their cost can be measured: the same layer shapes with
random weights do the same arithmetic and move the same bytes per step.

    random:llama-3.1-8b+qwen2.5-coder-0.5b    Llama-3.1-8B shapes, the Qwen tokenizer
    random:mistral-7b-v0.3+smollm2-135m       Mistral-7B-v0.3 shapes, the SmolLM2 tokenizer

The part after "+" is any member spec; only its tokenizer is used, and the vocabulary
(embedding and output layer) is sized to it, so the two members keep genuinely different
tokenizers. Qwen's 151,665 tokens stand in for Llama-3's 128,256 and SmolLM2's 49,152 for
Mistral's 32,768: the layers are the paper's, the vocabulary matrices slightly larger.

Random weights give near-uniform next-token distributions (top-1 margin about 0), so a
member is unsure at every word at any θ > 0 (AdaFuse's worst case: it branches every
round) and sure at θ = 0 (best case: M words per round). Answers are noise and rarely
hit EOS, so runs go to the token budget.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .session import ModelSession

PREFIX = "random:"

# The published configs' shapes (config.json of each hub repository).
ARCHS = {
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, vocab_size=128256, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}),
    "mistral-7b-v0.3": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=1000000.0, vocab_size=32768, tie_word_embeddings=False, sliding_window=None),
}


def parse(spec: str) -> tuple[str, str]:
    """'random:ARCH+TOKENIZER_SPEC' -> (ARCH, TOKENIZER_SPEC), with one-line errors."""
    body = spec[len(PREFIX):]
    arch, plus, tok_spec = body.partition("+")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} in {spec!r}; choose one of {', '.join(ARCHS)}")
    if not plus or not tok_spec:
        raise ValueError(f"{spec!r} names no tokenizer: write {PREFIX}{arch}+MEMBER, e.g. "
                         f"{PREFIX}{arch}+qwen2.5-coder-0.5b (MEMBER's tokenizer is used)")
    return arch, tok_spec


def config(arch: str, vocab_size: int | None = None, **overrides):
    """The architecture's transformers config; vocab_size and overrides (tests shrink it) replace fields."""
    values = {**ARCHS[arch], **overrides}
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    return AutoConfig.for_model(**values)


def load_random(spec: str, device=None, dtype=None, seed: int = 0, **overrides) -> ModelSession:
    """A member with `spec`'s architecture, random weights (seeded) and the named member's tokenizer."""
    from .models import load_tokens, place, resolve
    arch, tok_spec = parse(spec)
    tok, eos, bos, pad = load_tokens(tok_spec)
    target, device, dtype = resolve(device, dtype)
    cfg = config(arch, vocab_size=len(tok), **overrides)
    cfg.eos_token_id, cfg.pad_token_id = eos, pad
    torch.manual_seed(seed)
    # Initialise in place (an 8B model never passes through CPU memory). "auto" initialises on
    # the first GPU too when the member fits there, and place() then spreads its layers: the
    # weights equal the one-GPU member's, and the CPU took over 5 minutes for two 8B-class members.
    with torch.device(device if target != "auto" or _fits(cfg, dtype, device) else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    device = place(model, target, dtype)  # in place already unless "auto"
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    n = sum(p.numel() for p in model.parameters())
    info = {"source": "random", "architecture": arch, "tokenizer_from": tok_spec, "parameters": n,
            "vocab_size": len(tok)}
    return ModelSession(name=spec, model=model, tokenizer=tok, device=device, dtype=dtype,
                        eos_token_ids=eos, bos_token_id=bos, pad_token_id=pad, info=info)


def _fits(cfg, dtype, device) -> bool:
    """Whether a model of this config fits in 90% of the free memory of `device` (a GPU)."""
    if device.type != "cuda":
        return False
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg, dtype=dtype).parameters())
    return n * torch.finfo(dtype).bits // 8 < 0.9 * torch.cuda.mem_get_info(device)[0]
