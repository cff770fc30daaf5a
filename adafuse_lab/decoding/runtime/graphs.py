"""A member's forward as CUDA graphs, one per bucket of fed tokens per row.

With the cache's shapes fixed, a forward of T tokens per row is captured once and replayed,
so the HF model's host-side cost per forward (about 30 ms for a 24-layer member,
BENCHMARKS.md) becomes one replay.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..attention import StepMeta, use_backend
from .counters import COUNTS


def bucket(t: int) -> int:
    """Fed tokens per row, rounded up to a power of two: few shapes, few graphs."""
    return 1 << max(0, t - 1).bit_length()


def eager_forward(model, backend, kv, plan, window=None, mixed=False, compiled: bool = False) -> torch.Tensor:
    """One forward of `plan` (6 x rows x T int64: token ids, positions, owners, parents, limits,
    and the cache columns written, the same in every row) on the KVCache `kv`: the fed columns'
    positions and owners are written into the cache's per-column state, the attention plan is
    made from it (StepMeta), and the model runs. Captured as a graph, all of it is the replay, and
    the plan its one input."""
    ids, pos, owner, parent, limit, at = plan
    cols = at[0]
    owner, parent = owner.to(kv.owner.dtype), parent.to(kv.owner.dtype)
    kv.pos.index_copy_(1, cols, pos)
    kv.owner.index_copy_(1, cols, owner)
    meta = StepMeta(kv.committed, kv.pos, kv.owner, cols[0], pos, owner, parent, limit, window, mixed)
    kv.cache.cols = cols
    run = compiled_forward(model) if compiled else model
    attn = backend.plan(meta)
    with use_backend(model, backend):
        return run(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=kv.cache,
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
    plan: torch.Tensor    # static input
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
        plans and logits go back to the pool."""
        self.retired += [c.graph for c in self.captured.values()]
        self.captured = {}

    def __call__(self, model, backend, kv, plan, window=None, mixed=False) -> torch.Tensor:
        """eager_forward's logits, from the graph captured for this many tokens per row."""
        if self.failed is None:
            # captures belong to the current device: make it the member's (rank 1 of a sharded run)
            with torch.cuda.device(plan.device):
                try:
                    c = self.captured.get(plan.shape[2])
                    if c is None:
                        c = self.captured[plan.shape[2]] = self._capture(model, backend, kv, plan, window, mixed)
                    c.plan.copy_(plan)
                    c.graph.replay()
                    return c.logits
                except RuntimeError as e:  # something in the model cannot be captured
                    self.failed, self.captured = f"{type(e).__name__}: {e}", {}
                    warnings.warn(f"CUDA graph capture failed, running eagerly: {self.failed}", RuntimeWarning)
                    torch.cuda.synchronize()
        return eager_forward(model, backend, kv, plan, window, mixed, self.compiled)

    def _capture(self, model, backend, kv, plan, window, mixed) -> _Captured:
        # the cache's per-column state (kv.committed, pos, owner) is read and written where it
        # lies: the cache updates it in place while its width holds (a widening clears the graphs)
        start = time.perf_counter()
        static = plan.clone()
        graph, logits = capture(self.pool, lambda: eager_forward(model, backend, kv, static, window, mixed,
                                                                 self.compiled))
        COUNTS[id(model), "capture_s"] += time.perf_counter() - start  # host time, compiling included
        COUNTS[id(model), "captures"] += 1
        return _Captured(graph, static, logits)


@dataclass
class _Small:
    graph: torch.cuda.CUDAGraph
    index: torch.Tensor   # static: the padded index matrix
    out: torch.Tensor     # static output


