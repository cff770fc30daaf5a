"""Attention backends (decoding/attention): the fast backend equals the reference on random
token trees, the tree mask reads what the token tree says, and the KV cache reuses the
columns of dead streams."""
import dataclasses
import os

import pytest
import torch

from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.decoding.attention import BACKENDS, StepMeta, tree_kernel
from adafuse_lab.decoding.attention.backends import tree_mask
from adafuse_lab.decoding.runtime import kv
from adafuse_lab.models import load_session

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_tree(rows, width, T, streams=4, seed=0, device="cpu"):
    """Random committed columns, columns owned by `streams` streams, and T fed tokens per row
    from random streams (some with a parent, some with a hidden committed tail)."""
    g = torch.Generator().manual_seed(seed)
    front = width - T
    committed = torch.rand(rows, width, generator=g) < 0.6
    committed[:, front:] = False
    owner = torch.randint(-1, streams, (rows, width), generator=g, dtype=torch.int32)
    owner[committed] = -1
    pos = torch.arange(width).repeat(rows, 1)
    q_owner = torch.randint(0, streams, (rows, T), generator=g, dtype=torch.int32)
    owner[:, front:] = q_owner
    q_parent = torch.where(torch.rand(rows, T, generator=g) < 0.5, (q_owner + 1) % streams, torch.full_like(q_owner, -2))
    q_limit = torch.where(torch.rand(rows, T, generator=g) < 0.3, torch.randint(0, front, (rows, T), generator=g),
                          torch.full((rows, T), 1 << 40))
    put = lambda x: x.to(device)
    return StepMeta(put(committed), put(pos), put(owner), front, put(pos[:, front:]), put(q_owner),
                    put(q_parent), put(q_limit))


def test_tree_mask_reads_what_the_tree_says():
    # one row, 6 columns: 0-1 committed, 2 committed but hidden from stream 7, 3 owned by stream 5,
    # 4 by stream 7; the fed tokens at 4 (stream 7, parent 5, limit 2) and 5 (stream 9)
    committed = torch.tensor([[True, True, True, False, False, False]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 5]])
    owner = torch.tensor([[-1, -1, -1, 5, 7, 9]], dtype=torch.int32)
    meta = StepMeta(committed, pos, owner, 4, pos[:, 4:], torch.tensor([[7, 9]], dtype=torch.int32),
                    torch.tensor([[5, -2]], dtype=torch.int32), torch.tensor([[2, 1 << 40]]))
    assert tree_mask(meta).tolist() == [[[True, True, False, True, True, False],
                                         [True, True, True, False, False, True]]]


def test_a_captured_plan_reads_its_first_column_from_a_tensor():
    """A CUDA graph plans each step's attention inside its replay, where the step's first column
    is the first of its static `cols` tensor, not a Python number fixed at capture."""
    import dataclasses
    for seed in (0, 1):
        meta = random_tree(3, 40, 4, streams=5, seed=seed)
        cols = torch.arange(meta.front, meta.front + 4)
        assert torch.equal(tree_mask(dataclasses.replace(meta, front=cols[0])), tree_mask(meta))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["sdpa_gqa", "sdpa_fold", "triton"])
def test_fast_backend_equals_reference_on_random_trees(device, T, seed, name):
    if name == "triton":
        pytest.importorskip("triton")
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton runs on the CPU only in its interpreter (conftest sets it where there is no GPU)")
    rows, width, hq, hkv, d = 5, 150, 14, 2, 16
    meta = random_tree(rows, width, T, seed=seed, device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, hq, T, d, generator=g).to(device, dtype)
    k = torch.randn(rows, hkv, width, d, generator=g).to(device, dtype)
    v = torch.randn(rows, hkv, width, d, generator=g).to(device, dtype)
    ref, fast = BACKENDS["reference"], BACKENDS[name]
    mask = ref.plan(meta)
    assert torch.equal(mask, fast.plan(meta))
    want = ref.attend(None, q, k, v, mask, d ** -0.5).float()
    got = fast.attend(None, q, k, v, mask, d ** -0.5).float()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got, want, atol=tol, rtol=tol)


