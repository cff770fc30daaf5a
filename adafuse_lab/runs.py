"""Run directories: one command, one folder, resumable.

A run directory holds three files:

- ``config.json``   the RunConfig, written first; a rerun with a different config
  into the same folder is refused (IGNORED_KEYS and IGNORED_DECODE_KEYS say what may differ).
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
import importlib.util
import json
import lzma
import os
import platform
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fields import check_field_types, finite, shown

CONFIG, SAMPLES, RESULTS = "config.json", "samples.jsonl", "results.json"

# Config keys that may differ when resuming into an existing run directory: they
# change speed, not results. (A different batch_size pads prompts differently, which
# can move the last float bits of trace values; predictions almost never change.
# Keep it unchanged when byte-identical files matter.)
IGNORED_KEYS = frozenset({"batch_size"})
# Decode options that change speed and leave every byte of the samples as it is (tested):
# a run started with one value resumes with another, in the same directory.
IGNORED_DECODE_KEYS = frozenset({"batches_in_flight"})

# The most new tokens a run may ask for: more than any member's context (generation stops there),
# and the engine reserves a KV-cache column for each one.
MAX_NEW_TOKENS = 1 << 20

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
    split: str = "dev"              # dev | test: <data_dir>/<task>/<split>.jsonl (the hub's names: tasks.hub_splits)

    def __post_init__(self):
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        check_field_types(self, UsageError)  # a plan file's {"task": 5} or {"chat": "no"}: one line naming the field
        models = self.models.split(",") if isinstance(self.models, str) else self.models
        object.__setattr__(self, "models", tuple(m.strip() for m in models if m.strip()))
        object.__setattr__(self, "decode", dict(self.decode or {}))
        object.__setattr__(self, "chat", True if self.chat else None)  # False and None: plain prompts

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        # Fields added later are left out at their default, so that earlier run directories
        # keep their config.json and their place under analysis.run_dir.
        for key, default in _LATER_FIELDS.items():
            if d.get(key) == default:
                d.pop(key, None)
        return d


# Fields added later -> the default at which to_dict leaves them out.
_LATER_FIELDS = {"half": None, "chat": None, "split": "dev"}
HALVES = ("tune", "report")
SPLITS = ("dev", "test")


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


def _is_path_spec(spec: str) -> bool:
    """Whether a member spec names a local file or folder rather than a zoo name or hub id:
    it exists, looks like a path (/, ./, ../, ~, a .gguf or a separator beyond owner/name),
    or its first part is an existing local folder ("models/qwen" when ./models exists)."""
    if os.path.exists(os.path.expanduser(spec)):
        return True
    if spec.startswith(("/", "./", "../", "~", ".\\")) or spec.endswith(".gguf") or spec.count("/") > 1:
        return True
    head = spec.split("/", 1)[0]
    return "/" in spec and bool(head) and os.path.isdir(head)


# What loading a GGUF needs besides transformers (both base dependencies: transformers refuses a
# gguf_file without accelerate, and reads it with gguf).
GGUF_NEEDS = {"gguf": "gguf>=0.10", "accelerate": "accelerate"}


def check_gguf_support(spec: str) -> None:
    """The packages that load a GGUF (a zoo model or a .gguf member) are installed."""
    for mod, req in GGUF_NEEDS.items():
        if importlib.util.find_spec(mod) is None:
            raise UsageError(f"{spec}: loading a GGUF model needs the {mod} package, a base dependency of "
                             f"adafuse-lab that is not installed here: pip install '{req}' (or reinstall adafuse-lab)")


def _check_model_path(spec: str) -> None:
    """A local member path must exist and hold a model: said before anything is loaded."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"model path {spec!r} does not exist; give an existing folder or .gguf file, a zoo name "
                         "(see `models list`) or a hub id owner/name")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UsageError(f"model path {spec!r} is a file but not a .gguf; give a .gguf file or a model folder")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise UsageError(f"cannot read model file {spec!r} ({e.strerror})") from e
        if magic != b"GGUF":
            raise UsageError(f"{spec!r} is not a GGUF file (it does not start with 'GGUF'): the file is damaged "
                             "or of another format; download it again")
        check_gguf_support(spec)
        return
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    if not ((path / "model.gguf").is_file() or (path / "hf" / "config.json").is_file()
            or ((path / "config.json").is_file() and weights)):
        raise UsageError(f"model folder {spec!r} holds no model: expected config.json with *.safetensors weights "
                         "(a Hugging Face folder) or model.gguf (a staged zoo folder)")
    if (path / "model.gguf").is_file() and not (path / "hf" / "config.json").is_file():
        check_gguf_support(spec)


def check_model_spec(spec: str) -> None:
    """Refuse names that are neither zoo, tiny, hub ("owner/name") nor an existing model path."""
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
    if _is_path_spec(spec):
        return _check_model_path(spec)
    if "/" in spec:
        return  # a hub id: load_session reports what is wrong with it
    zoo = _zoo_names()
    if spec not in zoo:
        raise UsageError(f"unknown model {spec!r}{closest(spec, zoo + tiny_names)}; "
                         "hub models are named owner/name, local ones by an existing path")
    check_gguf_support(spec)
    from . import zoo
    check_cache(write=not zoo.is_cached(spec))  # a model already cached loads from a read-only cache


