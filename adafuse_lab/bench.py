"""Speed benchmark: a method against each member's plain greedy `generate` on the same batch.

    python -m adafuse_lab bench --models qwen2.5-coder-0.5b,smollm2-135m --method adafuse \
        --task gsm8k --limit 64 --batch-size 64 --max-new-tokens 256 --out benchmarks/results/x.json

Both sides stop only at EOS or the token budget (task stop strings are off unless
--task-stops), so they do the same amount of work. Reports wall time, generated
tokens per second, forward passes (model calls), and peak GPU memory; writes JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .decoding.config import ATTENTION


def _sync(device) -> None:
    if torch.device(device).type == "cuda":  # every GPU: a member may span several (device "auto")
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


class CallCounter:
    """Counts forward calls of a model (one per batched step, whatever the batch size): calls
    through its hooks (HF generate), and the engine's own count (its captured and compiled
    forwards bypass the hooks), with the engine's fill and time counters."""

    KEYS = ("forwards", "fed", "slots", "compactions", "prefill_s", "capture_s", "captures", "model_gpu_s",
            "sync_peeks", "sync_reads")

    def __init__(self, model):
        from .decoding.runtime.counters import COUNTS
        self.calls, self.key, self.counts = 0, id(model), COUNTS
        self.start = {k: COUNTS[self.key, k] for k in self.KEYS}
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def engine(self, k: str):
        return self.counts[self.key, k] - self.start[k]

    @property
    def n(self) -> int:
        """Forward calls: the engine's when it ran, else the hooked ones."""
        return self.engine("forwards") or self.calls

    def fill_stats(self) -> dict:
        """Tokens fed, token slots computed (pads included), their ratio, and KV compactions."""
        d = {k: self.engine(k) for k in ("fed", "slots", "compactions")}
        d["fill"] = round(d["fed"] / d["slots"], 3) if d["slots"] else None
        return d

    def close(self):
        self.handle.remove()


