"""The decoding engine: AdaFuse and its baselines on one runtime.

    outputs = decode("adafuse", [session_a, session_b], prompts, DecodeConfig(theta=0.7), stop)

Three layers: methods/ (the round logic of each method), runtime/ (each member's streams,
forward plans, KV cache and CUDA graphs), attention/ (how the fed tokens attend over the
token tree). decode_iter is the whole loop: per batch, one runtime per member, then the
method's rounds.
"""
from __future__ import annotations

import contextlib
import difflib
import gc
from typing import Iterable, Iterator, Sequence

import torch

from .attention import get_backend
from .config import ConfigError, DecodeConfig
from .methods import ROUNDS, STEP, Batch, DecodeOutput, make_stop
from .runtime import Runtime
from .runtime.reuse import Reuse
from ..session import ModelSession

METHODS = ("single", "adafuse", "unite", "gac", "sweetspan", "coolfusion", "rerank")

__all__ = ["METHODS", "ConfigError", "DecodeConfig", "DecodeOutput", "decode", "decode_iter", "check_method", "check_inputs"]


def check_method(method: str, n_members: int, cfg: DecodeConfig) -> None:
    if not isinstance(method, str):
        raise ConfigError(f"method must be a string, one of {', '.join(METHODS)}; got {method!r}")
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown method {method!r}{hint}; choose from {', '.join(METHODS)}")
    if n_members < 1:
        raise ConfigError("at least one member is needed")
    if method == "single" and not 0 <= cfg.member < n_members:
        raise ConfigError(f"member {cfg.member} does not exist: {n_members} member(s) given")
    if cfg.weights is not None and len(cfg.weights) != n_members:
        raise ConfigError(f"weights has {len(cfg.weights)} value(s) for {n_members} member(s); give one per member")


def check_inputs(method, members, prompts, cfg, stop) -> tuple[list, list[str], DecodeConfig, object]:
    """decode's arguments, checked before any model work: (members, prompts, cfg, stop) as lists,
    a DecodeConfig and a stop rule, or one ConfigError naming what is wrong. Prompts may be any
    iterable of strings (a generator is read once); each must give every member at least one token
    and fit its context."""
    if cfg is None:
        cfg = DecodeConfig()
    elif not isinstance(cfg, DecodeConfig):
        raise ConfigError(f"cfg must be a DecodeConfig (DecodeConfig.from_dict builds one from a dict), "
                          f"got {type(cfg).__name__}")
    if isinstance(members, ModelSession):
        raise ConfigError("members must be a list of sessions: give [session] for one member")
    if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
        raise ConfigError(f"members must be a list of sessions from adafuse_lab.models.load_session, got {members!r}")
    members = list(members)
    for k, m in enumerate(members):
        if not isinstance(m, ModelSession):
            hint = f" (load it first: load_session({m!r}))" if isinstance(m, str) else ""
            raise ConfigError(f"member {k} is not a session from adafuse_lab.models.load_session, got "
                              f"{type(m).__name__} {m!r}"[:200] + hint)
    check_method(method, len(members), cfg)
    if isinstance(prompts, (str, bytes)):
        raise ConfigError("prompts must be a list of strings, got one string: give [prompt] for one prompt")
    if not isinstance(prompts, Iterable):
        raise ConfigError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i} is {type(p).__name__} {p!r}"[:160] + ", not a string")
    if isinstance(stop, str):
        stop = [stop]  # one stop string, not the set of its characters
    if stop is not None and not callable(stop):
        if not isinstance(stop, Iterable):
            raise ConfigError(f"stop must be a function text -> cut index, a stop string or a list of them, got {stop!r}")
        stop = list(stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"stop strings must be non-empty strings, got {s!r}"
                                  + (" (it matches everywhere: every answer would be empty)" if s == "" else ""))
    used = [members[cfg.member]] if method == "single" else members
    for m in dict.fromkeys(used):  # each session once
        ctx = m.max_context
        for i, p in enumerate(prompts):
            n = len(m.encode_prompt(p))
            if n == 0:
                raise ConfigError(f"prompt {i} is empty: {m.name} has no BOS token, so it has nothing to condition on")
            if ctx and n >= ctx:
                raise ConfigError(f"prompt {i} is {n} tokens but {m.name} has a context of {ctx}; "
                                  "use a shorter prompt or another model")
    return members, prompts, cfg, stop


