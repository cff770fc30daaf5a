"""What one engine forward costs on the GPU, by tokens per row, and what two CUDA streams save.

Engine v8 spends about 7 ms per member forward in an AdaFuse step at batch 64, with 13% of the
token slots real (docs/engine_log.md, engine v8). Whether packing the fed tokens (no pads) or
running the members side by side would pay depends on how that time scales. For each member,
a Runtime over the same prompts as `bench` (real prefill, real cache, the chosen attention
backend), then for each T every main stream feeds T tokens:
  forward_ms  Runtime.forward (plan on the host + graph replay), waited for
  replay_ms   the captured graph replayed alone (the GPU's time for the forward)
and for the T in --pair: both members' graphs replayed one after the other on one stream
against side by side on two streams. --profile T also writes the kernels of one eager forward
of the first member at T tokens per row (torch.profiler, top 25 by CUDA time).

    python benchmarks/diag/forward_cost.py A,B --data-dir D [--batch 64] [--tokens 1,2,4,8,16,32]
        [--pair 1,16] [--attention auto] [--profile 16] [--out F]
"""
import argparse
import json
import sys
import time

import torch


def timed(fn, n: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / n * 1e3, 3)


def feed_all(rt, T: int) -> None:
    """Every main stream feeds T copies of its prompt's last token (the values do not matter),
    under a new owner id, so that compaction reclaims what the last step wrote."""
    for s in rt.rows:
        rt._uid += 1
        s.uid, s.feed = rt._uid, [rt.m.ids[s.p][-1]] * T


def step(rt, T: int):
    feed_all(rt, T)
    return rt.forward()


def pair_ms(graphs, streams, n: int) -> float:
    main = torch.cuda.current_stream()

    def one():
        for g, s in zip(graphs, streams):
            if s is None:
                g.replay()
                continue
            s.wait_stream(main)
            with torch.cuda.stream(s):
                g.replay()
        for s in streams:
            if s is not None:
                main.wait_stream(s)
        torch.cuda.synchronize()  # the engine reads every step's results on the host
    return timed(one, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("members")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", default="1,2,4,8,16,32")
    ap.add_argument("--pair", default="1,16")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("forward_cost.py: needs a CUDA device (it times CUDA graphs and streams)")
    from adafuse_lab.decoding import DecodeConfig
    from adafuse_lab.decoding.attention import get_backend
    from adafuse_lab.decoding.runtime import Runtime
    from adafuse_lab.models import load_session
    from adafuse_lab.tasks import get_task

    task = get_task(a.task)
    prompts = [task.prompt(e) for e in task.load(source="local", data_dir=a.data_dir, limit=a.batch)]
    tokens = [int(t) for t in a.tokens.split(",")]
    cfg = DecodeConfig(batch_size=a.batch, attention=a.attention, max_new_tokens=256)
    res = {"members": a.members, "batch": len(prompts), "attention": a.attention, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "repeat": a.repeat, "command": " ".join(sys.argv)}
    rts = []
    for name in a.members.split(","):
        s = load_session(name, device="cuda")
        rt = Runtime(s, prompts, cfg, get_backend(a.attention, s.device, s.model, len(prompts)))
        rts.append(rt)
        per = res.setdefault("members_ms", {})[name] = {}
        for T in tokens:
            step(rt, T), step(rt, T)  # the first captures its graph
            fwd = timed(lambda: step(rt, T), a.repeat)
            g = rt.graphs.captured[T].graph
            per[T] = {"forward_ms": fwd, "replay_ms": timed(g.replay, a.repeat), "width": rt.m.kv.width}
            print(name, T, per[T], flush=True)
    for T in [int(t) for t in a.pair.split(",") if t]:
        for rt in rts:
            step(rt, T), step(rt, T)
        graphs = [rt.graphs.captured[T].graph for rt in rts]
        serial = pair_ms(graphs, [None] * len(graphs), a.repeat)
        side = pair_ms(graphs, [torch.cuda.Stream() for _ in graphs], a.repeat)
        res.setdefault("pair_ms", {})[T] = {"serial": serial, "two_streams": side, "ratio": round(side / serial, 3)}
        print("pair", T, res["pair_ms"][T], flush=True)
    if a.profile:
        rt = rts[0]
        rt.graphs = None  # eager: the profiler names every kernel
        step(rt, a.profile)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(rt, a.profile)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        res["profile"] = {"tokens": a.profile, "forwards": 3, "table": table}
        print(table)
    if a.out:
        open(a.out, "w").write(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