def check_cache(write: bool = True) -> None:
    """$ADAFUSE_CACHE (the zoo's cache) must be a folder, or not exist yet; one we can write if
    `write` (something is to be fetched or converted into it)."""
    from . import zoo
    try:
        zoo.check_cache(write=write)
    except zoo.FetchError as e:
        raise UsageError(str(e)) from e


# DecodeConfig fields whose fractional values are rounded down with a warning (item 6 of issue 22):
# M and B count words and branches; 2.5 means "at most 2" to anyone who wrote it.
_FLOORED = ("M", "B")
_WARNED: set = set()


# Warnings held back while a command is still being checked (the CLI turns this on): a command
# refused by a later check prints its one error line alone; begin_work() prints them.
_PENDING: list | None = None


def warn(msg: str) -> None:
    """One warning line on stderr, once per process for the same message (held back until
    begin_work() while the CLI is still checking the command)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        if _PENDING is not None:
            _PENDING.append(msg)
        else:
            print(f"warning: {msg}", file=sys.stderr)


def defer_warnings() -> None:
    """Hold warnings back until begin_work() (or drop them with drop_warnings())."""
    global _PENDING
    _PENDING = []


def begin_work(first_line: str | None = None) -> None:
    """Everything is checked and work starts: print first_line (if any), then the held-back
    warnings; later warnings print at once."""
    global _PENDING
    pending, _PENDING = _PENDING or [], None
    if first_line:
        print(first_line, file=sys.stderr)
    for msg in pending:
        print(f"warning: {msg}", file=sys.stderr)


def drop_warnings() -> None:
    """The command was refused: its held-back warnings are not printed (and may be again)."""
    global _PENDING
    _WARNED.difference_update(_PENDING or [])
    _PENDING = None


def _check_types(kw: dict, n_members: int, notes: list | None = None) -> dict:
    """Each decode value has its field's type (a whole number for int fields, a finite number for
    float ones, true/false for flags, a list of n_members numbers for weights); returns kw with
    whole floats as ints and fractional M and B rounded down (the warning goes to `notes`, to be
    printed once the whole config is valid: a refused command prints its one error line only)."""
    from .decoding import DecodeConfig
    import math
    types = {f.name: str(f.type) for f in dataclasses.fields(DecodeConfig)}
    out = {}
    for k, v in kw.items():
        t = types.get(k)
        if t is None:
            out[k] = v  # DecodeConfig names it and the closest fields
            continue
        base, optional = t.split("|")[0].strip(), "None" in t
        got = shown(v)
        if v is None:
            if not optional:
                raise UsageError(f"{k} needs a value, got null")
        elif base == "bool":
            if not isinstance(v, bool):
                raise UsageError(f"{k} must be true or false, got {got}")
        elif base == "int":
            if not finite(v):
                raise UsageError(f"{k} must be a whole number, got {got}")
            if v != int(v):
                if k not in _FLOORED:
                    raise UsageError(f"{k} must be a whole number, got {got}")
                if math.floor(v) < 1:
                    raise UsageError(f"{k} must be >= 1, got {got} (a fractional {k} is rounded down)")
                msg = f"{k}={v} is not a whole number: using {k}={math.floor(v)}"
                warn(msg) if notes is None else notes.append(msg)
                v = math.floor(v)
            v = int(v)
        elif base == "float":
            if not finite(v):
                raise UsageError(f"{k} must be a finite number, got {got}")
        elif base == "str":
            if not isinstance(v, str):
                raise UsageError(f"{k} must be a string, got {got}")
        elif base.startswith("tuple"):  # weights
            if not isinstance(v, (list, tuple)) or not all(finite(w) for w in v):
                raise UsageError(f"{k} must be a list of numbers, one per member, e.g. {k}='[0.6, 0.4]'; got {got}")
            if len(v) != n_members:
                raise UsageError(f"{k} has {len(v)} value(s) for {n_members} member(s); give one per member")
        out[k] = v
    return out


def decode_config(cfg: RunConfig):
    """The DecodeConfig for `cfg`: value types and the member count checked here, names and ranges
    by DecodeConfig itself."""
    from .decoding import DecodeConfig
    fields = {f.name for f in dataclasses.fields(DecodeConfig)}
    kw = dict(cfg.decode)
    for k in kw:
        if not isinstance(k, str) or not k:
            raise UsageError(f"decode option names must be non-empty strings, got {k!r}")
        if k in {f.name for f in dataclasses.fields(RunConfig)}:
            raise UsageError(f"decode option {k!r} is a run option: set it with --{k.replace('_', '-')}")
    notes: list = []
    kw = _check_types(kw, len(cfg.models), notes)
    kw.update({k: getattr(cfg, k) for k in _RUN_LEVEL if k in fields})
    try:
        dcfg = DecodeConfig.from_dict(kw)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e
    n = len(cfg.models)
    if not 0 <= dcfg.member < n:
        raise UsageError(f"member={dcfg.member} does not exist: {n} member(s) given, so member is 0..{n - 1}")
    for msg in notes:
        warn(msg)
    return dcfg


def _warn_degenerate(cfg: RunConfig, dcfg) -> None:
    """Ensembles that run but are probably not what was meant: warned, not refused."""
    if cfg.method == "single":
        return
    if len(cfg.models) == 1:
        warn(f"{cfg.method} with one member ({cfg.models[0]}) is not an ensemble; give two or more --models")
    twice = sorted({m for m in cfg.models if cfg.models.count(m) > 1})
    if twice:
        warn(f"member {', '.join(twice)} is given more than once: its scores count once per mention")
    if dcfg.weights is not None:
        if all(w == 0 for w in dcfg.weights):
            warn("every weight is 0: no candidate gets a finite score, so the first proposal always wins")
        elif any(w < 0 for w in dcfg.weights):
            warn(f"negative weight(s) in {list(dcfg.weights)}: those members' NLLs favour the candidates "
                 "they find unlikely")


def check_device(device) -> None:
    """cpu, cuda, cuda:N (an existing GPU), mps or auto (several GPUs, needs accelerate)."""
    if device is None:
        return
    import torch
    if device == "auto":
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device auto needs the accelerate package, a base dependency of adafuse-lab that is "
                             "not installed here: pip install accelerate (or reinstall adafuse-lab)")
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}"
                             f"{'' if torch.version.cuda else ', a CPU-only build'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return
    if dev.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return
    raise UsageError(f"--device {device}: not available here; use cpu, cuda, cuda:N or auto")


def check_data(cfg: RunConfig, task) -> None:
    """An explicit data folder (--data-dir, else $ADAFUSE_DATA) is used or refused, never skipped for
    another source; --source hub needs the hub extra."""
    given = cfg.data_dir if cfg.data_dir is not None else os.environ.get("ADAFUSE_DATA") or None
    flag = "--data-dir" if cfg.data_dir is not None else "$ADAFUSE_DATA"
    if cfg.data_dir is not None and cfg.source in ("sample", "hub"):
        raise UsageError(f"--data-dir is not read with --source {cfg.source}; drop one of them "
                         "(--source local or auto reads the folder)")
    if cfg.source == "hub" and importlib.util.find_spec("datasets") is None:
        raise UsageError("--source hub needs the datasets package: pip install 'adafuse-lab[hub]'")
    if cfg.split != "dev" and cfg.source == "sample":
        raise UsageError(f"--split {cfg.split}: the embedded samples (--source sample) have only a dev split; "
                         f"give --source local with a folder holding {task.name}/{cfg.split}.jsonl")
    if given is None and cfg.split != "dev" and cfg.source in ("auto", "local"):
        from .tasks import data_dirs
        looked = [d / task.name / f"{cfg.split}.jsonl" for d in data_dirs()]
        if not any(f.is_file() for f in looked) and (cfg.source == "local" or not _hub_possible()):
            raise UsageError(f"--split {cfg.split}: no {task.name}/{cfg.split}.jsonl in "
                             f"{', '.join(str(f.parent.parent) for f in looked)}"
                             + ("" if cfg.source == "local" else " and no hub (offline or datasets not installed)")
                             + "; give --data-dir with the folder that holds it")
    if given is None or cfg.source not in ("auto", "local"):
        return
    if str(given).strip() == "":
        raise UsageError(f"{flag} is empty; give a data folder")
    d = Path(given).expanduser()
    name = f"{cfg.split}.jsonl"
    if not d.exists():
        raise UsageError(f"{flag} {d} does not exist; give the folder that holds <task>/{name} "
                         "(e.g. ../shared/data)")
    if not d.is_dir():
        raise UsageError(f"{flag} {d} is a file; give the folder that holds <task>/{name}")
    f = d / task.name / name
    if f.exists() and not f.is_file():
        raise UsageError(f"{flag} {d}: {f} is {'a folder' if f.is_dir() else 'not a regular file'}, not a data "
                         f"file; give the folder that holds <task>/{name}")
    if not f.is_file():
        have = sorted(p.name for p in d.iterdir() if (p / name).is_file())
        raise UsageError(f"{flag} {d} has no {task.name}/{name}"
                         + (f" (it has {', '.join(have)})" if have else
                            f" (no task folder in it holds a {name})" if cfg.split != "dev"
                            else " (it holds no task folders)"))
    if not os.access(f, os.R_OK):
        raise UsageError(f"{f} is not readable; fix its permissions")


def _hub_possible() -> bool:
    """Whether --source auto may try the hub: datasets is installed and no offline switch is set."""
    offline = any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return not offline and importlib.util.find_spec("datasets") is not None


def validate(cfg: RunConfig, warn_degenerate: bool = True):
    """Check everything that can be checked before touching disk or loading models: options,
    members, device, dtype, data folder and every decode value. warn_degenerate: warn about
    ensembles that run but are probably not meant (off for plans that hold such runs on purpose,
    such as each member alone).

    Returns (task, DecodeConfig)."""
    if not cfg.models:
        raise UsageError("no models given; e.g. --models tiny:bpe,tiny:spm")
    for k in ("limit", "batch_size", "max_new_tokens"):
        v = getattr(cfg, k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UsageError(f"{k} must be an integer >= 1, got {v!r}")
    if (cfg.max_new_tokens or 0) > MAX_NEW_TOKENS:  # the engine reserves KV-cache columns for every one of them
        raise UsageError(f"max_new_tokens must be at most {MAX_NEW_TOKENS} (no model here has a longer context), "
                         f"got {cfg.max_new_tokens}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2 ** 32:
        raise UsageError(f"seed must be an integer in 0..{2 ** 32 - 1}, got {cfg.seed!r}")
    if cfg.half is not None and cfg.half not in HALVES:
        raise UsageError(f"half must be tune or report, got {cfg.half!r}{closest(str(cfg.half), HALVES)}")
    if cfg.source not in ("auto", "local", "hub", "sample"):
        raise UsageError(f"unknown source {cfg.source!r}{closest(cfg.source, ['auto', 'local', 'hub', 'sample'])}")
    if cfg.split not in SPLITS:
        raise UsageError(f"split must be dev or test, got {cfg.split!r}{closest(str(cfg.split), SPLITS)}")
    task = _get_task(cfg.task)
    methods = _method_names()
    if cfg.method not in methods:
        raise UsageError(f"unknown method {cfg.method!r}{closest(cfg.method, methods)}")
    for spec in cfg.models:
        check_model_spec(spec)
    _dtype(cfg.dtype)
    check_device(cfg.device)
    check_data(cfg, task)
    dcfg = decode_config(cfg)
    if warn_degenerate:
        _warn_degenerate(cfg, dcfg)
    return task, dcfg


DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16",
          "float32": "float32", "fp32": "float32", "float": "float32"}


def _dtype(name):
    if name is None:
        return None
    import torch
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}{closest(str(name), ['bfloat16', 'float16', 'float32'])}")
    return getattr(torch, DTYPES[key])


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
    """Complete records of samples.jsonl (or of samples.jsonl.xz, as results are committed),
    first occurrence of each id.

    A last line without its newline (killed mid-write) or a line that does not
    parse is dropped: that example is simply decoded again."""
    if not path.exists():
        return []
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
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


LOCK = ".lock"  # flock'ed while a process writes the run; the kernel drops the lock when the process dies
# What a run directory may hold: ours, written by run() (and run_sharded: shards/).
_OURS = (CONFIG, SAMPLES, RESULTS, LOCK, "shards")


def _ours(name: str) -> bool:
    return name in _OURS or (name.endswith(".tmp") and name[:-4] in _OURS)


def _junk(name: str) -> bool:
    """Files a file browser or Jupyter drops into any folder it shows."""
    return name in (".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints") or name.startswith(("._", ".nfs"))


def _is_run_config(path: Path) -> bool:
    """Whether path is a config.json that run() wrote (a RunConfig), not someone else's."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and {"task", "models", "method"} <= set(d)


