"""Lanes: a batch split into parts that take turns, so the host plans one part's step while the
GPU runs the other's forwards.

A method's rounds yield None once a step's forwards are queued (the host would next wait for
them). Each lane queues its work on CUDA streams of its own, so reading one lane's results
waits for that lane's forwards only, not for those another lane queued after them.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


class Lane:
    """One part of a batch: its method's rounds, run with its own streams current."""

    def __init__(self, start: Callable[[], Iterator], devices: list[torch.device]):
        self.streams = [torch.cuda.Stream(d) for d in devices]
        with self.current():
            self.rounds = start()  # the runtimes (prefill, cache) are made on the lane's streams too

    @contextlib.contextmanager
    def current(self):
        with contextlib.ExitStack() as stack:
            for s in self.streams:
                stack.enter_context(torch.cuda.stream(s))
            yield

    def step(self) -> tuple[list, bool]:
        """Run up to the next queued step; its finished outputs, and whether the rounds are over."""
        out = []
        with self.current():
            for item in self.rounds:
                if item is None:
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
