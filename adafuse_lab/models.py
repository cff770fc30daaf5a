"""load_session(spec): one entry point for every kind of member.

spec is a zoo name ("smollm2-135m"), "tiny:NAME", a local folder or .gguf file,
or a Hugging Face hub id.
"""
from __future__ import annotations

import torch

from .session import ModelSession


def load_session(spec: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 trust_remote_code: bool = False) -> ModelSession:
    if spec.startswith("tiny:"):
        from .tiny import make_tiny
        return make_tiny(spec, device=device, dtype=dtype)
    raise NotImplementedError(f"only tiny:* members so far, got {spec!r}")
