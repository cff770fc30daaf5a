"""Run directories: one command, one folder, resumable.

A run directory holds three files:

- ``config.json``   the RunConfig, written first; a rerun with a different config
  into the same folder is refused (see IGNORED_KEYS for what may differ).
- ``samples.jsonl`` one record per example, appended and fsync'ed as each example
  finishes, rewritten in example order at the end. It holds no timings, so an
  interrupted-and-resumed run ends with the same bytes as an uninterrupted one
  (given deterministic kernels: same machine, device, dtype and batch_size).
- ``results.json``  corpus metrics, the config, versions, device and timings.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG, SAMPLES, RESULTS = "config.json", "samples.jsonl", "results.json"

# Config keys that may differ when resuming into an existing run directory: they
# change speed, not results. (A different batch_size pads prompts differently, which
# can move the last float bits of trace values; predictions almost never change.
# Keep it unchanged when byte-identical files matter.)
IGNORED_KEYS = frozenset({"batch_size"})

# RunConfig fields that DecodeConfig also has: set on the run, not in `decode`.
_RUN_LEVEL = ("max_new_tokens", "batch_size")


class UsageError(ValueError):
    """A mistake the user can fix from the command line; printed as one line."""


@dataclass(frozen=True)
class RunConfig:
    task: str                       # task registry name, e.g. "triviaqa"
    models: tuple[str, ...]         # member specs: zoo name, "tiny:NAME", hub id, local dir, .gguf
    method: str = "adafuse"         # a name in decoding.METHODS
    limit: int | None = None        # first N examples (None: all)
    source: str = "auto"            # auto | local | hub | sample
    data_dir: str | None = None     # local data folder (source local/auto)
    batch_size: int = 16            # prompts decoded together (speed only)
    seed: int = 0                   # torch, random and numpy seeds
    max_new_tokens: int = 256       # generation budget per example
    device: str | None = None       # None: cuda if available, else cpu
    dtype: str | None = None        # None: bf16 on CUDA, fp32 on CPU
    decode: dict = field(default_factory=dict)  # other DecodeConfig fields: theta, M, B, criterion, ...
    half: str | None = None         # None: every example; "tune": the first half, "report": the rest
    chat: bool | None = None        # True: each member reads the prompt through its chat template

    def __post_init__(self):
        models = self.models.split(",") if isinstance(self.models, str) else self.models
        object.__setattr__(self, "models", tuple(m.strip() for m in models if m.strip()))
        object.__setattr__(self, "decode", dict(self.decode or {}))
        object.__setattr__(self, "chat", True if self.chat else None)  # False and None: plain prompts

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        # Fields added later are left out at their default, so that earlier run directories
        # keep their config.json and their place under analysis.run_dir.
        for key in _LATER_FIELDS:
            if d.get(key) is None:
                d.pop(key, None)
        return d


_LATER_FIELDS = ("half", "chat")
HALVES = ("tune", "report")


def select_half(examples: list, half: str | None) -> list:
    """The first half (rounded down) of the examples for "tune", the rest for "report": settings
    chosen on one half are reported on the other. None keeps every example."""
    if half is None:
        return list(examples)
    cut = len(examples) // 2
    return list(examples[:cut]) if half == "tune" else list(examples[cut:])


# ---------------------------------------------------------------- validation

def closest(name: str, choices) -> str:
    """' (did you mean X?)' or the list of valid names, for one-line errors."""
    choices = sorted(set(map(str, choices)))
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if near:
        return f" (did you mean {' or '.join(map(repr, near))}?)"
    return f"; valid names: {', '.join(choices)}" if choices else ""


def _get_task(name: str):
    from .tasks import get_task
    try:
        return get_task(name)
    except KeyError as e:  # UnknownTaskError: its message already names the closest task
        raise UsageError(str(e)) from e


def _method_names() -> list[str]:
    from .decoding import METHODS
    return list(METHODS)


def _zoo_names() -> list[str]:
    from .zoo import list_models
    return [m["name"] for m in list_models()]


def check_model_spec(spec: str) -> None:
    """Refuse names that are neither zoo, tiny, hub ("owner/name") nor a path."""
    from . import tiny
    tiny_names = [f"tiny:{n}" for n in tiny.NAMES]
    if spec.startswith("tiny:"):
        if spec not in tiny_names:
            raise UsageError(f"unknown tiny model {spec!r}{closest(spec, tiny_names)}")
        return
    if spec.startswith("random:"):
        from .paper_scale import parse
        try:
            arch, member = parse(spec)
        except ValueError as e:
            raise UsageError(str(e)) from e
        return check_model_spec(member)
    if "/" in spec or os.path.exists(spec) or spec.endswith(".gguf"):
        return  # hub id or local path: load_session reports what is wrong with it
    zoo = _zoo_names()
    if spec not in zoo:
        raise UsageError(f"unknown model {spec!r}{closest(spec, zoo + tiny_names)}; "
                         "hub models are named owner/name")


def decode_config(cfg: RunConfig):
    """The DecodeConfig for `cfg`; DecodeConfig itself checks names and ranges."""
    from .decoding import DecodeConfig
    fields = {f.name for f in dataclasses.fields(DecodeConfig)}
    kw = dict(cfg.decode)
    for k in kw:
        if k in {f.name for f in dataclasses.fields(RunConfig)}:
            raise UsageError(f"decode option {k!r} is a run option: set it with --{k.replace('_', '-')}")
    kw.update({k: getattr(cfg, k) for k in _RUN_LEVEL if k in fields})
    try:
        return DecodeConfig.from_dict(kw)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e


def validate(cfg: RunConfig):
    """Check everything that can be checked before touching disk or loading models.

    Returns (task, DecodeConfig)."""
    if not cfg.models:
        raise UsageError("no models given")
    for k in ("limit", "batch_size", "max_new_tokens"):
        v = getattr(cfg, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise UsageError(f"{k} must be an integer >= 1, got {v!r}")
    if cfg.half is not None and cfg.half not in HALVES:
        raise UsageError(f"half must be tune or report, got {cfg.half!r}{closest(str(cfg.half), HALVES)}")
    if cfg.source not in ("auto", "local", "hub", "sample"):
        raise UsageError(f"unknown source {cfg.source!r}{closest(cfg.source, ['auto', 'local', 'hub', 'sample'])}")
    task = _get_task(cfg.task)
    methods = _method_names()
    if cfg.method not in methods:
        raise UsageError(f"unknown method {cfg.method!r}{closest(cfg.method, methods)}")
    for spec in cfg.models:
        check_model_spec(spec)
    _dtype(cfg.dtype)
    return task, decode_config(cfg)


def _dtype(name):
    if name is None:
        return None
    import torch
    dt = getattr(torch, str(name).replace("bf16", "bfloat16").replace("fp32", "float32").replace("fp16", "float16"), None)
    if not isinstance(dt, torch.dtype):
        raise UsageError(f"unknown dtype {name!r}{closest(str(name), ['bfloat16', 'float16', 'float32'])}")
    return dt


# ---------------------------------------------------------------- file helpers

def _disk_error(e: OSError, path) -> Exception:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return UsageError(f"disk full while writing {path}; files already written are intact: "
                          "free some space and rerun the same command to resume")
    return e


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and os.replace: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _disk_error(e, path) from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):       # numpy / torch scalars and arrays
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _line(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n").encode()


def read_samples(path: Path) -> list[dict]:
    """Complete records of samples.jsonl, first occurrence of each id.

    A last line without its newline (killed mid-write) or a line that does not
    parse is dropped: that example is simply decoded again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the piece after the last "\n" is unfinished
    out, seen = [], set()
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and rec["id"] not in seen:
            seen.add(rec["id"])
            out.append(rec)
    return out


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _claim_dir(out: Path, cfg: RunConfig, write: bool = True) -> None:
    """Write config.json (if `write`), or check that the existing one describes the same run."""
    path = out / CONFIG
    new = cfg.to_dict()
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise UsageError(f"{path} is not valid JSON; remove the run directory or choose another --out") from e
        diff = _diff(old, new)
        if diff:
            raise UsageError(f"{out} holds a run with a different config ({'; '.join(diff)}): "
                             "rerun with the same options to resume, or choose another --out")
        return
    if write:
        write_atomic(path, (json.dumps(new, indent=2) + "\n").encode())


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in IGNORED_KEYS:
            continue
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- environment

