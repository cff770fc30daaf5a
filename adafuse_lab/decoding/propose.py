"""Pieces of a member's proposal for one round (method.md §1, step 1): the proposal
record, the per-row decoding state, the gate that decides commit / branch / stop at a
word start, and one batched decode step. The round loop itself is stream.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .state import Member


@dataclass
class Proposal:
    texts: list[str]            # candidate continuations: the greedy span, or one per kept branch
    eos: list[bool]             # does the candidate end the answer
    margin: list[float] = field(default_factory=list)   # at each word start this round
    entropy: list[float] = field(default_factory=list)  # normalised confidence 1 - H/log V
    conf: list[float] = field(default_factory=list)     # the criterion's value
    theta: list[float] = field(default_factory=list)    # the threshold it was compared with
    words: int = 0              # words committed before stopping or branching
    branched: bool = False
    tokens: int = 0             # tokens this member decoded for the prompt (look-ahead + branches)
    forwards: int = 0           # forward passes that carried this prompt


@dataclass
class _Row:
    toks: list = field(default_factory=list)
    text: str = ""
    word: str = ""
    word_tokens: int = 0
    words: int = 0
    done: bool = False
    eos: bool = False
    branch: tuple | None = None   # (token ids, log-probs) of the first tokens to branch on
    lp: float = 0.0               # log-probability of the decoded tokens (branches)
    target: int = 0               # branches: stop once this many words are complete
    base: list = field(default_factory=list)  # branches: the look-ahead tokens before the branch
    base_text: str = ""           # branches: their text
    rank: int = 0                 # branches: rank of the first token
    ready: list = field(default_factory=list)  # branch points: branches complete without decoding (EOS)


def _gate(cfg, confident: bool, word_index: int, fixed: bool) -> str:
    """What to do at a word start: 'commit', 'branch' or 'stop'."""
    if fixed:  # fixed spans: only the first word may branch; afterwards words are committed regardless
        return "branch" if (word_index == 0 and not confident and cfg.B > 1) else "commit"
    if cfg.compat and cfg.B > 1:  # the official code's gating
        if word_index == 1:
            return "commit" if confident else "stop"
        if word_index >= 2:
            return "branch"
    return "commit" if confident else "branch"


def _extend(text: str, word: str, full: str) -> tuple[str, str, str]:
    """A token took the decoded text from `text` to `full`: (its piece, text and word cut back to
    what it left unchanged). Usually full = text + piece, but a token that completes a multi-byte
    character turns the "\ufffd" its first bytes decoded to into that character."""
    n = len(os.path.commonprefix([text, full]))
    return full[n:], text[:n], word[:max(0, len(word) - (len(text) - n))]


def step(member: Member, feed: dict[int, int], rows: int) -> torch.Tensor:
    """One batched forward of one token per row (a pad, masked, for rows with nothing to feed)."""
    dev = member.s.device
    ids = torch.full((rows, 1), member.s.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, 1), dtype=torch.long)
    for p, t in feed.items():
        ids[p, 0], mask[p, 0] = t, 1
    member.forwards += 1
    return member.kv.forward(member.s.model, ids.to(dev), mask.to(dev))[:, -1]


