"""python -m adafuse_lab {models,run,eval,demo,bench,figures,tune,quality}

Each subcommand is registered by an ``add_X(subparsers)`` function that sets
``func`` on its parser. Subcommands that live in other modules (bench, figures)
expose ``add_parser(subparsers)`` and are registered when they import.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .runs import RunConfig, UsageError

# Modules that add their own subcommand through add_parser(subparsers).
PLUGINS = ("adafuse_lab.bench", "adafuse_lab.figures", "adafuse_lab.tune", "adafuse_lab.quality")

DEMO_MODELS = "qwen2.5-coder-0.5b,smollm2-135m"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error here
        if message.endswith("expected one argument"):  # `--theta -1e-9`: argparse took the value for an option
            message += " (a value that starts with '-', such as -1e-9 or -inf, is written --option=VALUE)"
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _number(text: str):
    """--M and --B: a whole number, or a fractional one that runs.validate rounds down with a warning."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    return int(value) if value.is_integer() else value


def parse_sets(items: list[str], given: dict | None = None) -> dict:
    """--set KEY=VALUE items -> {key: value}; a key given twice (or also as --theta, --M, --B,
    --criterion) is refused rather than silently replaced by the later value."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key in out:
            raise UsageError(f"--set names {key!r} twice ({key}={out[key]!r} and {item!r}); give it once")
        if key in (given or {}):
            raise UsageError(f"{key} is given twice (--{key} {given[key]} and --set {item}); give it once")
        out[key] = _parse_value(value)
    return out


def _parse_value(text: str):
    """--set values: JSON when it parses (0.5, true, null, [1, 2]), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- models

def add_models(sub) -> None:
    p = sub.add_parser("models", help="list, fetch or describe the real models of the zoo")
    msub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    msub.add_parser("list", help="every zoo model")
    for name in ("fetch", "info"):
        q = msub.add_parser(name, help=f"{name} one zoo model")
        q.add_argument("name")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> None:
    from . import zoo
    from .runs import check_cache
    check_cache(write=False)  # $ADAFUSE_CACHE is a folder; fetch checks that it can write when it must
    try:
        if args.action == "list":
            cols = ("name", "params", "quant", "licence", "cached")
            print(_table(cols, [[m.get(c, "") for c in cols] for m in zoo.list_models()]))
        elif args.action == "fetch":
            print(zoo.fetch(args.name))
        else:
            print(json.dumps(zoo.model_info(args.name), indent=2, default=str))
    except (ValueError, RuntimeError) as e:  # unknown name (with the closest ones), zoo.FetchError
        name = (getattr(args, "name", None) or "").strip()
        zoo_names = list(getattr(zoo, "MODELS", ()))
        if isinstance(e, ValueError) and name and name not in zoo_names:  # a member spec of another kind
            _not_a_zoo_name(name, args.action, zoo_names)
        raise UsageError(str(e)) from e


def _not_a_zoo_name(name: str, action: str, zoo_names: list[str]) -> None:
    """`models fetch/info` take a zoo name; a member spec of another kind (a tiny model, a local
    path, a hub id) is refused with what it is, not as an unknown name."""
    names = ", ".join(zoo_names)
    if name.startswith("tiny:"):
        raise UsageError(f"{name} is a built-in tiny test model, not a zoo model (it is never downloaded): give it "
                         f"to --models as it is; `models {action}` takes a zoo model ({names})")
    path = Path(name).expanduser()
    if path.exists() or name.endswith(".gguf") or name.startswith((".", "~", os.sep)):
        raise UsageError(f"{name} is a local path, not a zoo model: give it to --models as it is; `models {action}` "
                         f"takes a zoo model ({names})")
    if name.count("/") == 1:
        raise UsageError(f"{name} is a Hugging Face hub id, not a zoo model: give it to --models as it is (it is "
                         f"loaded from the hub); `models {action}` takes a zoo model ({names})")


# ---------------------------------------------------------------- run / demo

