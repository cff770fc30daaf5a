"""A member's forward as CUDA graphs, one per bucket of fed tokens per row.

With the cache's shapes fixed, a forward of T tokens per row is captured once and replayed,
so the HF model's host-side cost per forward (about 30 ms for a 24-layer member,
BENCHMARKS.md) becomes one replay.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from ..attention import use_backend
from .counters import COUNTS


def bucket(t: int) -> int:
    """Fed tokens per row, rounded up to a power of two: few shapes, few graphs."""
    return 1 << max(0, t - 1).bit_length()


def eager_forward(model, backend, cache, ids, pos, attn, cols, compiled: bool = False) -> torch.Tensor:
    cache.cols = cols
    run = compiled_forward(model) if compiled else model
    with use_backend(model, backend):
        return run(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                   use_cache=True).logits.to(ids.device)  # no-op unless the model spans devices


def compiled_forward(model):
    """The model's forward through torch.compile (inductor), made once per model. The first
    shape compiles static (one token per row: greedy decoding); a second makes the fed tokens
    per row a dynamic size, so a run compiles about twice per member, not once per bucket.
    The compiled forward bypasses the module's hooks; the engine counts its forwards itself."""
    fn = model.__dict__.get("_adafuse_compiled")
    if fn is None:
        import torch._dynamo
        # the default limit (8) is below what a long run can meet (cache widths, mask layouts)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        fn = model.__dict__["_adafuse_compiled"] = torch.compile(model.forward)
    return fn


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict          # static input tensors (the mask may be a dict of them)
    logits: torch.Tensor  # static output


class Graphs:
    """Valid while the cache keeps its buffers: clear() after the rows or the width change."""

    def __init__(self, device=None, compiled: bool = False):
        self.compiled = compiled
        with torch.cuda.device(device):
            self.pool = torch.cuda.graph_pool_handle()
        self.captured: dict[int, _Captured] = {}
        self.retired: list[torch.cuda.CUDAGraph] = []
        self.failed: str | None = None  # why capture was given up (the forward then runs eagerly)

    def clear(self) -> None:
        """Forget the graphs but keep the graph objects alive while this object lives: a capture
        after all graphs of the pool were destroyed failed an allocator assert on an H100
        (BENCHMARKS.md, engine v15), and destroying graphs captured on one stream frees the cuBLAS
        workspace the other members' graphs replay with (pytorch/pytorch#193402). Their static
        inputs and logits go back to the pool."""
        self.retired += [c.graph for c in self.captured.values()]
        self.captured = {}

    def __call__(self, model, backend, cache, ids, pos, attn, cols) -> torch.Tensor:
        if self.failed is None:
            # captures belong to the current device: make it the member's (rank 1 of a sharded run)
            with torch.cuda.device(ids.device):
                try:
                    return self._replay(model, backend, cache, ids, pos, attn, cols)
                except RuntimeError as e:  # something in the model cannot be captured
                    self.failed, self.captured = f"{type(e).__name__}: {e}", {}
                    warnings.warn(f"CUDA graph capture failed, running eagerly: {self.failed}", RuntimeWarning)
                    torch.cuda.synchronize()
        return eager_forward(model, backend, cache, ids, pos, attn, cols, self.compiled)

    def _replay(self, model, backend, cache, ids, pos, attn, cols) -> torch.Tensor:
        c = self.captured.get(ids.shape[1])
        if c is None:
            c = self.captured[ids.shape[1]] = self._capture(model, backend, cache, ids, pos, attn, cols)
        _copy_into(c.inputs, {"ids": ids, "pos": pos, "attn": attn, "cols": cols})
        c.graph.replay()
        return c.logits

    def _capture(self, model, backend, cache, ids, pos, attn, cols) -> _Captured:
        start = time.perf_counter()
        inputs = {"ids": ids.clone(), "pos": pos.clone(), "attn": _clone(attn), "cols": cols.clone()}
        run = lambda: eager_forward(model, backend, cache, inputs["ids"], inputs["pos"], inputs["attn"], inputs["cols"],
                                    self.compiled)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (lazy handles, workspaces)
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = run()
        torch.cuda.synchronize()
        COUNTS[id(model), "capture_s"] += time.perf_counter() - start  # compiling included
        COUNTS[id(model), "captures"] += 1
        return _Captured(graph, inputs, logits)


def _clone(x):
    return {k: v.clone() for k, v in x.items()} if isinstance(x, dict) else x.clone()


def _copy_into(static, new) -> None:
    if isinstance(static, dict):
        for k in static:
            static[k].copy_(new[k])
    else:
        static.copy_(new)
