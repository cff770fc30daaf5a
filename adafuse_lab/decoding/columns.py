"""A fixed-width KV cache for the streaming engine, and CUDA graphs of its forwards.

HF's DynamicCache grows by concatenation, so every step has new shapes: nothing can be
captured. Here each layer's keys and values live in buffers with a fixed number of
columns; a forward writes its T new tokens at the columns the caller chose
(`cache.cols`), and the caller reclaims columns nobody reads any more by compacting.
With the shapes fixed, a forward of T tokens per row can be captured once as a CUDA graph
and replayed, so the HF model's host-side cost per forward (about 30 ms for a 24-layer
member, BENCHMARKS.md) becomes one replay.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .attention import engine_attention


class ColumnCache(DynamicCache):
    """Keys and values in fixed-width buffers (rows x heads x width x dim) per layer."""

    def __init__(self, source: DynamicCache, width: int):
        super().__init__()
        self.k = [_widen(layer.keys, width) for layer in source.layers]
        self.v = [_widen(layer.values, width) for layer in source.layers]
        self.cols: torch.Tensor | None = None  # where the next forward writes, one column per fed position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.k[layer_idx], self.v[layer_idx]
        cols = self.cols.to(k.device)  # no-op unless the member's layers span GPUs (device "auto")
        k.index_copy_(2, cols, key_states.to(k.dtype))
        v.index_copy_(2, cols, value_states.to(v.dtype))
        return k, v

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.width

    @property
    def width(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def gather_columns(self, order: torch.Tensor) -> None:
        """Row r's column j becomes its column order[r, j], in place (graphs keep their buffers)."""
        for buf in self.k + self.v:
            idx = order.to(buf.device)[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3])
            buf[:, :, : order.shape[1]] = buf.gather(2, idx)

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self.k = [b.index_select(0, rows.to(b.device)) for b in self.k]
        self.v = [b.index_select(0, rows.to(b.device)) for b in self.v]

    def grow(self, width: int) -> None:
        self.k = [_widen(b, width) for b in self.k]
        self.v = [_widen(b, width) for b in self.v]


def _widen(buf: torch.Tensor, width: int) -> torch.Tensor:
    out = buf.new_zeros(buf.shape[0], buf.shape[1], width, buf.shape[3])
    out[:, :, : buf.shape[2]] = buf
    return out


def bucket(t: int) -> int:
    """Fed tokens per row, rounded up to a power of two: few shapes, few graphs."""
    return 1 << max(0, t - 1).bit_length()


# Forward passes that bypass the model's hooks, by id(model): replays of captured graphs, and
# captures (which call the model twice without a step of their own: warm-up and recording).
# bench.py counts a member's forward passes as hook calls - 2 * captures + replays.
REPLAYS: Counter = Counter()
CAPTURES: Counter = Counter()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict          # static input tensors (the mask may be a dict of them)
    logits: torch.Tensor  # static output


class Graphs:
    """One member's forward as CUDA graphs, one per bucket of fed tokens. Valid while the
    cache keeps its buffers: call clear() after the rows or the width change."""

    def __init__(self, device=None):
        with torch.cuda.device(device):  # None: the current device
            self.pool = torch.cuda.graph_pool_handle()
        self.captured: dict[int, _Captured] = {}
        self.failed: str | None = None  # why capture was given up (the forward then runs eagerly)

    def clear(self) -> None:
        self.captured = {}

    def __call__(self, model, cache: ColumnCache, ids, pos, attn, cols) -> torch.Tensor:
        if self.failed is None:
            # Streams and captures belong to the current device: make it the member's. Without
            # this a member on cuda:1 (rank 1 of a sharded run) captured on cuda:0's stream,
            # every capture failed and it ran eagerly, at half the speed of rank 0.
            with torch.cuda.device(ids.device):
                try:
                    return self._replay(model, cache, ids, pos, attn, cols)
                except RuntimeError as e:  # something in the model cannot be captured
                    self.failed, self.captured = f"{type(e).__name__}: {e}", {}
                    warnings.warn(f"CUDA graph capture failed, running eagerly: {self.failed}", RuntimeWarning)
                    torch.cuda.synchronize()
        return eager_forward(model, cache, ids, pos, attn, cols)

    def _replay(self, model, cache, ids, pos, attn, cols) -> torch.Tensor:
        c = self.captured.get(ids.shape[1])
        if c is None:
            c = self.captured[ids.shape[1]] = self._capture(model, cache, ids, pos, attn, cols)
        _copy_into(c.inputs, {"ids": ids, "pos": pos, "attn": attn, "cols": cols})
        c.graph.replay()
        REPLAYS[id(model)] += 1
        return c.logits

    def _capture(self, model, cache, ids, pos, attn, cols) -> _Captured:
        inputs = {"ids": ids.clone(), "pos": pos.clone(), "attn": _clone(attn), "cols": cols.clone()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (lazy handles, workspaces)
            eager_forward(model, cache, inputs["ids"], inputs["pos"], inputs["attn"], inputs["cols"])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = eager_forward(model, cache, inputs["ids"], inputs["pos"], inputs["attn"], inputs["cols"])
        CAPTURES[id(model)] += 1
        return _Captured(graph, inputs, logits)


def eager_forward(model, cache: ColumnCache, ids, pos, attn, cols) -> torch.Tensor:
    cache.cols = cols
    with engine_attention(model):
        return model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                     use_cache=True).logits.to(ids.device)  # no-op unless the model spans devices


def _clone(x):
    """A copy with the same strides: an additive mask's rows stay padded (attention.additive_mask)."""
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if 0 in x.stride():  # an expanded view: its elements share memory, a copy may not
        return x.clone()
    return x.new_empty_strided(x.shape, x.stride()).copy_(x)


def _copy_into(static, new) -> None:
    if isinstance(static, dict):
        for k in static:
            _copy_into(static[k], new[k])
    else:
        static.copy_(new)
