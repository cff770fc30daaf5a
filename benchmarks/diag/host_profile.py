"""Where the host's time goes in a decoding run, apart from the model's arithmetic.

Tiny members on the CPU with short prompts make the forwards cheap, so what is left is the
engine's per-stream Python, the tokenizers and the small tensor operations of planning: the
work that the GPU waits for between forwards (docs/engine_log.md, engine v5). Prints the wall
time, time by kind (torch operators, tokenizer calls, Python of the package, other Python)
and the package's functions by own time.

    python benchmarks/diag/host_profile.py [--method adafuse] [--batch 64] [--tokens 64] [--top 25] [--ops [--by-caller]] [--prefetch]

--ops counts instead the tensor operators dispatched outside the members' forwards (each one
kernel launch or more on a GPU, where a forward is one graph replay, and a SmallGraphs call an
index copy and one replay), by name, per forward;
with --by-caller, by the package function that called them. --prefetch reads results as on a GPU
(Runtime.prefetch's copies behind each forward), which the CPU otherwise skips.
"""
import argparse
import cProfile
import pstats
import time

import torch

from adafuse_lab.cli import parse_sets
from adafuse_lab.decoding import DecodeConfig, decode
from adafuse_lab.models import load_session


def prompts(n: int, shots: int = 0) -> list[str]:
    """n prompts: a templated one-line question, or with `shots` > 0 the package's GSM8K dev
    questions after that many of the paper's demonstrations (answers as real as the members')."""
    if shots:
        from adafuse_lab.tasks import get_task
        task = get_task("gsm8k")
        demos = "\n\n".join(task.prompt_txt.strip().split("\n\n")[:shots])
        qs = [e.question for e in task.load(source="sample")]
        return [f"{demos}\n\nQuestion: {qs[i % len(qs)]}\nAnswer:" for i in range(n)]
    return [f"Question: Tom has {i} apples and buys {i % 7 + 2} more. How many apples does he have?\nAnswer:"
            for i in range(n)]


def kind(path: str, name: str) -> str:
    if "adafuse_lab" in path:
        return "package Python"
    if path == "~" and ("torch" in name or "Tensor" in name):
        return "torch operators"
    if "tokenizers" in name or "tokenization" in path:
        return "tokenizers"
    return "other (transformers, torch Python, builtins)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="adafuse")
    ap.add_argument("--members", default="tiny:bpe,tiny:spm")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--shots", type=int, default=0, help="GSM8K dev questions after this many demonstrations")
    ap.add_argument("--ops", action="store_true", help="count tensor operators outside the forwards instead")
    ap.add_argument("--by-caller", action="store_true", help="with --ops: by the package function that called them")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE DecodeConfig fields (as the CLI's --set)")
    ap.add_argument("--prefetch", action="store_true", help="read results from copies queued behind each forward, as on a GPU")
    args = ap.parse_args()
    if args.prefetch:
        from adafuse_lab.decoding.runtime import streams
        streams.PREFETCH_DEVICES = {*streams.PREFETCH_DEVICES, "cpu"}
    torch.set_num_threads(1)
    members = [load_session(m) for m in args.members.split(",")]
    extra = parse_sets(args.set)
    cfg = DecodeConfig(max_new_tokens=args.tokens, batch_size=args.batch, **extra)
    decode(args.method, members, prompts(4), DecodeConfig(max_new_tokens=8, batch_size=4))  # warm-up
    if args.ops:
        return count_ops(args.method, members, prompts(args.batch, args.shots), cfg, args.top, args.by_caller)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    outs = decode(args.method, members, prompts(args.batch, args.shots), cfg)
    prof.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof)
    by_kind: dict[str, float] = {}
    own = []
    for (path, line, name), (_, _, tt, _, _) in stats.stats.items():
        k = kind(path, name)
        by_kind[k] = by_kind.get(k, 0.0) + tt
        if k == "package Python":
            own.append((tt, f"{path.split('adafuse_lab/')[-1]}:{line}({name})"))
    tokens = sum(len(o.text) for o in outs)
    rounds = sum(len(o.trace or []) for o in outs)
    print(f"{args.method}, {args.batch} prompts, {args.tokens} tokens: {wall:.2f} s wall "
          f"({tokens} answer characters, {rounds} rounds)")
    inside = sum(v[3] for (path, _, fn), v in stats.stats.items()
                 if fn == "eager_forward" and path.endswith("runtime/graphs.py"))
    print(f"  in the members' forwards {inside:.2f} s (one graph replay each on a GPU), outside {wall - inside:.2f} s")
    for k, t in sorted(by_kind.items(), key=lambda x: -x[1]):
        print(f"  {t:7.2f} s  {k}")
    calls = lambda file, name: sum(v[1] for (path, _, fn), v in stats.stats.items() if fn == name and path.endswith(file))
    forwards = calls("runtime/streams.py", "forward")
    if forwards:  # each a pinned staging buffer and a queued copy on a GPU host
        print(f"host-to-device copies: {calls('runtime/member.py', 'on_device') / forwards:.1f} per forward "
              f"({forwards} forwards)")
    print("package functions by own time:")
    for tt, where in sorted(own, reverse=True)[:args.top]:
        print(f"  {tt:7.3f} s  {where}")


def count_ops(method, members, batch, cfg, top, by_caller=False) -> None:
    import sys
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from adafuse_lab.decoding.runtime import graphs, streams

    ops, paused = Counter(), [False]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not paused[0]:
                ops[caller() if by_caller else func.__name__] += 1
            return func(*args, **(kwargs or {}))

    def caller() -> str:
        f = sys._getframe(2)
        while f is not None and "adafuse_lab" not in f.f_code.co_filename:
            f = f.f_back
        return f"{f.f_code.co_filename.split('adafuse_lab/')[-1]}:{f.f_code.co_name}" if f else "?"

    inner, forwards = streams.eager_forward, [0]

    def forward(*a, **k):  # one graph replay on a GPU: not counted
        paused[0] = True
        forwards[0] += 1
        try:
            return inner(*a, **k)
        finally:
            paused[0] = False

    # a SmallGraphs call is an index copy and one replay on a GPU: counted as 2
    small_call = graphs.SmallGraphs.__call__

    def small(self, fn, *a, **k):
        paused[0] = True
        try:
            return small_call(self, fn, *a, **k)
        finally:
            paused[0] = False
            ops[caller() if by_caller else f"SmallGraphs({fn.__name__})"] += 2

    streams.eager_forward, graphs.SmallGraphs.__call__ = forward, small
    try:
        with Count():
            decode(method, members, batch, cfg)
    finally:
        streams.eager_forward, graphs.SmallGraphs.__call__ = inner, small_call
    n = max(forwards[0], 1)
    print(f"{method}, {len(batch)} prompts, {cfg.max_new_tokens} tokens: {sum(ops.values())} tensor operators "
          f"outside {forwards[0]} forwards, {sum(ops.values()) / n:.0f} per forward")
    for name, c in ops.most_common(top):
        print(f"  {c / n:7.1f}  {name}")


if __name__ == "__main__":
    main()
