"""What a finished batch leaves to the next one of the same shape: each member's KV cache
buffers and the forward graphs captured on them.

Graph captures were 7-10% of a multi-batch run's wall time (BENCHMARKS.md, engine v18), most
of it the forwards' (the small graphs between them, runtime.graphs.SmallGraphs, are cheap to
capture and are made anew per batch). A graph replays on the buffers it was captured with, so
the next batch takes over the buffers, and with them the forward graphs, if it has the same
rows and width. For that, widths are rounded up (WIDTH_STEP):
a batch's width then depends on its own prompts only, never on which batch came before, so
its answers stay those it gets alone. Held for one decode call, then freed with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv import KVCache

WIDTH_STEP = 256  # KV columns: prompts of one task mostly fall in one step
# Where buffers are reused (widths rounded): where graphs are captured. The tests add "cpu".
REUSE_DEVICES = {"cuda"}


@dataclass
class Held:
    kv: KVCache
    graphs: object             # runtime.graphs.Graphs or None
    ready: object = None       # a CUDA event after the last work of the batch that held it


class Reuse:
    """At most one idle cache per member model, under its key (model, backend, rows, width)."""

    def __init__(self):
        self.idle: dict[int, tuple[tuple, Held]] = {}  # member model -> (key, held cache)

    @staticmethod
    def width(need: int) -> int:
        return -(-need // WIDTH_STEP) * WIDTH_STEP

    def take(self, key: tuple, prefill, committed: torch.Tensor, pos: torch.Tensor) -> Held | None:
        """The member's held cache if it has this key, its buffers refilled with `prefill`
        (KVCache.refill); else None, the held cache freed before the batch allocates its own."""
        k, held = self.idle.pop(key[0], (None, None))
        if held is None:
            return None
        if k == key:
            if held.ready is not None:  # the batch that held it queued its work on another stream
                stream = torch.cuda.current_stream(committed.device)
                stream.wait_event(held.ready)
                # freed later, the buffers wait for this stream's work too, not only their first one's
                for t in [*held.kv.cache.k, *held.kv.cache.v, held.kv.committed, held.kv.pos, held.kv.owner]:
                    t.record_stream(stream)
            if held.kv.refill(prefill, committed, pos):
                return held
        _free(held)
        return None

    def give(self, key: tuple, kv: KVCache, graphs) -> None:
        """A finished batch's cache, for the member's next batch (one it held before is freed)."""
        ready = None
        if kv.committed.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(kv.committed.device))
        _, older = self.idle.get(key[0], (None, None))
        if older is not None:
            _free(older)
        self.idle[key[0]] = (key, Held(kv, graphs, ready))

    def close(self) -> None:
        """Free what is held (at the end of a decode call)."""
        for _, held in self.idle.values():
            _free(held)
        self.idle = {}


def _free(held: Held) -> None:
    """Wait until the last work on a held cache is done; dropping it then frees its memory."""
    if held.ready is not None:  # its graphs' pool is freed with them: after their last replay
        held.ready.synchronize()
