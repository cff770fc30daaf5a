"""Lanes: a batch split into parts that take turns, so the host plans one part's step while the
GPU runs the other's forwards.

A method's rounds yield STEP once a step's forwards are queued. What the host reads after a
forward is copied right behind it (Runtime.forward), so a lane reading its results waits for
its own forwards, not for those the next lane queued after them. (A CUDA stream per lane
was tried first: its run did not finish on an H200; BENCHMARKS.md, engine v5.)
"""
from __future__ import annotations

from typing import Callable, Iterator


class Lane:
    """One part of a batch: its method's rounds, run a step at a time."""

    def __init__(self, start: Callable[[], Iterator]):
        self.rounds = start()

    def step(self) -> tuple[list, bool]:
        """Run up to the next queued step; its finished outputs, and whether the rounds are over."""
        out = []
        for item in self.rounds:
            if item is None:  # STEP (methods/batch.py): the step's forwards are queued
                return out, False
            out.append(item)
        return out, True


def interleave(lanes: list[Lane]) -> Iterator:
    """The lanes' outputs, running their steps in turn until every lane is over."""
    live = list(lanes)
    while live:
        for lane in list(live):
            out, over = lane.step()
            if over:
                live.remove(lane)
            yield from out


def split(items: list, parts: int) -> list[list]:
    """`items` in at most `parts` contiguous parts of near-equal size (none empty)."""
    n = min(parts, len(items))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out