def seed_everything(seed: int) -> None:
    """Seed every RNG and ask for deterministic kernels.

    Without deterministic kernels, CUDA sums some reductions (index_add_, cuBLAS
    split-K) in a varying order: the same run twice on an H100 gave the same
    predictions but trace NLLs that differed in the last bits. cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG when it first runs, so in a process that already used
    it (a notebook), set it before that."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns


def _deterministic() -> bool:
    import torch
    return torch.are_deterministic_algorithms_enabled()


def versions() -> dict:
    import numpy
    import torch
    import transformers

    from . import __version__
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "adafuse_lab": __version__}


def attention_mode() -> str:
    """The engine's attention path ($ADAFUSE_ATTENTION, or bench --attention): sdpa, grouped, additive or cascade."""
    from .decoding import attention
    return attention.mode


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device) -> str:
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


# ---------------------------------------------------------------- the run

def _load_members(cfg: RunConfig, sessions: dict | None = None):
    """The members of cfg; `sessions` (a dict kept by the caller) reuses members loaded by an
    earlier run of the same process with the same spec, device and dtype."""
    from .models import load_session
    sessions = {} if sessions is None else sessions
    members = []
    for spec in cfg.models:
        key = (spec, cfg.device, cfg.dtype)
        try:
            if key not in sessions:
                sessions[key] = load_session(spec, device=cfg.device, dtype=_dtype(cfg.dtype))
            if cfg.chat:  # the chat view is kept too: the engine's per-member caches follow the object
                if key + ("chat",) not in sessions:
                    sessions[key + ("chat",)] = sessions[key].as_chat()
                key += ("chat",)
            members.append(sessions[key])
        # Missing path, hub id not found, bad or corrupt weights, zoo download failed (sha256
        # mismatch, pip error), out of memory: one line (--debug: the traceback).
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
            raise UsageError(f"could not load model {spec!r}: {' '.join(str(e).split())}") from e
    return members