def _not_inside_a_run(path: Path, flag: str) -> None:
    """path is not inside one of our run directories: a folder written there would make that run
    hold a file it did not write, and its own command would then refuse to resume it. (A
    sharded run's OUT/shards/<rank> is the exception: run_sharded writes it.)"""
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        if (parent / CONFIG).is_file() and _is_run_config(parent / CONFIG):
            if path.relative_to(parent).parts[0] == "shards":
                return
            raise UsageError(f"{flag} {path} is inside the run directory {parent}, which must hold only its own "
                             f"files; choose a folder outside it")


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing folder above path is a folder we may write (so path can be created)."""
    node = path.parent
    while not node.exists() and node != node.parent:
        node = node.parent
    if not node.is_dir():
        raise UsageError(f"{flag} {path}: {node} is a file, so no folder can be made under it; choose another {flag}")
    if not os.access(node, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create it, {node} is not writable; choose another {flag}")


def check_out(out_dir, cfg: RunConfig | None = None, flag: str = "--out") -> Path:
    """The run directory may be written: a new folder, an empty one, or one of our runs with the
    same config (resume). A file, an empty path, a folder holding files we did not write or a run
    of another config are refused, before anything is loaded. Returns the path."""
    if out_dir is None or str(out_dir).strip() == "":
        raise UsageError(f"{flag} is empty; give the run directory to write, e.g. {flag} runs/my_run")
    out = Path(out_dir).expanduser()
    _not_inside_a_run(out, flag)
    if not out.exists():
        if out.is_symlink():
            raise UsageError(f"{flag} {out} is a broken symbolic link; remove it or choose another {flag}")
        _writable_parent(out, flag)
        return out
    if not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder; choose a folder path")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out} is not writable; choose another {flag}")
    names = sorted(p.name for p in out.iterdir())
    for name in (CONFIG, SAMPLES, RESULTS):
        if (out / name).exists() and not (out / name).is_file():
            raise UsageError(f"{flag} {out} holds a folder {name}; it is not a run directory: choose another {flag}")
    if (out / CONFIG).is_file() and not _is_run_config(out / CONFIG):
        try:
            json.loads((out / CONFIG).read_text(encoding="utf-8"))
            what = "is not a run config (written by another tool?)"
        except (OSError, ValueError):
            what = "does not read as JSON"
        raise UsageError(f"{out / CONFIG} {what}; adafuse_lab writes only into new, empty or its own run "
                         f"directories: choose another {flag}")
    foreign = [n for n in names if not _ours(n) and not _junk(n)]
    if not (out / CONFIG).is_file():  # samples.jsonl or results.json without our config.json: not ours
        foreign = [n for n in names if n not in (LOCK, "shards") and not n.endswith(".tmp") and not _junk(n)]
    if foreign:
        raise UsageError(f"{flag} {out} holds files adafuse_lab did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty {flag}")
    if cfg is not None:
        _claim_dir(out, cfg, write=False)
    return out


def check_folder(path, flag: str) -> Path:
    """An output folder that may already hold files (figures --out, --work): not an empty path,
    not a file, and writable (or creatable). Returns the path."""
    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag} is empty; give a folder")
    p = Path(path).expanduser()
    _not_inside_a_run(p, flag)
    if not p.exists():
        _writable_parent(p, flag)
    elif not p.is_dir():
        raise UsageError(f"{flag} {p} is a file, not a folder; choose a folder path")
    elif not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {p} is not writable; choose another {flag}")
    return p


# What a work folder (tune --out, quality --work, figures --work) holds once we have written into it.
_WORK_OURS = ("runs", "logs", "plan", "plan.jsonl", "plan.raw.jsonl", "quality_params.json", "figures")
_NOTEBOOK_OUTPUT = re.compile(r"[0-9][0-9]_[A-Za-z0-9_]+(\.ipynb)?")  # an executed notebook and its out_dir
_FIGURE = re.compile(r"[0-9][0-9]_[A-Za-z0-9_.-]+\.(png|pdf)")  # plots.save: NN_<name>.png and .pdf


def _work_ours(name: str) -> bool:
    return (name in _WORK_OURS or (name.startswith("tune_") and name.endswith(".json"))
            or _NOTEBOOK_OUTPUT.fullmatch(name) is not None or name.endswith(".tmp"))


def _refuse_foreign(p: Path, flag: str, ours) -> None:
    """p holds only what ours(name) says we write (and what file browsers drop)."""
    foreign = sorted(n.name for n in p.iterdir() if not _junk(n.name) and not ours(n.name))
    if foreign:
        raise UsageError(f"{flag} {p} holds files adafuse_lab did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty {flag}")


def check_figure_dir(path, flag: str = "--out") -> Path:
    """figures --out: as check_folder, and holding nothing but figures (NN_<name>.png/.pdf), which
    the notebooks write again; a folder of someone else's files is refused."""
    p = check_folder(path, flag)
    if p.is_dir():
        _refuse_foreign(p, flag, lambda name: _FIGURE.fullmatch(name) is not None)
    return p