def copy_bandwidth(device) -> float | None:
    """Bytes per second that a large device-to-device copy reads (and writes): the rate at which a
    decode step can at best stream its weights and KV cache."""
    if torch.device(device).type != "cuda":
        return None
    x = torch.empty(1024**3, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize(device)
    rate = x.numel() / ((time.perf_counter() - t) / 10)
    del x, y
    return rate


def decode_floor(session, prompts: list[str], batch_size: int, steps: int, bandwidth: float) -> dict:
    """The hardware floor of greedy decoding with one member: every step reads all weights and
    the batch's KV cache once, at the copy bandwidth; `steps` steps per batch (the budget)."""
    cfg = session.model.config
    weights = sum(p.numel() * p.element_size() for p in session.model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * session.model.dtype.itemsize
    total, first_step = 0.0, None
    for start in range(0, len(prompts), batch_size):
        lengths = [len(session.encode_prompt(p)) for p in prompts[start:start + batch_size]]
        kv_mid = per_token * (sum(lengths) + len(lengths) * steps / 2)  # mean KV read over the steps
        step = (weights + kv_mid) / bandwidth
        first_step = first_step or step
        total += steps * step
    return {"weight_MB": round(weights / 1e6), "kv_bytes_per_token": per_token, "bandwidth_GBps": round(bandwidth / 1e9),
            "floor_ms_per_step": round(first_step * 1e3, 3), "floor_s": round(total, 3)}


def _measure(fn, device):
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None
    return result, wall, peak


@torch.inference_mode()
def generate_baseline(session, prompts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    """Plain HF greedy generate of one member, left-padded batches; returns tokens and calls."""
    counter = CallCounter(session.model)
    new_tokens, texts = 0, []
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [session.encode_prompt(p) for p in prompts[start:start + batch_size]]
            width = max(map(len, ids))
            inp = torch.full((len(ids), width), session.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(inp)
            for i, x in enumerate(ids):
                inp[i, width - len(x):] = torch.tensor(x)
                mask[i, width - len(x):] = 1
            out = session.model.generate(inp.to(session.device), attention_mask=mask.to(session.device),
                                         max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                                         temperature=None, eos_token_id=session.eos_token_ids,
                                         pad_token_id=session.pad_token_id)
            for row in out[:, width:].tolist():
                n = next((j for j, t in enumerate(row) if t in session.eos_token_ids), len(row))
                new_tokens += n
                texts.append(session.decode(row[:n]))
    finally:
        counter.close()
    return {"new_tokens": new_tokens, "forward_calls": counter.n, "texts": texts}


def run_method(method, sessions, prompts, cfg, stop=None) -> dict:
    from .decoding import decode
    from .decoding.runtime.counters import HOST, settle
    counters = [CallCounter(s.model) for s in sessions]
    host_before = dict(HOST)
    try:
        outs = decode(method, sessions, prompts, cfg, stop)
    finally:
        settle()
        for c in counters:
            c.close()
    # Answer length in the first member's tokens, the same count for every method (rerank's
    # members rewind after writing their answers, so its stats hold no committed tokens).
    tokens = sum(len(sessions[0].encode(o.text)) for o in outs)
    rounds = sum(o.stats.get("rounds", 0) for o in outs)
    branched = sum(1 for o in outs for r in (o.trace or []) for m in r["members"] if m["branched"])
    starts = sum(1 for o in outs for r in (o.trace or []) for m in r["members"])
    return {"new_tokens": tokens, "forward_calls": [c.n for c in counters], "rounds": rounds,
            "engine_fill": [c.fill_stats() for c in counters],
            "prefill_s": [round(c.engine("prefill_s"), 3) for c in counters],
            "capture_s": [round(c.engine("capture_s"), 3) for c in counters],  # compiling included
            "captures": [c.engine("captures") for c in counters],  # CUDA graphs captured (one per shape and cache)
            # GPU seconds of the members' forwards (CUDA only; graph replays: the model alone)
            "model_gpu_s": [round(c.engine("model_gpu_s"), 3) for c in counters],
            # reads that waited for all the queued work (other members' forwards too) where a
            # copy queued behind the member's own forward did not serve them (span methods on CUDA)
            "sync_reads": [[c.engine("sync_peeks"), c.engine("sync_reads")] for c in counters],  # [peeks, scores]
            "member_branch_rate": branched / starts if starts else None, "texts": [o.text for o in outs],
            # the host's wall time by phase of a step, both members together (span methods; "wait":
            # for the members' last forwards to land, on CUDA; "forward" includes the graph captures
            # of capture_s; decoding/runtime/counters.py)
            "host_phases_s": {k: round(v - host_before.get(k, 0.0), 4) for k, v in HOST.items()
                              if v - host_before.get(k, 0.0) > 0}}


def _time_method(method, sessions, prompts, cfg, stop, device, result) -> dict:
    r, wall, peak = _measure(lambda: run_method(method, sessions, prompts, cfg, stop), device)
    # two runs with the same answers have the same digest (runs that should not differ: compare it)
    r["answers_sha256"] = hashlib.sha256(json.dumps(r.pop("texts")).encode()).hexdigest()
    out = {"name": method, **r, "wall_s": round(wall, 3), "tokens_per_s": round(r["new_tokens"] / wall, 1),
           "seconds_per_prompt": round(wall / len(prompts), 4), "peak_gib": peak,
           # forward calls per token of the average answer, per member (batched calls count once)
           "forwards_per_answer_token": [round(n * len(prompts) / max(r["new_tokens"], 1), 3)
                                         for n in r["forward_calls"]]}
    if result.get("generate"):  # forward calls against the member's own generate on the same batch
        gen = [g["forward_calls"] for g in result["generate"].values()]
        out["forward_calls_vs_generate"] = [round(n / g, 3) for n, g in zip(r["forward_calls"], gen)]
    if result.get("floor"):  # the method against the floor of greedy decoding with the members it runs
        used = [sessions[cfg.member].name] if method == "single" else [s.name for s in sessions]
        floor = sum(result["floor"][name]["floor_s"] for name in used)
        out["ratio_to_summed_floor"] = round(wall / floor, 3)
        out["floor_ms_per_step"] = round(sum(result["floor"][name]["floor_ms_per_step"] for name in used), 3)
        steps = -(-len(prompts) // cfg.batch_size) * cfg.max_new_tokens
        out["ms_per_budget_step"] = round(wall / steps * 1e3, 3)
    # the decode steps alone: wall time less the prefills and the graph captures (and compiles)
    out["decode_s"] = round(wall - sum(r["prefill_s"]) - sum(r["capture_s"]), 3)
    overlap = cfg.batches_in_flight > 1 and len(prompts) > cfg.batch_size
    if any(r["model_gpu_s"]) and not overlap:  # the decode time the GPU does not spend in the members' forwards
        out["decode_outside_forwards_s"] = round(out["decode_s"] - sum(r["model_gpu_s"]), 3)
    if overlap:
        out["overlap"] = ("batches in flight: a prefill waits for the other batches' queued work, and forwards "
                          "of different batches overlap on the GPU, so prefill_s, model_gpu_s and the times made "
                          "from them overstate the work; compare wall_s")
    if method == "single":
        batches = -(-len(prompts) // cfg.batch_size)
        steps = r["forward_calls"][cfg.member] - batches
        out["ms_per_decode_step"] = round(out["decode_s"] / max(steps, 1) * 1e3, 3)
        if result.get("floor"):
            out["decode_step_ratio_to_floor"] = round(out["ms_per_decode_step"] / out["floor_ms_per_step"], 2)
    for key in [k for k in ("generate", "generate_no_cudnn") if result.get(k)]:
        walls = [g["wall_s"] for g in result[key].values()]
        out[f"ratio_to_summed_{key}"] = round(wall / sum(walls), 3)
        out[f"ratio_to_slowest_member_{key}"] = round(wall / max(walls), 3)
        print(f"{method}: {wall:.2f} s, {r['new_tokens']} tokens, ratio to summed {key} {wall / sum(walls):.2f}",
              flush=True)
    return out


def check_args(args, specs: list[str], methods: list[str]) -> dict:
    """Refuse bad options (as `run` does) before anything loads; returns the --set values."""
    from .cli import parse_sets
    from .runs import RunConfig, UsageError, validate
    if not methods:
        raise UsageError("--method is empty; give a method, or several comma-separated")
    if args.profile_only and not (args.profile or args.cprofile):
        raise UsageError("--profile-only times nothing by itself; add --profile or --cprofile (or leave it out)")
    extra = parse_sets(args.set, {"attention": args.attention} if args.attention else {})
    dcfg = None
    for m in methods:
        _, dcfg = validate(RunConfig(task=args.task, models=tuple(specs), method=m, limit=args.limit,
                                     source=args.source, data_dir=args.data_dir, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, device=args.device, decode=extra))
    if args.out is not None:
        if str(args.out).strip() == "":
            raise UsageError("--out is empty; give a JSON file to write")
        out = Path(args.out).expanduser()
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give a JSON file path")
        if out.exists() and not _ours(out):
            raise UsageError(f"--out {out} exists and is not a bench result; choose a new file (bench replaces "
                             "only its own results)")
        node = out.parent
        while not node.exists() and node != node.parent:
            node = node.parent
        if not node.is_dir() or not os.access(node, os.W_OK):
            raise UsageError(f"--out {out}: cannot write there ({node} is not a writable folder)")
    # the values as they run: types checked, whole floats as ints, a fractional M or B rounded down
    return {k: getattr(dcfg, k) for k in extra}


def _ours(path: Path) -> bool:
    """Whether path holds a result that bench wrote (a JSON object with its keys)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and {"command", "decode_config"} <= set(d)


def benchmark(args) -> dict:
    from .decoding import DecodeConfig
    from .models import load_session
    from .tasks import get_task
    specs = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    extra = check_args(args, specs, methods)  # every option, before a model is loaded
    sessions = [load_session(m, device=args.device, dtype=args.dtype) for m in specs]
    device = sessions[0].device
    task = get_task(args.task)
    examples = task.load(source=args.source, data_dir=args.data_dir, limit=args.limit)
    prompts = [task.prompt(e) for e in examples]
    from .runs import begin_work
    begin_work()  # checked and loaded: any held-back warnings now
    cfg = DecodeConfig.from_dict({"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                                  "trace": True, **({"attention": args.attention} if args.attention else {}), **extra})
    stop = task.stop_fn if args.task_stops else None
    from .decoding import check_inputs
    for m in methods:  # prompts that do not fit a member fail here, not after the warm-up's generate
        check_inputs(m, sessions, prompts, cfg, stop)
    # warm-up: CUDA context, kernels, allocator
    for s in sessions:
        generate_baseline(s, prompts[:2], 2, 4)
    for m in methods:
        run_method(m, sessions, prompts[:2], DecodeConfig.from_dict({**cfg.to_dict(), "max_new_tokens": 4,
                                                                     "batch_size": 2}))
    result = {"command": " ".join(["python -m adafuse_lab bench"] + sys.argv[2:]) if sys.argv[1:2] == ["bench"]
              else " ".join(sys.argv),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "dtype": str(sessions[0].dtype), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__,
              "task": args.task, "n_prompts": len(prompts), "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "decode_config": cfg.to_dict(),
              "members": {s.name: s.info for s in sessions}, "generate": {}, "method": {}}
    from .decoding.attention import get_backend
    from .decoding.attention.backends import CHOSEN
    result["attention"] = {s.name: get_backend(cfg.attention, device, s.model, args.batch_size).name for s in sessions}
    if CHOSEN:  # what "auto" measured per member shape (heads, kv heads, head dim, rows, width): us per layer
        result["attention_measured"] = {str(k): v for k, v in CHOSEN.items()}
        print(f"attention: {result['attention']} {result['attention_measured']}", flush=True)
    bandwidth = copy_bandwidth(device)
    if bandwidth:
        result["floor"] = {s.name: decode_floor(s, prompts, args.batch_size, args.max_new_tokens, bandwidth)
                           for s in sessions}
        print(f"floor: {result['floor']}", flush=True)
    # generate as it runs by default, and (CUDA) without cuDNN attention, which plans a new
    # execution graph for every key length that generate's growing cache has (often faster)
    variants = {"generate": contextlib.nullcontext}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        variants["generate_no_cudnn"] = lambda: sdpa_kernel(no_cudnn)
    for key, kernels in variants.items() if not (args.profile_only or args.no_generate) else []:
        result[key] = {}
        for s in sessions:
            with kernels():
                r, wall, peak = _measure(lambda: generate_baseline(s, prompts, args.batch_size, args.max_new_tokens),
                                         device)
            r.pop("texts")
            result[key][s.name] = {**r, "wall_s": round(wall, 3), "tokens_per_s": round(r["new_tokens"] / wall, 1),
                                   "peak_gib": peak}
            print(f"{key} {s.name}: {wall:.2f} s, {r['new_tokens']} tokens, {r['forward_calls']} calls", flush=True)
    if not args.profile_only:  # "method": the first of --method; "methods": each of them
        result["methods"] = {}
        for m in methods:
            try:
                result["methods"][m] = _time_method(m, sessions, prompts, cfg, stop, device, result)
            except torch.OutOfMemoryError as e:  # a method that does not fit the batch is a result too
                result["methods"][m] = {"name": m, "error": f"out of GPU memory: {str(e).splitlines()[0]}"}
                print(f"{m}: {result['methods'][m]['error']}", flush=True)
                torch.cuda.empty_cache()
            _write(args.out, result)  # so that a later failure keeps the methods timed so far
        result["method"] = result["methods"][methods[0]]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            run_method(methods[0], sessions, prompts[: min(len(prompts), args.batch_size)],
                       DecodeConfig.from_dict({**cfg.to_dict(), "max_new_tokens": min(64, args.max_new_tokens)}), stop)
        table = prof.key_averages()
        result["profile"] = table.table(sort_by="cpu_time_total", row_limit=25)
        print(result["profile"])
        if device.type == "cuda":  # GPU time by kernel, for the method and for the first member's generate
            result["profile_cuda"] = table.table(sort_by="self_device_time_total", row_limit=25)
            with profile(activities=acts) as prof:
                generate_baseline(sessions[0], prompts[: args.batch_size], args.batch_size, min(64, args.max_new_tokens))
            result["profile_cuda_generate"] = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25)
            print(result["profile_cuda"], result["profile_cuda_generate"], sep="\n")
    if args.cprofile:  # where the host time goes, on one batch of at most 64 new tokens
        import cProfile
        import io
        import pstats
        prof = cProfile.Profile()
        short = DecodeConfig.from_dict({**cfg.to_dict(), "max_new_tokens": min(64, args.max_new_tokens)})
        prof.runcall(run_method, methods[0], sessions, prompts[: min(len(prompts), args.batch_size)], short, stop)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        result["cprofile"] = buf.getvalue()
        print(result["cprofile"])
    if args.out:
        _write(args.out, result)
        print(f"wrote {args.out}")
    return result


def _write(out: str | None, result: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time a method against each member's plain greedy generate")
    a = p.add_argument
    a("--models", required=True, help="comma-separated member specs")
    a("--method", default="adafuse", help="a method, or several comma-separated (timed one after another)")
    a("--task", default="gsm8k")
    a("--source", default="auto", choices=["auto", "local", "hub", "sample"])
    a("--data-dir")
    a("--limit", type=int, default=64)
    a("--batch-size", type=int, default=64)
    a("--max-new-tokens", type=int, default=256)
    a("--device")
    a("--dtype", help="bfloat16, float16, float32 (default: bf16 on CUDA, fp32 on CPU)")
    a("--task-stops", action="store_true", help="stop the method at the task's stop strings")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="DecodeConfig field")
    a("--attention", default=None, choices=list(ATTENTION),
      help="the engine's attention backend (decoding/attention; default: auto)")
    a("--profile", action="store_true", help="also profile one batch with torch.profiler")
    a("--cprofile", action="store_true", help="also cProfile one batch (host-side time by function)")
    a("--profile-only", action="store_true", help="skip the timed runs, only profile")
    a("--no-generate", action="store_true",
      help="skip the members' own generate (no ratios to it): for a second run of the same workload")
    a("--out", help="JSON file to write")
    p.set_defaults(func=benchmark)
