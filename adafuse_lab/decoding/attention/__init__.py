"""Attention backends: how a member's layers attend over the engine's token tree.

A backend turns the runtime's per-step metadata (which cache columns each fed token may
read) into what its kernel needs, once per forward (`plan`), and then runs each layer
(`attend`). The runtime hands the plan to the HF model as its attention mask; the model's
layers call `attend` through transformers' attention-function registry, so any HF causal LM
works as a member.

  reference  K/V repeated to the query heads, SDPA's math kernel: obviously right (tests)
  sdpa_gqa   SDPA with enable_gqa on the keys and values as they are (no copies), no cuDNN
             (cuDNN plans an execution graph for every new key length); chosen on CUDA by
             measurement (BENCHMARKS.md, "Attention backends")
"""
from .backends import BACKENDS, AttentionBackend, StepMeta, get_backend, use_backend

__all__ = ["BACKENDS", "AttentionBackend", "StepMeta", "get_backend", "use_backend"]
