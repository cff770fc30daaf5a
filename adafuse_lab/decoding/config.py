"""Every knob of the decoding engine, with the paper's choices as defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..fields import check_field_types

CRITERIA = ("margin", "entropy", "prob")
THRESHOLDS = ("fixed", "dynamic")
BRANCH_SELECT = ("topk", "distinct", "semantic")
COMBINE = ("mean", "ppl")
ATTENTION = ("auto", "sdpa_gqa", "sdpa_fold", "triton", "reference")
# The official code's behaviours (method.md, its defects), each a field whose None means
# "as compat says": (the official code's value, ours). README "Known differences" lists them.
OFFICIAL = {
    "official_gating": (True, False),
    "greedy_word2": (True, False),
    "span_length": (4, 1),
    "max_span_rounds": (5, 0),
    "bare_cross_scoring": (True, False),
    "lookahead_scoring": (True, False),
    "official_text": (True, False),
}


class ConfigError(ValueError):
    """A decoding parameter is unknown or out of range."""


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 256      # budget, counted in the first member's tokens
    batch_size: int = 16           # prompts decoded together
    # AdaFuse (method.md §1)
    theta: float = 0.7             # confidence threshold in [0, 1]; confident when confidence >= theta
    criterion: str = "margin"      # margin p1-p2 (paper) | entropy (1 - H/log V) | prob (p1)
    threshold: str = "fixed"       # fixed | dynamic (running quantile of the member's recent confidences)
    dyn_window: int = 32           # dynamic: how many recent word-start confidences to look at
    dyn_quantile: float = 0.3      # dynamic: theta = this quantile of the window ...
    dyn_position_slope: float = 0.0  # ... plus slope * (words already in the answer) / 100
    M: int = 3                     # most words committed by a confident member in one round
    B: int = 3                     # branches when uncertain (B = 1: ablation without diversity-aware scaling)
    span_words: int | None = None  # fixed span of this many words (ablation without adaptive commitment)
    branch_select: str = "topk"    # topk | distinct (skip repeated words) | semantic (log-prob + lambda * distance)
    diversity_lambda: float = 1.0  # semantic: weight of the embedding distance
    branch_pool: int = 2           # distinct/semantic: consider B * branch_pool first tokens
    combine: str = "mean"          # mean NLL (paper) | ppl (mean perplexity, Cool-Fusion)
    weights: tuple[float, ...] | None = None  # per-member weights of the score average
    outlier_filter: bool = False   # drop the highest and lowest score when max/min > outlier_ratio
    outlier_ratio: float = 10.0
    score_eos: bool = True         # an answer-ending candidate is scored with each member's EOS token;
                                   # False: by its text alone, EOS only for an empty one (the spec leaves this open)
    # the official code's behaviours: None = as compat says; a value given wins over compat
    compat: bool = False           # every field below that is None takes the official code's value
    official_gating: bool | None = None     # B>1: an uncertain word 2 ends the span, word 3 always branches
    greedy_word2: bool | None = None        # official gating: an uncertain word 2 is still proposed, greedily
    span_length: int | None = None          # words in a member's first span, its confidence read once (1; official 4)
    max_span_rounds: int | None = None      # span methods stop after this many rounds (0 = no cap; official 5)
    bare_cross_scoring: bool | None = None  # non-proposers score a candidate tokenized alone, leading space stripped
    lookahead_scoring: bool | None = None   # B>1: the proposer also scores its look-ahead tokens (7, or 12)
    official_text: bool | None = None       # end token glued to the last word, stop at "<"/"note:"/"question:", newlines dropped
    # baselines
    member: int = 0                # single: which member decodes
    unite_k: int = 10              # UniTE: top-k strings per member
    gac_threshold: float | None = None  # GaC: ensemble only when the first member's top-1 prob is below this
    sweetspan_words: int = 3       # SweetSpan: fixed span length in words
    # engine details
    word_token_cap: int = 24       # a word longer than this many tokens (CJK, URLs) ends here
    window_tokens: int = 8         # tokens re-tokenized at the boundary when text is appended
    trace: bool = True             # record the per-round trace
    early_scoring: bool = True     # AdaFuse rounds: members score candidates while they grow, not in a forward after
    member_turns: bool = False     # span methods: members take turns, each planning its forward while the GPU runs the others' (answers differ a little: BENCHMARKS.md, engine v17)
    batches_in_flight: int = 2     # batches decoded at once, taking turns step by step, each on a CUDA stream of its own
    feed_cap: int = 16             # tokens a prompt feeds per forward at most (0: no cap); candidates longer wait a step
    kv_slack: int = 320            # cache columns beyond prompt + budget, for live streams' feeds (fewer: more compactions)
    cuda_graphs: bool = True       # on CUDA: capture each forward shape once, then replay it
    reuse_buffers: bool = True     # on CUDA: a batch takes over a finished batch's KV buffers and graphs (widths rounded up to 256 columns)
    compile: bool = False          # members' decode forwards through torch.compile (each shape compiles once: slow start)
    attention: str = "auto"        # attention backend: auto (CUDA: the fastest one measured) | sdpa_gqa | sdpa_fold | triton | reference

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        check_field_types(self, ConfigError)  # 2.5 tokens, True as 1, NaN: one error naming the field
        need(0.0 <= self.theta <= 1.0, f"theta must be in [0, 1], got {self.theta}")
        need(self.criterion in CRITERIA, f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        need(self.threshold in THRESHOLDS, f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        need(self.branch_select in BRANCH_SELECT, f"branch_select must be one of {BRANCH_SELECT}, got {self.branch_select!r}")
        need(self.combine in COMBINE, f"combine must be one of {COMBINE}, got {self.combine!r}")
        need(self.M >= 1, f"M must be >= 1, got {self.M}")
        need(self.B >= 1, f"B must be >= 1, got {self.B}")
        need(self.span_words is None or self.span_words >= 1, f"span_words must be >= 1, got {self.span_words}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(0.0 < self.dyn_quantile < 1.0, f"dyn_quantile must be in (0, 1), got {self.dyn_quantile}")
        need(self.dyn_window >= 1 and self.branch_pool >= 1 and self.unite_k >= 1, "dyn_window, branch_pool and unite_k must be >= 1")
        need(self.outlier_ratio > 1.0, f"outlier_ratio must be > 1, got {self.outlier_ratio}")
        need(self.word_token_cap >= 1 and self.window_tokens >= 1, "word_token_cap and window_tokens must be >= 1")
        need(isinstance(self.feed_cap, int) and self.feed_cap >= 0, f"feed_cap must be a whole number >= 0, got {self.feed_cap!r}")
        need(isinstance(self.batches_in_flight, int) and self.batches_in_flight >= 1,
             f"batches_in_flight must be a whole number >= 1, got {self.batches_in_flight!r}")
        need(isinstance(self.kv_slack, int) and self.kv_slack >= 0, f"kv_slack must be a whole number >= 0, got {self.kv_slack!r}")
        need(self.sweetspan_words >= 1, f"sweetspan_words must be >= 1, got {self.sweetspan_words}")
        need(self.attention in ATTENTION, f"attention must be one of {ATTENTION}, got {self.attention!r}")
        need(self.gac_threshold is None or 0.0 <= self.gac_threshold <= 1.0, "gac_threshold must be in [0, 1]")
        need(isinstance(self.compat, bool), f"compat must be true or false, got {self.compat!r}")
        for name in ("cuda_graphs", "reuse_buffers", "compile", "trace", "score_eos", "outlier_filter", "early_scoring",
                     "member_turns"):
            v = getattr(self, name)
            need(isinstance(v, bool), f"{name} must be true or false, got {v!r}")
        for name, (official, _) in OFFICIAL.items():
            v = getattr(self, name)
            if isinstance(official, bool):
                need(v is None or isinstance(v, bool), f"{name} must be true, false or null, got {v!r}")
            else:
                need(v is None or (isinstance(v, int) and not isinstance(v, bool)),
                     f"{name} must be a whole number or null, got {v!r}")
        need(self.span_length is None or self.span_length >= 1, f"span_length must be >= 1, got {self.span_length}")
        need(self.max_span_rounds is None or self.max_span_rounds >= 0,
             f"max_span_rounds must be >= 0 (0: no cap), got {self.max_span_rounds}")

    def effective(self, name: str):
        """The value in force for one of the OFFICIAL fields: its own, or compat's choice when None."""
        v = getattr(self, name)
        return OFFICIAL[name][0 if self.compat else 1] if v is None else v

    @classmethod
    def from_dict(cls, values: dict) -> "DecodeConfig":
        """Build from user input, naming unknown keys and the closest valid ones."""
        import difflib
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown decoding parameter {key!r}{hint}")
        if values.get("weights") is not None:
            values = {**values, "weights": tuple(float(w) for w in values["weights"])}
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