def decode_iter(method: str, members: Sequence, prompts: Sequence[str], cfg: DecodeConfig | None = None,
                stop=None) -> Iterator[tuple[int, DecodeOutput]]:
    """Decode `prompts` with `members` (ModelSessions); yield (prompt index, output) as each finishes.

    `stop`: a function text -> cut index (or None), a stop string, or a list of stop strings.
    The arguments are checked when this is called (check_inputs), before any model work.
    """
    members, prompts, cfg, stop = check_inputs(method, members, prompts, cfg, stop)
    return _decode(method, members, prompts, cfg, stop)


@torch.inference_mode()  # no autograd graph: it would keep every step's cache alive
def _decode(method: str, members: list, prompts: list[str], cfg: DecodeConfig, stop) -> Iterator[tuple[int, DecodeOutput]]:
    """decode_iter's loop: per batch, one runtime per member, then the method's rounds;
    cfg.batches_in_flight batches at a time, taking turns."""
    with _older_objects_frozen():
        sessions = [members[cfg.member]] if method == "single" else list(members)
        stop_fn = make_stop(stop)
        reuse = Reuse()  # each finished batch's buffers wait for the next batch of its member
        batches = (_batch_rounds(method, sessions, prompts, range(start, min(start + cfg.batch_size, len(prompts))),
                                 cfg, stop_fn, reuse) for start in range(0, len(prompts), cfg.batch_size))
        try:
            yield from _in_turns(batches, cfg.batches_in_flight, sessions[0].device)
        finally:
            reuse.close()


def _batch_rounds(method: str, sessions: list, prompts: list[str], idx, cfg: DecodeConfig, stop_fn,
                  reuse: Reuse | None = None) -> Iterator:
    """One batch: a runtime per member (the prefill), then the method's rounds. Yields
    (prompt index, output) as each prompt finishes, and STEP after each step's forwards.
    At the end its members' caches go to `reuse`, for the next batch."""
    idx = list(idx)
    runtimes = [Runtime(s, [prompts[i] for i in idx], cfg,
                        get_backend(cfg.attention, s.device, s.model, len(idx)), reuse) for s in sessions]
    batch = Batch(idx, cfg, stop_fn, len(sessions))
    for item in ROUNDS[method](runtimes, batch, cfg):
        if item is not STEP:
            item[1].stats["method"] = method
            item[1].stats["members"] = [s.name for s in sessions]
        yield item
    for rt in runtimes:
        rt.release()


def _in_turns(batches: Iterator[Iterator], n: int, device) -> Iterator[tuple[int, DecodeOutput]]:
    """Up to n batches decoded at once, each running until its next STEP in turn: while the
    host does one batch's rounds, the GPU runs the forwards the others launched. On CUDA each
    batch queues its work on a stream of its own, so that a read of its results waits for its
    own forwards only. A batch computes what it would alone: answers do not depend on n."""
    cuda = torch.device(device).type == "cuda"
    free = [torch.cuda.Stream(device) if cuda and n > 1 else None for _ in range(n)]
    running: list = []  # [rounds, stream]

    def take_next() -> None:
        rounds = next(batches, None)
        if rounds is not None:
            running.append([rounds, free.pop()])

    for _ in range(n):
        take_next()
    while running:
        for turn in list(running):
            rounds, stream = turn
            done, out = False, []
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for item in rounds:  # until its next STEP
                    if item is STEP:
                        break
                    out.append(item)
                else:
                    done = True
            yield from out  # outside the stream: the caller's own GPU work stays on its stream
            if done:
                running.remove(turn)
                free.append(stream)
                take_next()


@contextlib.contextmanager
def _older_objects_frozen():
    """The objects alive before decoding (the members' modules, tokenizers and token tables:
    about 400k with the demo members) kept out of the cyclic collector while it runs. The
    rounds allocate fast, and each full collection would walk them all: three in a 64-prompt,
    256-token run, 0.7 s on the CPU (BENCHMARKS.md, engine v14). A caller that froze objects
    itself (gc.freeze) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def decode(method: str, members: Sequence, prompts: Sequence[str], cfg: DecodeConfig | None = None,
           stop=None) -> list[DecodeOutput]:
    """Like decode_iter, in prompt order."""
    members, prompts, cfg, stop = check_inputs(method, members, prompts, cfg, stop)
    outs: list = [None] * len(prompts)
    for i, out in _decode(method, members, prompts, cfg, stop):
        outs[i] = out
    return outs
