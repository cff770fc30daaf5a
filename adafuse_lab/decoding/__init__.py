"""The decoding engine: AdaFuse and its baselines on one shared member state.

    outputs = decode("adafuse", [session_a, session_b], prompts, DecodeConfig(theta=0.7), stop)
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Iterator, Sequence

import torch

from .config import ConfigError, DecodeConfig
from .engine import Batch, DecodeOutput, greedy_rounds, make_stop
from .state import Member
from .stream import stream_rounds

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


def _rounds(method: str, batch: Batch, cfg: DecodeConfig):
    from . import baselines
    if method == "single":
        return greedy_rounds(batch, 0)
    if method == "adafuse":
        return stream_rounds(batch, cfg, cfg.span_words, cfg)
    if method == "sweetspan":  # fixed spans, one greedy span per member, outlier scores filtered
        c = dataclasses.replace(cfg, B=1, outlier_filter=True)
        return stream_rounds(batch, c, cfg.sweetspan_words, c)
    if method == "coolfusion":  # one word per member per round, lowest mean perplexity wins
        c = dataclasses.replace(cfg, B=1, combine="ppl")
        return stream_rounds(batch, c, 1, c)
    if method == "unite":
        return baselines.unite_rounds(batch, cfg)
    if method == "gac":
        return baselines.gac_rounds(batch, cfg)
    return baselines.rerank_rounds(batch, cfg)


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
        state = [Member(s, [prompts[i] for i in idx], cfg.window_tokens) for s in sessions]
        batch = Batch(idx, state, cfg, stop_fn)
        for i, out in _rounds(method, batch, cfg):
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