class SmallGraphs:
    """The engine's small tensor functions between forwards (peek rows, token scores), captured
    as CUDA graphs and replayed: each is dozens of kernels, and on a GPU host every launch, not
    the kernel, is the cost (a logsumexp of a few rows took 80 us of host time; BENCHMARKS.md,
    engine v16). A function fn(*fixed, index, *consts) reads its big tensors (`fixed`, the
    member's logits) where they lie and takes an int64 index matrix (k x n) whose n is rounded up
    to a bucket, so a few graphs serve every step; a layout (addresses, shapes, n's bucket,
    consts) is captured once. Rows past n compute on index 0 and are cut off (a function that
    writes must mask them). Without capture (the CPU) fn runs eagerly on the same padded index.
    The result is valid until the next call: queue its use (a copy, an index_add_) before the next."""

    LIMIT = 256

    def __init__(self, device, key, capture: bool = True):
        self.key = key  # the member model's counters (COUNTS)
        self.device = torch.device(device)
        self.pool = None
        if capture:
            with torch.cuda.device(self.device):
                self.pool = torch.cuda.graph_pool_handle()  # one pool: the graphs run one at a time
        self.graphs: dict[tuple, _Small] = {}
        self.failed: str | None = None

    def __call__(self, fn, fixed: tuple, index, consts: tuple = ()) -> torch.Tensor:
        """fn's result for `index` (host int64 rows, k x n), through its captured graph."""
        index = np.asarray(index, dtype=np.int64).reshape(len(index), -1)
        n = index.shape[1]
        N = bucket(n)
        padded = np.zeros((index.shape[0], N), dtype=np.int64)
        padded[:, :n] = index
        if self.pool is None or self.failed is not None:
            return fn(*fixed, on_device_index(padded, self.device), *consts)[:n]
        key = (fn, N, index.shape[0], consts, *[(t.data_ptr(), t.shape, t.stride(), t.dtype) for t in fixed])
        g = self.graphs.get(key)
        if g is None and len(self.graphs) >= self.LIMIT:  # layouts that keep changing (a forward run eagerly)
            self.failed = f"more than {self.LIMIT} layouts"
            return fn(*fixed, on_device_index(padded, self.device), *consts)[:n]
        if g is None:
            try:
                g = self.graphs[key] = self._capture(fn, fixed, index.shape[0], N, consts)
            except RuntimeError as e:  # something in fn cannot be captured: run it eagerly from here on
                self.failed = f"{type(e).__name__}: {e}"
                warnings.warn(f"CUDA graph capture of {fn.__name__} failed, running eagerly: {self.failed}",
                              RuntimeWarning)
                torch.cuda.synchronize()
                return fn(*fixed, on_device_index(padded, self.device), *consts)[:n]
        g.index.copy_(torch.from_numpy(padded).pin_memory(), non_blocking=True)
        g.graph.replay()
        return g.out[:n]

    def _capture(self, fn, fixed, k, N, consts) -> _Small:
        start = time.perf_counter()
        index = torch.zeros((k, N), dtype=torch.long, device=self.device)
        # (its warm-up run writes nothing, if fn writes: a zero index is masked)
        graph, out = capture(self.pool, lambda: fn(*fixed, index, *consts))
        COUNTS[self.key, "capture_s"] += time.perf_counter() - start
        COUNTS[self.key, "captures"] += 1
        return _Small(graph, index, out)


def capture(pool, fn) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, fn's output): fn run once on a side stream to warm up (lazy handles, workspaces),
    then captured there into a graph of `pool`. Unlike the torch.cuda.graph context, it does not
    synchronize the device nor empty the allocator's device and pinned-host caches first: with
    batches in flight that would stall the other batches' queued work at every capture, and
    make every allocation after it a fresh cudaMalloc or cudaHostAlloc."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        graph.capture_begin(pool, capture_error_mode="global")
        try:
            out = fn()
        finally:
            graph.capture_end()
    return graph, out


def on_device_index(index: np.ndarray, device) -> torch.Tensor:
    """An int64 host array on `device`, queued behind the work there (member.on_device)."""
    t = torch.from_numpy(index)
    return t.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else t.to(device)