def test_triton_backend_skips_hidden_blocks_exactly():
    """Whole blocks of columns nobody reads (free columns past the front, dead streams) are
    skipped: the answer is the reference's, also for a query that reads one column only."""
    pytest.importorskip("triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows, width, T, d = 3, 300, 4, 32
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(rows, h, n, d, generator=g).to(dev) for h, n in ((6, T), (2, width), (2, width)))
    mask = torch.zeros(rows, 1, T, width, dtype=torch.bool, device=dev)
    mask[:, :, :, :10] = True            # committed prefix
    mask[:, :, :, 200:203] = True        # a stream's columns after a hidden stretch
    mask[0, 0, 1] = False
    mask[0, 0, 1, 250] = True            # reads one column only
    want = BACKENDS["reference"].attend(None, q, k, v, mask, d ** -0.5)
    got = BACKENDS["triton"].attend(None, q, k, v, mask, d ** -0.5)
    assert torch.allclose(got, want, atol=1e-5 if dev == "cpu" else 5e-3)  # fp32: tf32 dots on CUDA


@pytest.mark.parametrize("splits", [1, 2, 3, 7])
@pytest.mark.parametrize("T", [1, 5])
def test_triton_column_chunks_merge_to_the_reference(splits, T):
    """The columns split into chunks (flash-decoding): the merged parts equal the reference,
    also where a chunk holds nothing a query reads and where a query reads one column only."""
    pytest.importorskip("triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows, width, d = 3, 450, 32
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(rows, h, n, d, generator=g).to(dev) for h, n in ((6, T), (2, width), (2, width)))
    mask = (torch.rand(rows, 1, T, width, generator=g) < 0.4).to(dev)
    mask[1, :, :, 64:] = False           # every chunk after the first is empty for this row
    mask[0, 0, 0] = False
    mask[0, 0, 0, width - 1] = True      # reads the last column only
    want = BACKENDS["reference"].attend(None, q, k, v, mask, d ** -0.5)
    got = tree_kernel.tree_attention(q, k, v, mask, d ** -0.5, splits=splits)
    assert torch.allclose(got, want, atol=1e-5 if dev == "cpu" else 5e-3)  # fp32: tf32 dots on CUDA


def test_triton_splits_fill_the_gpu_but_never_exceed_the_column_blocks():
    cpu = torch.device("cpu")  # counts as 8 SMs
    assert tree_kernel.splits_for(programs=3, col_blocks=100, device=cpu) == 3
    assert tree_kernel.splits_for(programs=2, col_blocks=3, device=cpu) == 3
    assert tree_kernel.splits_for(programs=8, col_blocks=100, device=cpu) == 1


def test_by_length_sends_one_token_steps_to_one_backend_and_longer_ones_to_the_other(monkeypatch):
    from adafuse_lab.decoding.attention.backends import ByLength
    calls = []
    for name in ("sdpa_gqa", "sdpa_fold"):
        real = BACKENDS[name].attend
        monkeypatch.setattr(BACKENDS[name], "attend", lambda *a, _n=name, _r=real: (calls.append(_n), _r(*a))[1])
    both = ByLength(BACKENDS["sdpa_gqa"], BACKENDS["sdpa_fold"])
    assert both.name == "sdpa_gqa/sdpa_fold" and set(both.kernels) >= set(BACKENDS["sdpa_fold"].kernels)
    for T, want_name in ((1, "sdpa_gqa"), (3, "sdpa_fold")):
        meta = random_tree(4, 60, T)
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(4, h, n, 8, generator=g) for h, n in ((6, T), (2, 60), (2, 60)))
        mask = both.plan(meta)
        got = both.attend(None, q, k, v, mask, 8 ** -0.5)
        assert calls[-1] == want_name
        assert torch.allclose(got, BACKENDS["reference"].attend(None, q, k, v, mask, 8 ** -0.5), atol=1e-5)


