"""The decoding engine: AdaFuse and its baselines on one runtime.

    outputs = decode("adafuse", [session_a, session_b], prompts, DecodeConfig(theta=0.7), stop)

Three layers: methods/ (the round logic of each method), runtime/ (each member's streams,
forward plans, KV cache and CUDA graphs), attention/ (how the fed tokens attend over the
token tree). decode_iter is the whole loop: per batch, one runtime per member, then the
method's rounds.
"""
from __future__ import annotations

import difflib
from typing import Iterator, Sequence

import torch

from .attention import get_backend
from .config import ConfigError, DecodeConfig
from .methods import ROUNDS, Batch, DecodeOutput, make_stop
from .runtime import Runtime

METHODS = ("single", "adafuse", "unite", "gac", "sweetspan", "coolfusion", "rerank")

__all__ = ["METHODS", "ConfigError", "DecodeConfig", "DecodeOutput", "decode", "decode_iter", "check_method"]


def check_method(method: str, n_members: int, cfg: DecodeConfig) -> None:
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown method {method!r}{hint}; choose from {', '.join(METHODS)}")
    if n_members < 1:
        raise ConfigError("at least one member is needed")
    if method == "single" and not 0 <= cfg.member < n_members:
        raise ConfigError(f"member {cfg.member} does not exist: {n_members} member(s) given")


@torch.inference_mode()  # no autograd graph: it would keep every step's cache alive
def decode_iter(method: str, members: Sequence, prompts: Sequence[str], cfg: DecodeConfig | None = None,
                stop=None) -> Iterator[tuple[int, DecodeOutput]]:
    """Decode `prompts` with `members` (ModelSessions); yield (prompt index, output) as each finishes.

    `stop`: a function text -> cut index (or None), or a list of stop strings.
    """
    cfg = cfg or DecodeConfig()
    check_method(method, len(members), cfg)
    sessions = [members[cfg.member]] if method == "single" else list(members)
    stop_fn = make_stop(stop)
    for start in range(0, len(prompts), cfg.batch_size):
        idx = list(range(start, min(start + cfg.batch_size, len(prompts))))
        runtimes = [Runtime(s, [prompts[i] for i in idx], cfg, get_backend(cfg.attention, s.device, s.model, len(idx)))
                    for s in sessions]
        batch = Batch(idx, cfg, stop_fn, len(sessions))
        for i, out in ROUNDS[method](runtimes, batch, cfg):
            out.stats["method"] = method
            out.stats["members"] = [s.name for s in sessions]
            yield i, out


def decode(method: str, members: Sequence, prompts: Sequence[str], cfg: DecodeConfig | None = None,
           stop=None) -> list[DecodeOutput]:
    """Like decode_iter, in prompt order."""
    outs: list = [None] * len(prompts)
    for i, out in decode_iter(method, members, prompts, cfg, stop):
        outs[i] = out
    return outs