def _add_run_options(p, defaults: dict) -> None:
    a = p.add_argument
    a("--task", required="task" not in defaults, default=defaults.get("task"), help="task name, e.g. triviaqa")
    a("--models", required="models" not in defaults, default=defaults.get("models"),
      help="comma-separated member specs: zoo name, tiny:NAME, hub id, local dir")
    a("--method", default=defaults.get("method", "adafuse"), help="decoding method (default: %(default)s)")
    a("--limit", type=int, default=defaults.get("limit"), help="first N examples")
    a("--split", default="dev", choices=["dev", "test"],
      help="the data split: <data-dir>/<task>/<split>.jsonl (default: %(default)s)")
    a("--half", choices=["tune", "report"], help="only the first (tune) or second (report) half of the examples")
    a("--chat", action="store_true", help="give each member the prompt as a user turn of its chat template "
                                          "(default: the paper's plain text)")
    a("--out", required="out" not in defaults, default=defaults.get("out"), help="run directory")
    a("--source", default=defaults.get("source", "auto"), choices=["auto", "local", "hub", "sample"])
    a("--data-dir", help="local data folder laid out like shared/data")
    a("--batch-size", type=int, default=RunConfig.batch_size)
    a("--max-new-tokens", type=int, default=defaults.get("max_new_tokens", RunConfig.max_new_tokens))
    a("--seed", type=int, default=0)
    a("--device", help="cpu, cuda, cuda:1 ..., or auto: each member spread over every visible GPU "
                       "(default: cuda if available)")
    a("--dtype", help="bfloat16, float16, float32 (default: bf16 on CUDA, fp32 on CPU)")
    a("--theta", type=float, help="AdaFuse confidence threshold in [0, 1]")
    a("--M", type=_number, help="most words committed per round")
    a("--B", type=_number, help="branches when uncertain")
    a("--criterion", help="confidence criterion: margin, entropy or prob")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="any DecodeConfig field (repeatable)")
    a("--no-progress", action="store_true", help="no progress bar")


def _run_config(args) -> RunConfig:
    decode = {k: getattr(args, k) for k in ("theta", "M", "B", "criterion") if getattr(args, k) is not None}
    decode.update(parse_sets(args.set, given=decode))
    return RunConfig(task=args.task, models=args.models, method=args.method, limit=args.limit,
                     source=args.source, data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed,
                     max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype, decode=decode,
                     half=args.half, chat=args.chat, split=args.split)