@pytest.mark.parametrize("times, want", [
    ({"sdpa_gqa": {1: 61, 8: 253}, "sdpa_fold": {1: 162, 8: 200}, "triton": {1: 85, 8: 97}}, "sdpa_gqa/triton"),
    ({"sdpa_gqa": {1: 61, 8: 90}, "sdpa_fold": {1: 162, 8: 200}, "triton": {1: 85, 8: 97}}, "sdpa_gqa"),
    ({"sdpa_gqa": {1: 90, 8: 253}, "sdpa_fold": {1: 162, 8: float("inf")}, "triton": {1: 85, 8: 97}}, "triton"),
])
def test_auto_takes_the_fastest_backend_for_each_step_length(monkeypatch, times, want):
    """auto on CUDA: one layer timed per backend and length (faked here), the winners combined."""
    from adafuse_lab.decoding.attention import backends
    monkeypatch.setattr(backends, "FAST", tuple(times))
    monkeypatch.setattr(backends, "CHOSEN", {})
    monkeypatch.setattr(backends, "_time_layer", lambda b, *shape, device: times[b.name])
    monkeypatch.setattr(backends, "BACKENDS", {**backends.BACKENDS})
    config = type("C", (), {"num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896})()
    model = type("M", (), {"config": config})()
    chosen = backends.get_backend("auto", "cuda", model, rows=64)
    assert chosen.name == want
    assert list(backends.CHOSEN.values()) == [{"backend": want, "us": times}]
    assert backends.get_backend("auto", "cuda", model, rows=64).name == want  # measured once per shape


def test_engine_decodes_the_same_on_every_backend():
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    prompts = ["Question: What is 2 + 2?\nAnswer:", "Hi"]
    cfg = DecodeConfig(max_new_tokens=16, theta=0.9, attention="reference")
    names = ("sdpa_gqa", "sdpa_fold") + (("triton",) if tree_kernel.available() else ())
    for method, name in [(m, n) for m in ("adafuse", "unite", "single") for n in names]:
        ref = decode(method, members, prompts, cfg)
        fast = decode(method, members, prompts, dataclasses.replace(cfg, attention=name))
        assert [o.text for o in ref] == [o.text for o in fast], (method, name)
        if method == "adafuse":
            flat = lambda outs: [x for o in outs for r in o.trace for c in r["candidates"] for x in c["nll"]]
            assert flat(ref) == pytest.approx(flat(fast), abs=1e-4)


def test_cache_reuses_the_columns_of_dead_streams(monkeypatch):
    """Always branching into 3 words over a 300-token answer feeds several times more tokens than
    the cache has columns: only reclaiming dead branches and losing candidates makes room."""
    grown, fronts = [], []
    real_grow = kv.ColumnCache.grow
    monkeypatch.setattr(kv.ColumnCache, "grow", lambda self, w: (grown.append(w), real_grow(self, w))[1])
    real = kv.KVCache.compact

    def compact(self, need, live):
        out = real(self, need, live)
        fronts.append(self.front)
        return out
    monkeypatch.setattr(kv.KVCache, "compact", compact)
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    prompt = "The story begins:"
    out = decode("adafuse", members, [prompt], DecodeConfig(max_new_tokens=300, theta=1.0, B=3, kv_slack=128))[0]
    assert out.stats["stopped_by"] == "budget"
    fed = [sum(r["members"][i]["tokens"] for r in out.trace) for i in range(2)]
    width = [len(m.encode_prompt(prompt)) + 300 + 128 for m in members]
    assert fed[0] > width[0] and fed[1] > 2 * width[1], (fed, width)
    assert len(fronts) > 10 and not grown
    assert max(fronts) <= max(width)


def test_dead_streams_slots_are_reused(monkeypatch):
    """A stream's newest logits live in a slot of Runtime.last; a new stream takes a dead one's
    slot, so the slots track the live streams, not every stream ever made, and the logits are
    not copied to a new buffer at every step (only when the slots double)."""
    from adafuse_lab.decoding.runtime import streams
    seen = []
    real = streams.Runtime.restructure

    def restructure(self):
        real(self)
        if hasattr(self, "last"):
            assert len({s.slot for s in self.rows}) == len(self.rows)  # no two live streams share a slot
            assert self.last.shape[0] == self.nll.shape[0] >= len(self.rows)
            seen.append((self.last.shape[0], len(self.rows), self._uid, self.last.data_ptr()))
    monkeypatch.setattr(streams.Runtime, "restructure", restructure)
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    out = decode("adafuse", members, ["The story begins:"], DecodeConfig(max_new_tokens=300, theta=1.0, B=3))[0]
    assert out.stats["stopped_by"] == "budget"
    slots, live, made = max(x[0] for x in seen), max(x[1] for x in seen), max(x[2] for x in seen)
    assert slots <= 2 * live and made > 10 * slots, (slots, live, made)
    buffers = len({x[3] for x in seen})
    assert len(seen) > 100 and buffers <= 2 * 6, (len(seen), buffers)  # two members, a few doublings each