def check_work_dir(path, flag: str) -> Path:
    """A work folder (tune --out, quality --work, figures --work) may be written: a new or empty
    folder, or one that holds only our output (runs/, tune_<task>.json, plan.jsonl, executed
    notebooks, ...). An empty path, a file, or a folder with any file we did not write is refused,
    before anything runs. Returns the path."""
    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag} is empty; give the folder to write, e.g. {flag} runs/tune")
    p = Path(path).expanduser()
    _not_inside_a_run(p, flag)
    if not p.exists():
        _writable_parent(p, flag)
        return p
    if not p.is_dir():
        raise UsageError(f"{flag} {p} is a file, not a folder; choose a folder path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {p} is not writable; choose another {flag}")
    _refuse_foreign(p, flag, _work_ours)
    if (p / "runs").exists() and not (p / "runs").is_dir():
        raise UsageError(f"{flag} {p}: {p / 'runs'} is a file, but runs are written there; move it away")
    return p


class _Lock:
    """An exclusive flock on OUT/.lock while a process writes the run: a second process is
    refused. The kernel drops the lock when the process dies, so a killed run leaves only an
    unlocked file; a finished one removes it (after checking it is still the file it locked)."""

    def __init__(self, out: Path):
        import fcntl
        self.path = out / LOCK
        while True:
            f = open(self.path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise UsageError(f"another process is writing {out}; wait for it to finish (then rerun the same "
                                 "command: it resumes) or choose another --out") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not removed by a process that finished meanwhile
                self.f = f
                return
            f.close()

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)  # still holding the lock: nobody else has it
        except OSError:
            pass
        self.f.close()  # closing drops the flock


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
        if (not prefix and k in IGNORED_KEYS) or (prefix == "decode." and k in IGNORED_DECODE_KEYS):
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