def add_run(sub) -> None:
    p = sub.add_parser("run", help="decode a task with an ensemble into a run directory (resumable)")
    _add_run_options(p, {})
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> dict | None:
    from .runs import run, run_sharded, shard_from_env
    shard = shard_from_env()  # several processes: torchrun / accelerate launch
    if shard:
        res = run_sharded(_run_config(args), args.out, *shard, progress=not args.no_progress)
    else:
        res = run(_run_config(args), args.out, progress=not args.no_progress)
    if res is not None:
        print(json.dumps({"out": args.out, "split": (res.get("data") or {}).get("split", args.split),
                          "metrics": res["metrics"]}, indent=2, default=str))
    return res


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="a short AdaFuse run on embedded sample questions with two small real models")
    _add_run_options(p, {"task": "triviaqa", "models": DEMO_MODELS, "limit": 4, "out": "runs/demo",
                         "source": "sample", "max_new_tokens": 32})
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> None:
    from .runs import run, read_samples
    from pathlib import Path
    res = run(_run_config(args), args.out, progress=not args.no_progress)
    records = read_samples(Path(args.out) / "samples.jsonl")
    rows = [(r.get("question") or "", r["answer"] if r.get("answer") is not None else r["prediction"],
             " | ".join(map(str, (r.get("references") or [])[:3])), _correct(r.get("metrics") or {}))
            for r in records]
    print(_table(["question", "prediction", "gold", "correct"], rows))
    if res is not None:
        dc = res.get("decode_config") or {}
        print("\nscore: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in (res.get("metrics") or {}).items()))
        data = res.get("data") or {}
        print(f"settings: {res['method']} with {', '.join(res['models'])} on {res['task']} "
              f"({data.get('split', 'dev')} split, {data.get('source', args.source)}); theta {dc.get('theta')}, M {dc.get('M')}, "
              f"B {dc.get('B')}, criterion {dc.get('criterion')}, max_new_tokens {dc.get('max_new_tokens')}, "
              f"device {res.get('device')}")
    print(f"\nfull records: {args.out}/samples.jsonl, metrics: {args.out}/results.json")


def _correct(score: dict):
    """The task's headline per-example verdict, whichever name the scorer uses."""
    for k in ("correct", "lenient", "lenient_match", "exact_match", "em", "accuracy"):
        if k in score:
            return score[k]
    return next((v for v in score.values() if isinstance(v, (bool, int, float))), "")


def _table(head, rows, width=48) -> str:
    def cell(x):
        s = " ".join(str(x).split())  # one line per row: newlines and runs of spaces folded
        return s if len(s) <= width else s[:width - 1] + "…"
    rows = [list(map(cell, head))] + [list(map(cell, r)) for r in rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join([lines[0], "  ".join("-" * x for x in w)] + lines[1:])


# ---------------------------------------------------------------- eval

def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="re-score a run directory's predictions and compare with results.json")
    p.add_argument("dir")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> dict:
    from .runs import evaluate_dir
    res = evaluate_dir(args.dir)
    print(json.dumps(res["metrics"], indent=2, default=str))
    if res["matches_results"] is False:
        print("warning: these differ from results.json (scorer changed since the run?)", file=sys.stderr)
    return res


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m adafuse_lab", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (add_models, add_run, add_eval, add_demo):
        add(sub)
    for name in PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # not written yet
            raise
        mod.add_parser(sub)
    return parser


# A module that only an extra installs -> the extra that installs it.
EXTRAS = {"datasets": "hub", "huggingface_hub": "hub", "papermill": "notebooks", "nbformat": "notebooks",
          "nbclient": "notebooks", "jupyter_client": "notebooks", "ipykernel": "notebooks", "ipywidgets": "notebooks",
          "matplotlib": "notebooks", "seaborn": "notebooks", "pandas": "notebooks", "yaml": "notebooks",
          "langdetect": "analysis"}

# Base dependencies that the code imports by name where only a broken install lacks them.
BASE = {"gguf": "gguf>=0.10", "accelerate": "accelerate", "sacrebleu": "sacrebleu>=2.4", "tokenizers": "tokenizers",
        "safetensors": "safetensors", "tqdm": "tqdm", "transformers": "transformers"}

# Commands whose work resumes when they are run again after an interruption.
RESUMABLE = ("run", "demo", "tune", "quality", "figures")


def _user_errors() -> tuple:
    errs = [UsageError]
    for mod, name in (("adafuse_lab.tasks", "DataError"), ("adafuse_lab.tasks", "UnknownTaskError"),
                      ("adafuse_lab.decoding.config", "ConfigError")):
        try:
            errs.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):  # a module being rewritten must not hide the error itself
            pass
    return tuple(errs)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an error that ended a command: 2 for what the user
    can fix (bad input, a missing file or package), 1 for anything unexpected (a bug)."""
    if isinstance(e, _user_errors()):
        return _one_line(e) or type(e).__name__, 2
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in EXTRAS:
        mod = e.name.split(".")[0]
        extra = EXTRAS[mod]
        return (f"this needs the {mod} package, which the base install leaves out: pip install "
                f"'adafuse-lab[{extra}]' (from a checkout: pip install -e '.[{extra}]')"), 2
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in BASE:
        mod = e.name.split(".")[0]
        return (f"this needs the {mod} package, a base dependency of adafuse-lab that is not installed here: "
                f"pip install '{BASE[mod]}' (or reinstall adafuse-lab)"), 2
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({_one_line(e)}); save it as UTF-8", 2
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
            return f"{where}: {e.strerror}", 2
        return _one_line(e) or type(e).__name__, 2
    return (f"unexpected {type(e).__name__}: {_one_line(e)} (probably a bug: rerun with --debug for the "
            "traceback and report it)"), 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a scheduler or container stopping the job): the command ends as on
    Ctrl-C, with its one line and its files closed, instead of dying silently."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm():
    """Turn SIGTERM into Terminated while a command runs; returns the handler to restore (None:
    left alone, off the main thread or where someone else set a handler)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv=None) -> int:
    """Returns 0 on success. Any failure prints one line on stderr ("error: ...") and exits
    with status 2 (bad input, a missing file or package: the line says what to fix), 1 (an
    unexpected error) or 130 (Ctrl-C). --debug, anywhere on the line, raises instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the subcommand
    command = next((a for a in argv if not a.startswith("-")), "")
    from . import runs
    runs.defer_warnings()  # a command refused by a later check prints its one error line alone
    previous = _catch_sigterm()
    try:
        args = build_parser().parse_args([a for a in argv if a != "--debug"])
        args.func(args)
        runs.begin_work()  # warnings of a command that started no work of its own
    except SystemExit:
        runs.drop_warnings()
        raise
    except BrokenPipeError:  # stdout closed early (`adafuse-lab models list | head -1`): not an error of ours
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second complaint at exit
        except (OSError, ValueError):
            pass
        raise SystemExit(141) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        runs.drop_warnings()
        if debug:
            raise
        hint = ("rerun the same command to resume: finished work is kept" if command in RESUMABLE
                else "nothing was changed")
        term = isinstance(e, Terminated)
        print(f"error: {'terminated (SIGTERM)' if term else 'interrupted'}; {hint}", file=sys.stderr)
        raise SystemExit(143 if term else 130) from None
    except Exception as e:
        runs.drop_warnings()
        if debug:
            raise
        msg, code = describe(e)
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(code) from None
    finally:
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)
    return 0
