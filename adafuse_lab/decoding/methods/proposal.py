"""A member's proposal for one round (method.md §1, step 1): the proposal record, the
look-ahead and branch state, and the gate that decides commit / branch / stop at a word start."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    own: list = field(default_factory=list)  # per candidate, what this member scores: (text, look-ahead tokens)
    decoded: list = field(default_factory=list)  # per candidate, the streams that decoded it: (look-ahead, branch or None)


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
    eos_id: int = -1              # the EOS id that ended it
    unit: int = 0                 # index in toks where the current unit (word, or first span) starts
    cap: int = 1 << 30            # look-ahead: stop once this many words are complete (greedy_word2)
    tail: bool = False            # lookahead_scoring: the text is complete, the tokens after it go to extra
    extra: list = field(default_factory=list)  # lookahead_scoring: tokens decoded after the text, scored too


def _gate(cfg, confident: bool, unit: int, fixed: bool) -> str:
    """What to do at the start of a unit (a word; the first unit holds span_length words):
    'commit', 'branch', 'stop', or 'last' (commit this word, then stop)."""
    if fixed:  # fixed spans: only the first word may branch; afterwards words are committed regardless
        return "branch" if (unit == 0 and not confident and cfg.B > 1) else "commit"
    if cfg.B > 1 and cfg.effective("official_gating"):  # the official code's gating
        if unit == 1:
            return "commit" if confident else ("last" if cfg.effective("greedy_word2") else "stop")
        if unit >= 2:
            return "branch"
    return "commit" if confident else "branch"


def _unit(words: int, first: int) -> int | None:
    """Index of the unit that starts at word `words` (None inside the first span of `first` words)."""
    if words == 0:
        return 0
    return None if words < first else words - first + 1