def _check_context(members, examples, prompts, max_new_tokens) -> None:
    """Refuse prompts that do not fit a member's context before any decoding."""
    for m in members:
        ctx, warned = m.max_context, False
        if not ctx:
            continue
        for ex in examples:
            n = len(m.encode_prompt(prompts[ex.id]))
            if n >= ctx:
                raise UsageError(f"example {ex.id!r}: prompt is {n} tokens but {m.name} has a "
                                 f"context of {ctx}; use a shorter prompt or another model")
            if n + max_new_tokens > ctx and not warned:
                print(f"warning: example {ex.id!r}: prompt ({n}) + max_new_tokens ({max_new_tokens}) "
                      f"exceeds {m.name}'s context ({ctx}); generation will stop early", file=sys.stderr)
                warned = True  # once per member is enough


def _record(task, ex, prompt: str, out) -> dict:
    scores = dict(task.score(ex, out.text))
    # Timings differ between runs: they live in results.json only, so that a
    # resumed run's samples.jsonl is byte-identical to an uninterrupted one.
    stats = {k: v for k, v in (out.stats or {}).items() if not k.endswith(("_s", "seconds")) and "time" not in k}
    rec = {"id": ex.id, "question": ex.question, "prompt_sha256": _sha256(prompt),
           "prediction": out.text, "answer": scores.pop("answer", None), "references": ex.references,
           "metrics": scores, "stats": stats, "trace": out.trace}
    if ex.meta:
        rec["meta"] = ex.meta  # some scorers need it (GSM8K: the gold solution)
    return rec