def attention_mode(dcfg) -> str:
    """The attention backend the engine's forwards ran on (decoding/attention)."""
    from .decoding.attention.backends import CHOSEN, get_backend
    if dcfg.attention == "auto" and CHOSEN:  # CUDA: chosen per member shape by measurement
        return "auto: " + ", ".join(sorted({c["backend"] for c in CHOSEN.values()}))
    return get_backend(dcfg.attention, None).name


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
                      f"exceeds {m.name}'s context ({ctx}); the answer may run past it, where the model was not "
                      f"trained (lower --max-new-tokens to stay inside it)", file=sys.stderr)
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
    """Yield (example, DecodeOutput) for the examples of `batch` (whole batches of
    dcfg.batch_size in order, the last may be short), in one decoding call: with
    batches_in_flight n, a batch starts as soon as one of the n before it ends, and takes over
    its buffers (decoding.runtime.reuse). On out of memory, shrink the batches that were in
    flight and go on.

    When the GPU runs out of memory, the unfinished examples of the batches in flight are
    decoded again: first one batch at a time, then in sub-batches of half the size of the one
    that failed, down to one example; `oom` gets a note of each step. The batches after them go
    on at the settings asked for. (Smaller batches pad prompts differently: trace values may then
    differ from a run that did not halve in the last float bits, see IGNORED_KEYS.)"""
    from tqdm.auto import tqdm

    from .models import free_memory
    todo, size, finished = list(batch), dcfg.batch_size, set()
    flight = min(dcfg.batches_in_flight, -(-len(todo) // size))  # no more in flight than there are batches
    try:
        for i, o in _decode_iter(method, members, [prompts[ex.id] for ex in todo],
                                 dataclasses.replace(dcfg, batch_size=size, batches_in_flight=flight), stop=stop):
            finished.add(todo[i].id)
            yield todo[i], o
        return
    except _oom_errors() as e:
        k = next(j for j, ex in enumerate(todo) if ex.id not in finished)
        failed = todo[k // size * size:][:size]  # the first unfinished batch
        if len(failed) == 1 and flight == 1:
            raise UsageError(f"out of GPU memory decoding example {failed[0].id!r} on its own (batch size 1): "
                             "free GPU memory, lower --max-new-tokens or use smaller models; finished "
                             "examples are saved, rerun the same command to resume") from e
        # the batches that may have been in flight: from the failed one, `flight` of them, and on
        # to the last with a finished example; those after them had not started and stay whole
        touched = [j // size for j, ex in enumerate(todo) if ex.id in finished and j >= k]
        end = max(k // size + flight, max(touched, default=0) + 1) * size
    group = [ex for ex in todo[:end] if ex.id not in finished]
    free_memory()  # after the except block: the traceback no longer holds the batch's tensors
    if flight > 1:
        oom.append({"example": group[0].id, "batches_in_flight": flight, "retry_batches_in_flight": 1})
        tqdm.write(f"warning: out of GPU memory decoding {flight} batches at once; decoding the {len(group)} "
                   "unfinished examples of those one batch at a time", file=sys.stderr)
        smaller = dataclasses.replace(dcfg, batches_in_flight=1)
    else:
        oom.append({"example": group[0].id, "batch_size": len(failed), "retry_batch_size": len(failed) // 2})
        tqdm.write(f"warning: out of GPU memory decoding {len(failed)} examples together; decoding the "
                   f"{len(group)} unfinished ones of this batch {len(failed) // 2} at a time", file=sys.stderr)
        smaller = dataclasses.replace(dcfg, batch_size=len(failed) // 2, batches_in_flight=1)
    yield from _decode_batch(method, members, group, prompts, smaller, stop, oom)
    if todo[end:]:
        yield from _decode_batch(method, members, todo[end:], prompts, dcfg, stop, oom)


def run(cfg: RunConfig, out_dir, progress: bool = True, shard: tuple[int, int] | None = None,
        sessions: dict | None = None) -> dict:
    """Decode every example of cfg.task into out_dir; resume if it holds a partial run.
    `shard` = (rank, world): decode only batches rank, rank + world, ... (run_sharded).
    `sessions`: a dict in which loaded members are kept for later runs (see _load_members).

    Returns the content of results.json."""
    t_start = time.perf_counter()
    task, dcfg = validate(cfg)
    out = check_out(out_dir, cfg)
    # Nothing is written before the data and the models have loaded: a bad data file
    # or model leaves no run directory behind, and an existing one as it was. An existing
    # run directory is locked first, so that two processes never write the same run.
    locks = [_Lock(out)] if out.is_dir() else []
    try:
        return _run(cfg, task, dcfg, out, locks, t_start, progress, shard, sessions)
    finally:
        for lock in locks:
            lock.release()


def _run(cfg: RunConfig, task, dcfg, out: Path, locks: list, t_start: float, progress: bool, shard,
         sessions) -> dict:
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    try:
        loaded = task.load(source=cfg.source, data_dir=cfg.data_dir, limit=cfg.limit, split=cfg.split)
    except (RuntimeError, FileNotFoundError) as e:  # the hub was asked for and did not answer; no such split
        raise UsageError(str(e)) from e
    source_line = None
    if cfg.source == "auto" and (shard is None or shard[0] == 0):  # say which source auto chose
        source_line = (f"data: {cfg.task} from {getattr(loaded, 'source', '?')} "
                       f"({getattr(loaded, 'location', '?')}), chosen by --source auto")
    if not len(loaded):
        dropped = len(getattr(loaded, "dropped", None) or [])
        raise UsageError(f"{getattr(loaded, 'location', None) or cfg.task} holds no examples"
                         + (f" (all {dropped} repeat a few-shot demo question and were dropped)" if dropped else "")
                         + "; give a data file with at least one example")
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
    begin_work(source_line)  # every check passed: the source line first, then any held-back warnings

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _disk_error(e, out) from e
    if not locks:
        locks.append(_Lock(out))  # released by run()
    check_out(out, cfg)  # again, under the lock: another process may have started this run meanwhile
    _claim_dir(out, cfg)
    if samples.exists():  # compact: finished records in example order, partial lines dropped
        write_atomic(samples, b"".join(_line(done[i]) for i in ids if i in done))

    per_example, oom = {}, []
    t_decode, decode_from = time.perf_counter(), time.time()
    if batches:
        with open(samples, "ab", buffering=0) as f, tqdm(total=len(mine), initial=len(done), disable=not progress,
                                            desc=f"{cfg.task}/{cfg.method}", unit="ex") as bar:
            t_prev = time.perf_counter()
            # every unfinished batch, whole and in order (only the last can be short), in one call:
            # the decoder cuts them back into the same batches
            for ex, o in _decode_batch(cfg.method, members, sum(batches, []), prompts, dcfg, task.stop_fn, oom):
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
                 "split": cfg.split, "dropped_demo_leaks": list(getattr(loaded, "dropped", [])),
                 "half": cfg.half},
        "decode_config": json.loads(json.dumps(dataclasses.asdict(dcfg), default=_json_default)),
        "seeds": {"torch": cfg.seed, "random": cfg.seed, "numpy": cfg.seed},
        "deterministic": {"torch_algorithms": _deterministic(),
                          "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")},
        "versions": versions(), "git_commit": git_commit(),
        "device": device_name(members[0].device) if members else (old or {}).get("device"),
        # not in config.json, so that run directories keep their names whichever path decoded them
        "attention": attention_mode(dcfg),
        "timings": {"wall_s": round(time.perf_counter() - t_start, 3), "load_s": round(load_s, 3),
                    "decode_s": round(decode_s, 3), "n_decoded": len(per_example),
                    # wall-clock seconds since the epoch: the merge of a sharded run measures the
                    # span in which any of its processes decoded (they may share a GPU)
                    "decode_unix": [round(decode_from, 3), round(time.time(), 3)],
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
    """One process of a run split over `world` processes (one or more per GPU of a host):

        torchrun --nproc-per-node 2 -m adafuse_lab run ...    (or: accelerate launch -m adafuse_lab run ...)

    Rank r decodes its batches into OUT/shards/r (resumable like any run) on cuda:LOCAL_RANK
    modulo the GPUs: with more processes than GPUs they share them (without MPS a GPU runs one
    process's kernels at a time: 16% faster at best on one H100, BENCHMARKS.md, engine v17);
    rank 0 then waits for every shard and merges them into OUT, which ends up with the same
    config.json and samples.jsonl as a one-process run. Returns results.json on rank 0."""
    out = Path(out_dir)
    shard_cfg = cfg
    if cfg.device is None:
        import torch
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", rank))
            shard_cfg = dataclasses.replace(cfg, device=f"cuda:{local % torch.cuda.device_count()}")
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
    shards = [parts[r]["timings"] for r in range(world)]
    merged["timings"] = {"wall_s": max(t["wall_s"] for t in shards), "decode_span_s": _decode_span(shards),
                         "shards": shards}
    _write_results(out, merged)
    return merged


def _decode_span(shards: list[dict]) -> float | None:
    """Seconds from the first shard's start of decoding to the last one's end (None where a
    shard's timings predate decode_unix, or it resumed with nothing left to decode)."""
    spans = [t.get("decode_unix") for t in shards if t.get("n_decoded", 1)]  # a shard with no batch: no span
    if not spans or not all(spans):
        return None
    return round(max(b for _, b in spans) - min(a for a, _ in spans), 3)


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


def _read_json_file(path: Path, what: str):
    """A JSON file of a run directory, or one line naming the file and what is wrong with it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not the run's {what}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start}): the run's {what} is damaged") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}): the run's {what} is damaged") from None


def read_samples_strict(path: Path) -> list[dict]:
    """Every record of samples.jsonl, or one line naming the file and the line that is damaged
    (eval must not re-score a run with records silently dropped)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not the run's records") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror})") from None
    lines = data.split(b"\n")
    if lines[-1].strip():
        raise UsageError(f"{path}:{len(lines)}: the last record is cut off (the run was interrupted while "
                         "writing it): rerun the run's command to resume and finish it")
    out, seen = [], set()
    for n, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}:{n}: not UTF-8 text (byte {e.start}): the record is damaged") from None
        except ValueError as e:
            raise UsageError(f"{path}:{n}: not a JSON record ({e}): the record is damaged") from None
        missing = [k for k in ("id", "prediction", "references") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise UsageError(f"{path}:{n}: the record has no {', '.join(missing)}: it was not written by a run")
        if not isinstance(rec["prediction"], (str, type(None))) or not isinstance(rec["references"], list):
            raise UsageError(f"{path}:{n}: 'prediction' must be a string and 'references' a list")
        if not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool):
            raise UsageError(f"{path}:{n}: 'id' must be a string or an integer: the record is damaged")
        if not all(isinstance(r, str) for r in rec["references"]) or not isinstance(rec.get("meta") or {}, dict):
            raise UsageError(f"{path}:{n}: 'references' must be a list of strings and 'meta' an object: "
                             "the record is damaged")
        if rec["id"] in seen:
            raise UsageError(f"{path}:{n}: example {rec['id']!r} is recorded twice")
        seen.add(rec["id"])
        out.append(rec)
    return out


def evaluate_dir(out_dir) -> dict:
    """Re-score every prediction in out_dir/samples.jsonl and aggregate.

    Returns {"metrics", "n_examples", "results_metrics", "matches_results"}; the last
    two compare with results.json when it exists. A damaged file is named with its line."""
    from .tasks import Example

    if str(out_dir).strip() == "":
        raise UsageError("eval needs a run directory, got an empty path")
    out = Path(out_dir).expanduser()
    if not out.exists():
        raise UsageError(f"{out} is not a run directory (it does not exist)")
    if not out.is_dir():
        raise UsageError(f"{out} is not a run directory (it is a file); give the folder that holds {CONFIG}")
    if not (out / CONFIG).exists():
        raise UsageError(f"{out} is not a run directory (no {CONFIG})")
    cfg = _read_json_file(out / CONFIG, "config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), str):
        raise UsageError(f"{out / CONFIG} is not a run config (no task): not a run directory of adafuse_lab")
    task = _get_task(cfg["task"])
    if not (out / SAMPLES).exists():
        raise UsageError(f"{out} has no {SAMPLES}: the run has not finished an example yet")
    records = read_samples_strict(out / SAMPLES)
    if not records:
        raise UsageError(f"{out / SAMPLES} has no finished examples")
    old_results = _read_json_file(out / RESULTS, "results") if (out / RESULTS).exists() else None
    if old_results is not None and (not isinstance(old_results, dict)
                                    or not isinstance(old_results.get("metrics", {}), dict)
                                    or not isinstance(old_results.get("n_examples", 0), int)):
        raise UsageError(f"{out / RESULTS} is not a results file (a JSON object with 'metrics' and "
                         "'n_examples'): it is damaged; rerun the run's command to rebuild it")
    n_old = (old_results or {}).get("n_examples")
    if isinstance(n_old, int) and n_old != len(records):
        raise UsageError(f"{out / SAMPLES} holds {len(records)} records but {RESULTS} counts {n_old}: records "
                         "were lost or added after the run; rerun the run's command to rebuild them")
    rescored = []
    for n, rec in enumerate(records, start=1):
        ex = Example(id=rec["id"], question=rec.get("question"), references=rec["references"],
                     meta=rec.get("meta") or {})
        try:
            scores = dict(task.score(ex, rec["prediction"]))
        except (ValueError, TypeError, KeyError, IndexError) as e:  # a record the scorer cannot read
            raise UsageError(f"{out / SAMPLES}: record {n} (example {rec['id']!r}) does not score as a {task.name} "
                             f"record ({type(e).__name__}: {e}): the record is damaged, or {CONFIG} names the "
                             "wrong task") from e
        rescored.append({**rec, "answer": scores.pop("answer", None), "metrics": scores})
    try:
        metrics = json.loads(json.dumps(task.aggregate(rescored), default=_json_default))
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{out / SAMPLES}: its records do not score together as {task.name} ({e}): records are "
                         f"damaged, or {CONFIG} names the wrong task") from e
    old = None if old_results is None else old_results.get("metrics")
    return {"metrics": metrics, "n_examples": len(records), "results_metrics": old,
            "matches_results": None if old is None else old == metrics}


# ---------------------------------------------------------------- saved runs, found by their config


@dataclass
class Run:
    path: Path
    config: dict
    results: dict
    records: list = field(repr=False, default_factory=list)

    @property
    def task(self) -> str:
        return self.config["task"]


def canonical_decode(decode: dict | None) -> dict:
    """decode options minus those equal to DecodeConfig's defaults, sorted: the same run
    asked for in two notebooks gets the same directory."""
    from .decoding import DecodeConfig
    defaults = DecodeConfig().to_dict()
    out = {}
    for k, v in sorted((decode or {}).items()):
        if isinstance(v, list):
            v = tuple(v)
        if k in defaults and defaults[k] == v:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def run_config(task: str, models: str | list, method: str = "adafuse", decode: dict | None = None,
               **run_kw):
    """A runs.RunConfig with canonical decode options."""
    return RunConfig(task=task, models=models, method=method, decode=canonical_decode(decode), **run_kw)


def run_dir(runs_dir, cfg) -> Path:
    """runs_dir/<task>/<method>[_<option><value>...]-<hash of the config>."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in IGNORED_KEYS}
    decode = {k: v for k, v in cfg.decode.items() if k not in IGNORED_DECODE_KEYS}
    d["decode"] = decode
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    opts = "".join(f"_{k}{v}" for k, v in sorted(decode.items()) if not isinstance(v, (list, dict)))
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in f"{cfg.method}{opts}")[:60]
    return Path(runs_dir) / cfg.task / f"{slug}-{h}"


def load_run(path) -> Run | None:
    """A finished run directory (config.json, results.json, samples.jsonl), or None."""
    path = Path(path)
    if not (path / RESULTS).exists() or not (path / CONFIG).exists():
        return None
    results = json.loads((path / RESULTS).read_text())
    return Run(path, json.loads((path / CONFIG).read_text()), results, read_samples(path / SAMPLES))


def finished_run(path) -> Run | None:
    """The run directory at path if it holds every example of its run, else None."""
    have = load_run(path)
    return have if have is not None and have.results.get("n_examples") == len(have.records) else None


def ensure_run(cfg, runs_dir, launch: bool = True, progress: bool = False, log=print,
               sessions: dict | None = None) -> Run | None:
    """The saved run for `cfg` under runs_dir; decode it first when missing and `launch`.
    Returns None for a missing run that may not be launched. sessions: loaded members kept
    from one run to the next (see run())."""
    path = run_dir(runs_dir, cfg)
    have = finished_run(path)
    if have is not None:
        log(f"found     {path}")
        return have
    if not launch:
        log(f"missing   {path} (launch=False)")
        return None
    t = time.perf_counter()
    run(cfg, path, progress=progress, sessions=sessions)
    log(f"decoded   {path} ({time.perf_counter() - t:.1f} s)")
    return load_run(path)


def find_runs(runs_dir) -> list[Run]:
    """Every finished run directory under runs_dir (any depth), sorted by path."""
    out = []
    for p in sorted(Path(runs_dir).rglob(RESULTS)):
        r = load_run(p.parent)
        if r is not None:
            out.append(r)
    return out
