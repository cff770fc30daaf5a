"""Attention backends: how a member's layers attend over the engine's token tree.

A backend turns the runtime's per-step metadata (which cache columns each fed token may
read) into what its kernel needs, once per forward (`plan`), and then runs each layer
(`attend`). The runtime hands the plan to the HF model as its attention mask; the model's
layers call `attend` through transformers' attention-function registry, so any HF causal LM
works as a member.

  reference  K/V repeated to the query heads, SDPA's math kernel: obviously right (tests)
  sdpa_gqa   SDPA with enable_gqa on the keys and values as they are (no copies); on CUDA
             cuDNN's kernel when it takes the shape (the cache's width is fixed, so its plans
             are built once), else flash / memory-efficient / math
  sdpa_fold  the query heads of each K/V head folded into query rows, SDPA's memory-efficient
             kernel with the mask (it takes a mask but not enable_gqa)
  triton     tree_kernel.py: one Triton program per row and K/V head takes every query that
             reads that head (G heads x T tokens as one tile), skips blocks of columns the mask
             hides from all of them; CUDA (CPU only in Triton's interpreter, for tests)
  auto       on CUDA, whichever of sdpa_gqa, sdpa_fold and triton (when installed) is fastest
             on one layer of the member's shape, for one new token per row and for 8, measured
             at the start of a batch (bench records the times); when the two differ, forwards of
             one token per row take the first and longer ones the second (ByLength); elsewhere
             sdpa_gqa
"""
from .backends import BACKENDS, AttentionBackend, StepMeta, get_backend, use_backend

__all__ = ["BACKENDS", "AttentionBackend", "StepMeta", "get_backend", "use_backend"]