def _decode_iter(*args, **kw):
    from .decoding import decode_iter
    return decode_iter(*args, **kw)


def _oom_errors() -> tuple:
    import torch
    return tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def _decode_batch(method, members, batch, prompts, dcfg, stop, oom: list):
    """Yield (example, DecodeOutput) for one batch; on out-of-memory, halve and go on.

    When the GPU runs out of memory, the examples of `batch` that have not finished
    are decoded again in sub-batches of half the size of the one that failed, down
    to one example; `oom` gets a note of each halving. (Smaller batches pad prompts
    differently: trace values may then differ from a run that did not halve in the
    last float bits, see IGNORED_KEYS.)"""
    from tqdm.auto import tqdm

    from .models import free_memory
    todo, size, finished = list(batch), dcfg.batch_size, set()
    while todo:
        try:
            for i, o in _decode_iter(method, members, [prompts[ex.id] for ex in todo],
                                     dataclasses.replace(dcfg, batch_size=size), stop=stop):
                finished.add(todo[i].id)
                yield todo[i], o
            return
        except _oom_errors() as e:
            k = next(j for j, ex in enumerate(todo) if ex.id not in finished)
            failed = todo[k // size * size:][:size]  # the sub-batch decode_iter was working on
            if len(failed) == 1:
                raise UsageError(f"out of GPU memory decoding example {failed[0].id!r} on its own (batch size 1): "
                                 "free GPU memory, lower --max-new-tokens or use smaller models; finished "
                                 "examples are saved, rerun the same command to resume") from e
        todo = [ex for ex in todo if ex.id not in finished]
        size = len(failed) // 2
        free_memory()  # after the except block: the traceback no longer holds the batch's tensors
        oom.append({"example": todo[0].id, "batch_size": len(failed), "retry_batch_size": size})
        tqdm.write(f"warning: out of GPU memory decoding {len(failed)} examples together; decoding the "
                   f"{len(todo)} unfinished ones of this batch {size} at a time", file=sys.stderr)


def run(cfg: RunConfig, out_dir, progress: bool = True, shard: tuple[int, int] | None = None,
        sessions: dict | None = None) -> dict:
    """Decode every example of cfg.task into out_dir; resume if it holds a partial run.
    `shard` = (rank, world): decode only batches rank, rank + world, ... (run_sharded).
    `sessions`: a dict in which loaded members are kept for later runs (see _load_members).

    Returns the content of results.json."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    task, dcfg = validate(cfg)
    out = Path(out_dir)
    # Nothing is written before the data and the models have loaded: a bad data file
    # or model leaves no run directory behind, and an existing one as it was.
    _claim_dir(out, cfg, write=False)
    seed_everything(cfg.seed)

    try:
        loaded = task.load(source=cfg.source, data_dir=cfg.data_dir, limit=cfg.limit)
    except RuntimeError as e:  # the hub was asked for and did not answer
        raise UsageError(str(e)) from e
    examples = select_half(loaded, cfg.half)
    if not examples:
        raise UsageError(f"the {cfg.half!r} half of {len(loaded)} example(s) is empty; raise --limit")
    all_ids = [ex.id for ex in examples]
    if len(set(all_ids)) != len(all_ids):
        raise UsageError(f"task {cfg.task!r} yields duplicate example ids")
    bs = dcfg.batch_size
    mine = examples if shard is None else _shard_examples(examples, bs, *shard)
    ids = [ex.id for ex in mine]
    prompts = {ex.id: task.prompt(ex) for ex in mine}

    # Resume: keep finished records whose prompt is unchanged.
    samples = out / SAMPLES
    done = {}
    for rec in read_samples(samples):
        if rec["id"] in prompts:
            if rec.get("prompt_sha256") != _sha256(prompts[rec["id"]]):
                raise UsageError(f"example {rec['id']!r} in {samples} was made from a different prompt "
                                 "(data or prompt changed); choose another --out")
            done[rec["id"]] = rec

    # Batches are aligned with the full example list and a batch with any unfinished
    # example is decoded whole: padding makes float bits depend on which prompts share
    # a batch, so only the same batches reproduce the same bytes after a resume.
    batches = [mine[j:j + bs] for j in range(0, len(mine), bs)]
    batches = [b for b in batches if any(ex.id not in done for ex in b)]
    t_load = time.perf_counter()
    members = _load_members(cfg, sessions) if batches else []
    load_s = time.perf_counter() - t_load
    _check_context(members, mine, prompts, cfg.max_new_tokens)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _disk_error(e, out) from e
    _claim_dir(out, cfg)
    if samples.exists():  # compact: finished records in example order, partial lines dropped
        write_atomic(samples, b"".join(_line(done[i]) for i in ids if i in done))

    per_example, oom = {}, []
    t_decode = time.perf_counter()
    if batches:
        with open(samples, "ab", buffering=0) as f, tqdm(total=len(mine), initial=len(done), disable=not progress,
                                            desc=f"{cfg.task}/{cfg.method}", unit="ex") as bar:
            t_prev = time.perf_counter()
            for batch in batches:
                for ex, o in _decode_batch(cfg.method, members, batch, prompts, dcfg, task.stop_fn, oom):
                    if ex.id in done:
                        continue  # finished before the interruption; same bytes either way
                    rec = _record(task, ex, prompts[ex.id], o)
                    _append(f, samples, _line(rec))
                    done[ex.id] = rec
                    now = time.perf_counter()
                    per_example[ex.id] = round(now - t_prev, 4)  # in a batch: time since the previous yield
                    t_prev = now
                    bar.update(1)
    decode_s = time.perf_counter() - t_decode
    missing = [i for i in ids if i not in done]
    if missing:
        raise RuntimeError(f"decoder returned no output for {len(missing)} examples, e.g. {missing[0]!r}")

    records = [done[i] for i in ids]
    old = _read_json(out / RESULTS) if not per_example else None  # nothing decoded: keep the real timings
    write_atomic(samples, b"".join(map(_line, records)))
    results = {
        "task": cfg.task, "method": cfg.method, "models": list(cfg.models), "n_examples": len(records),
        "metrics": task.aggregate(records),
        "config": cfg.to_dict(),
        "data": {"source": getattr(loaded, "source", cfg.source), "location": getattr(loaded, "location", None),
                 "dropped_demo_leaks": list(getattr(loaded, "dropped", [])), "half": cfg.half},
        "decode_config": json.loads(json.dumps(dataclasses.asdict(dcfg), default=_json_default)),
        "seeds": {"torch": cfg.seed, "random": cfg.seed, "numpy": cfg.seed},
        "deterministic": {"torch_algorithms": _deterministic(),
                          "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")},
        "versions": versions(), "git_commit": git_commit(),
        "device": device_name(members[0].device) if members else (old or {}).get("device"),
        # not in config.json, so that run directories keep their names whichever path decoded them
        "attention": attention_mode(),
        "timings": {"wall_s": round(time.perf_counter() - t_start, 3), "load_s": round(load_s, 3),
                    "decode_s": round(decode_s, 3), "n_decoded": len(per_example),
                    "n_resumed": len(records) - len(per_example),
                    "per_example_mean_s": round(sum(per_example.values()) / len(per_example), 4)
                    if per_example else None,
                    "per_example_s": per_example, "oom_halvings": oom},
    }
    if old and "timings" in old:
        results["timings"] = old["timings"]
    _write_results(out, results)
    return results


def _shard_examples(examples: list, batch_size: int, rank: int, world: int) -> list:
    """Whole batches rank, rank + world, ... of the full list: each batch is decoded exactly
    as in a one-process run (padding makes float bits depend on a batch's company)."""
    if not 0 <= rank < world:
        raise UsageError(f"rank {rank} is not in 0..{world - 1}")
    return [ex for j in range(rank * batch_size, len(examples), world * batch_size)
            for ex in examples[j:j + batch_size]]


def shard_from_env() -> tuple[int, int] | None:
    """(rank, world) when started by torchrun or accelerate launch with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))), world


def run_sharded(cfg: RunConfig, out_dir, rank: int, world: int, progress: bool = True,
                poll_s: float = 1.0) -> dict | None:
    """One process of a run split over `world` processes (one per GPU of a host):

        torchrun --nproc-per-node 2 -m adafuse_lab run ...    (or: accelerate launch -m adafuse_lab run ...)

    Rank r decodes its batches into OUT/shards/r (resumable like any run) on cuda:LOCAL_RANK;
    rank 0 then waits for every shard and merges them into OUT, which ends up with the same
    config.json and samples.jsonl as a one-process run. Returns results.json on rank 0."""
    out = Path(out_dir)
    shard_cfg = cfg
    if cfg.device is None:
        import torch
        if torch.cuda.is_available():
            shard_cfg = dataclasses.replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    part = run(shard_cfg, out / "shards" / str(rank), progress=progress and rank == 0, shard=(rank, world))
    if rank != 0:
        return None
    parts = {0: part}
    waiting = set(range(1, world))
    while waiting:
        for r in sorted(waiting):
            res = _read_json(out / "shards" / str(r) / RESULTS)
            if res and res.get("config") == shard_cfg.to_dict() | {"device": res["config"].get("device")}:
                parts[r] = res
                waiting.discard(r)
        if waiting:
            time.sleep(poll_s)
    out.mkdir(parents=True, exist_ok=True)
    _claim_dir(out, cfg)
    write_atomic(out / SAMPLES, b"".join(_line(rec) for r in range(world)
                                         for rec in read_samples(out / "shards" / str(r) / SAMPLES)))
    merged = run(cfg, out, progress=False)  # every example is done: this puts them in order and aggregates
    merged["device"] = [parts[r]["device"] for r in range(world)]
    merged["timings"] = {"wall_s": max(p["timings"]["wall_s"] for p in parts.values()),
                         "shards": [parts[r]["timings"] for r in range(world)]}
    _write_results(out, merged)
    return merged


def _write_results(out: Path, results: dict) -> None:
    write_atomic(out / RESULTS, (json.dumps(results, indent=2, ensure_ascii=False, default=_json_default)
                                 + "\n").encode())


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _append(f, path: Path, line: bytes) -> None:
    """Append one record durably; on failure cut the file back to its last full line.

    `f` is unbuffered, so a failed write leaves no buffer to be flushed again at close."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise _disk_error(e, path) from e


def evaluate_dir(out_dir) -> dict:
    """Re-score every prediction in out_dir/samples.jsonl and aggregate.

    Returns {"metrics", "n_examples", "results_metrics", "matches_results"}; the last
    two compare with results.json when it exists."""
    from .tasks import Example

    out = Path(out_dir)
    if not (out / CONFIG).exists():
        raise UsageError(f"{out} is not a run directory (no {CONFIG})")
    cfg = json.loads((out / CONFIG).read_text())
    task = _get_task(cfg["task"])
    records = read_samples(out / SAMPLES)
    if not records:
        raise UsageError(f"{out / SAMPLES} has no finished examples")
    rescored = []
    for rec in records:
        ex = Example(id=rec["id"], question=rec.get("question"), references=rec["references"],
                     meta=rec.get("meta") or {})
        scores = dict(task.score(ex, rec["prediction"]))
        rescored.append({**rec, "answer": scores.pop("answer", None), "metrics": scores})
    metrics = json.loads(json.dumps(task.aggregate(rescored), default=_json_default))
    old = None
    if (out / RESULTS).exists():
        old = json.loads((out / RESULTS).read_text()).get("metrics")
    return {"metrics": metrics, "n_examples": len(records), "results_metrics": old,
            "matches_results": None if old is None else old == metrics}
