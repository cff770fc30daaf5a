"""The round logic of every method, over the runtime's streams (no tensor bookkeeping here)."""
import dataclasses

from .adafuse import span_rounds
from .batch import STEP, Batch, DecodeOutput, make_stop
from .greedy import rerank_rounds, single_rounds
from .tokens import gac_rounds, unite_rounds


def sweetspan_rounds(runtimes, batch, cfg):
    """SweetSpan: a fixed span of words, one greedy span per member, outlier scores filtered."""
    return span_rounds(runtimes, batch, dataclasses.replace(cfg, B=1, outlier_filter=True), cfg.sweetspan_words)


def coolfusion_rounds(runtimes, batch, cfg):
    """Cool-Fusion: one word per member per round, lowest mean perplexity wins."""
    return span_rounds(runtimes, batch, dataclasses.replace(cfg, B=1, combine="ppl"), 1)


def adafuse_rounds(runtimes, batch, cfg):
    return span_rounds(runtimes, batch, cfg, cfg.span_words)


ROUNDS = {"single": single_rounds, "adafuse": adafuse_rounds, "unite": unite_rounds, "gac": gac_rounds,
          "sweetspan": sweetspan_rounds, "coolfusion": coolfusion_rounds, "rerank": rerank_rounds}

__all__ = ["ROUNDS", "STEP", "Batch", "DecodeOutput", "make_stop"]
