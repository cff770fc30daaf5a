"""Issue 22: every mistake a user can make is one line on stderr and exit status 2, and
nothing of theirs is created, changed or removed.

One table of bad inputs across run, demo, eval, models, tune, figures, quality and bench.
Each case runs the command line in-process in a sandbox folder (the current directory, the
model cache and the data all live there) and asserts: exit status 2, exactly one line on
stderr that starts with "error: " and names the cause, no traceback, and the same files with
the same sha256 (and the same folders) before and after. Tiny members only, nothing downloaded.
"""
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from adafuse_lab import runs
from adafuse_lab.cli import main

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "adafuse_lab" / "samples" / "triviaqa"
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA on a machine without it")

GOOD_ROWS = [{"question": f"What is {i} + {i}?", "answer": [str(2 * i)]} for i in range(4)]


# ---------------------------------------------------------------- the sandbox

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished tiny run, copied into every sandbox as S/run."""
    d = tmp_path_factory.mktemp("good") / "run"
    assert main(RUN(out=str(d))) == 0
    return d


@pytest.fixture
def sandbox(tmp_path, monkeypatch, good_run, capsys):
    s = tmp_path / "S"
    s.mkdir()
    shutil.copytree(good_run, s / "run")
    write_data(s / "data", GOOD_ROWS)
    (s / "afile.txt").write_text("a file, not a folder\n")
    (s / "emptydir").mkdir()
    (s / "foreign").mkdir()  # someone else's results, with names like ours
    (s / "foreign" / "samples.jsonl").write_text('{"id": 1, "theirs": true}\n')
    (s / "foreign" / "results.json").write_text('{"accuracy": 0.93}\n')
    (s / "notes").mkdir()
    (s / "notes" / "notes.txt").write_text("my notes\n")
    (s / "hfmodel").mkdir()  # a Hugging Face folder: its config.json is not a run config
    (s / "hfmodel" / "config.json").write_text('{"model_type": "llama"}\n')
    monkeypatch.chdir(s)
    monkeypatch.setenv("ADAFUSE_CACHE", str(s / "cache"))  # not there yet: must stay so
    monkeypatch.delenv("ADAFUSE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(runs, "_WARNED", set())
    capsys.readouterr()
    return s


def write_data(d: Path, rows, task="triviaqa", prompt: bytes | None = None) -> Path:
    (d / task).mkdir(parents=True, exist_ok=True)
    (d / task / "prompt.txt").write_bytes(prompt if prompt is not None else (SAMPLES / "prompt.txt").read_bytes())
    data = b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)
    (d / task / "dev.jsonl").write_bytes(data)
    return d / task / "dev.jsonl"


def tree(root: Path) -> dict:
    """Every file (sha256) and folder under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link to " + os.readlink(p)
                continue
            if not os.path.isfile(p):  # a named pipe: reading it would block
                out[os.path.relpath(p, root)] = "special"
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------- argv builders ("{S}" is the sandbox)

def _argv(command, base: dict, extra, over) -> list[str]:
    opts = dict(base)
    for k, v in over.items():
        key = "--" + k.replace("_", "-")
        if v is None:
            opts.pop(key, None)
        else:
            opts[key] = v
    argv = list(command)
    for k, v in opts.items():
        argv += [k, v]
    return argv + list(extra)


def RUN(*extra, **over):
    base = {"--task": "triviaqa", "--models": "tiny:bpe,tiny:spm", "--source": "sample", "--limit": "2",
            "--max-new-tokens": "4", "--out": "{S}/new"}
    return _argv(["run"], base, ("--no-progress",) + extra, over)


def TUNE(*extra, **over):
    base = {"--task": "triviaqa", "--models": "tiny:bpe,tiny:spm", "--source": "sample", "--limit": "4",
            "--max-new-tokens": "4", "--grid": "theta=0.5,0.9", "--out": "{S}/tune"}
    return _argv(["tune"], base, extra, over)


def QUALITY(*extra, **over):
    base = {"--models": "tiny:bpe,tiny:spm", "--tasks": "triviaqa", "--source": "sample", "--limit": "4",
            "--max-new-tokens": "4", "--work": "{S}/q"}
    return _argv(["quality"], base, extra, over)


def FIGURES(*extra, **over):
    base = {"--params": "smoke", "--out": "{S}/figs", "--work": "{S}/nbwork"}
    return _argv(["figures"], base, extra, over)


def BENCH(*extra, **over):
    base = {"--models": "tiny:bpe,tiny:spm", "--task": "triviaqa", "--source": "sample", "--limit": "2",
            "--batch-size": "2", "--max-new-tokens": "4", "--device": "cpu", "--out": "{S}/bench.json"}
    return _argv(["bench"], base, extra, over)


# ---------------------------------------------------------------- setups (run in the sandbox, before the snapshot)

def put(rel: str, data: bytes | str):
    def setup(s: Path, monkeypatch):
        p = s / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def data_with(*rows, prompt: bytes | None = None):
    def setup(s: Path, monkeypatch):
        write_data(s / "data", [GOOD_ROWS[0], *rows], prompt=prompt)
    return setup


def env(name: str, value: str):
    def setup(s: Path, monkeypatch):
        monkeypatch.setenv(name, value.replace("{S}", str(s)))
    return setup


def edit_run(fn):
    """Change S/run (a finished run) before the command runs."""
    def setup(s: Path, monkeypatch):
        fn(s / "run")
    return setup


def drop_last_record(d: Path):
    lines = (d / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (d / "samples.jsonl").write_bytes(b"".join(lines[:-1]))


def cut_last_record(d: Path):
    data = (d / "samples.jsonl").read_bytes()
    (d / "samples.jsonl").write_bytes(data[:-30])


def damage_first_record(d: Path):
    lines = (d / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (d / "samples.jsonl").write_bytes(b'{"id": "triviaqa-0000", "predic\n' + b"".join(lines[1:]))


def strip_prediction(d: Path):
    recs = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    recs[1].pop("prediction")
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


_held = []


def locked_run(s: Path, monkeypatch):
    """Another process holds S/run: an flock on S/run/.lock from another open file."""
    f = open(s / "run" / ".lock", "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(f)


def fifo(rel: str):
    """A named pipe where a file is expected (reading it would block forever)."""
    def setup(s: Path, monkeypatch):
        (s / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(s / rel)
    return setup


def mkdirs(*rels):
    def setup(s: Path, monkeypatch):
        for rel in rels:
            (s / rel).mkdir(parents=True, exist_ok=True)
    return setup


def chain(*setups):
    def setup(s: Path, monkeypatch):
        for one in setups:
            one(s, monkeypatch)
    return setup


def symlink(rel: str, target: str):
    def setup(s: Path, monkeypatch):
        os.symlink(s / target, s / rel)
    return setup


def records(body: str, config: str | None = None):
    """S/run with these samples.jsonl lines, no results.json (and another config.json)."""
    def fn(d: Path):
        (d / "samples.jsonl").write_text(body)
        (d / "results.json").unlink()
        if config is not None:
            (d / "config.json").write_text(config)
    return edit_run(fn)


def without(*modules):
    """These packages are not installed: importing them fails, find_spec finds nothing."""
    import importlib.util
    real = importlib.util.find_spec

    def setup(s: Path, monkeypatch):
        for m in modules:
            monkeypatch.setitem(__import__("sys").modules, m, None)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))
    return setup


def DEMO(*extra, **over):
    base = {"--models": "tiny:bpe,tiny:spm", "--out": "{S}/demo"}
    return _argv(["demo"], base, ("--no-progress",) + extra, over)


def params_for_first_notebook(values: dict):
    def setup(s: Path, monkeypatch):
        filled = {k: v.replace("{S}", str(s)) if isinstance(v, str) else v for k, v in values.items()}
        put("p.json", json.dumps({"notebooks": {NOTEBOOKS[0]: filled}}))(s, monkeypatch)
    return setup


# ---------------------------------------------------------------- the table: (id, argv, setup, needle)

CASES = [
    # ---- run: the task, the method, the members
    ("run-unknown-task", RUN(task="trivia"), None, "'triviaqa'"),
    ("run-unknown-method", RUN("--method", "adafus"), None, "did you mean 'adafuse'"),
    ("run-no-models", RUN(models=""), None, "no models given"),
    ("run-only-commas", RUN(models=",,"), None, "no models given"),
    ("run-unknown-tiny", RUN(models="tiny:xyz,tiny:bpe"), None, "unknown tiny model 'tiny:xyz'"),
    ("run-zoo-typo", RUN(models="smollm2,tiny:bpe"), None, "smollm2-135m"),
    ("run-missing-relative-path", RUN(models="./nope,tiny:bpe"), None, "model path './nope' does not exist"),
    ("run-missing-absolute-path", RUN(models="{S}/models/nope,tiny:bpe"), None, "does not exist"),
    ("run-missing-path-under-local-folder", RUN(models="emptydir/model,tiny:bpe"), None, "does not exist"),
    ("run-missing-gguf", RUN(models="missing.gguf,tiny:bpe"), None, "does not exist"),
    ("run-folder-without-model", RUN(models="{S}/emptydir,tiny:bpe"), None, "holds no model"),
    ("run-file-not-gguf", RUN(models="{S}/afile.txt,tiny:bpe"), None, "is a file but not a .gguf"),
    ("run-empty-gguf", RUN(models="{S}/m.gguf,tiny:bpe"), put("m.gguf", b""), "is not a GGUF file"),
    ("run-not-a-gguf", RUN(models="{S}/m.gguf,tiny:bpe"), put("m.gguf", b"PK\x03\x04" + b"\0" * 100),
     "is not a GGUF file"),
    ("run-gguf-cut-in-header", RUN(models="{S}/m.gguf,tiny:bpe"), put("m.gguf", b"GGUF\x03\0\0\0\x07"),
     "the GGUF weights do not read"),
    ("run-gguf-damaged-metadata", RUN(models="{S}/m.gguf,tiny:bpe"),
     put("m.gguf", b"GGUF\x03\0\0\0" + b"\x01\0\0\0\0\0\0\0" + b"\x01\0\0\0\0\0\0\0" + b"\xff" * 64),
     "the GGUF weights do not read"),
    ("run-zoo-cache-is-a-file", RUN(models="smollm2-135m,tiny:bpe"),
     put("cachefile", "x"), None),  # env set below
    ("run-chat-without-template", RUN("--chat"), None, "has no chat template"),
    # ---- run: numbers
    ("run-limit-0", RUN(limit="0"), None, "limit must be an integer >= 1"),
    ("run-limit-negative", RUN(limit="-3"), None, "limit must be an integer >= 1"),
    ("run-limit-not-a-number", RUN(limit="x"), None, "invalid int value"),
    ("run-batch-size-0", RUN("--batch-size", "0"), None, "batch_size must be an integer >= 1"),
    ("run-max-new-tokens-0", RUN(max_new_tokens="0"), None, "max_new_tokens must be an integer >= 1"),
    ("run-seed-negative", RUN("--seed", "-1"), None, "seed must be an integer in 0..4294967295"),
    ("run-seed-too-large", RUN("--seed", str(2 ** 32)), None, "seed must be an integer in 0..4294967295"),
    ("run-theta-above-1", RUN("--theta", "1.5"), None, "theta must be in [0, 1]"),
    ("run-theta-nan", RUN("--theta", "nan"), None, "theta must be a finite number"),
    ("run-M-0", RUN("--M", "0"), None, "M must be >= 1"),
    ("run-B-negative", RUN("--B", "-1"), None, "B must be >= 1"),
    ("run-M-not-a-number", RUN("--M", "x"), None, "invalid number"),
    ("run-criterion-unknown", RUN("--criterion", "margn"), None, "criterion must be one of"),
    # ---- run: --set
    ("set-unknown-key", RUN("--set", "thetta=0.5"), None, "did you mean theta"),
    ("set-no-equals", RUN("--set", "theta"), None, "--set expects KEY=VALUE"),
    ("set-no-key", RUN("--set", "=3"), None, "--set expects KEY=VALUE"),
    ("set-theta-text", RUN("--set", "theta=abc"), None, "theta must be a finite number, got 'abc'"),
    ("set-M-bool", RUN("--set", "M=true"), None, "M must be a whole number, got true"),
    ("set-M-null", RUN("--set", "M=null"), None, "M needs a value"),
    ("set-span-words-fraction", RUN("--set", "span_words=2.5"), None, "span_words must be a whole number"),
    ("set-flag-not-bool", RUN("--set", "compat=yes"), None, "compat must be true or false"),
    ("set-compile-not-bool", RUN("--set", "compile=1"), None, "compile must be true or false"),
    ("set-compat-field-not-bool", RUN("--set", "bare_cross_scoring=yes"), None,
     "bare_cross_scoring must be true or false, got 'yes'"),
    ("set-compat-field-number", RUN("--set", "official_text=1"), None, "official_text must be true or false, got 1"),
    ("set-span-length-0", RUN("--set", "span_length=0"), None, "span_length must be >= 1"),
    ("set-span-length-fraction", RUN("--set", "span_length=2.5"), None, "span_length must be a whole number"),
    ("set-max-span-rounds-negative", RUN("--set", "max_span_rounds=-1"), None, "max_span_rounds must be >= 0"),
    ("set-criterion-number", RUN("--set", "criterion=3"), None, "criterion must be a string"),
    ("set-weights-length", RUN("--set", "weights=[1]"), None, "weights has 1 value(s) for 2 member(s)"),
    ("set-weights-text", RUN("--set", "weights=abc"), None, "weights must be a list of numbers"),
    ("set-weights-mixed", RUN("--set", 'weights=[1, "a"]'), None, "weights must be a list of numbers"),
    ("set-weights-nan", RUN("--set", "weights=[1, NaN]"), None, "weights must be a list of numbers"),
    ("set-member-out-of-range", RUN("--method", "single", "--set", "member=2"), None, "member=2 does not exist"),
    ("set-member-negative", RUN("--method", "single", "--set", "member=-1"), None, "member=-1 does not exist"),
    ("set-run-option", RUN("--set", "max_new_tokens=5"), None, "is a run option: set it with --max-new-tokens"),
    # ---- run: device and dtype
    pytest.param("run-cuda-without-cuda", RUN("--device", "cuda"), None, "CUDA is not available", marks=NO_CUDA),
    pytest.param("run-cuda-7-without-cuda", RUN("--device", "cuda:7"), None, "CUDA is not available",
                 marks=NO_CUDA),
    ("run-unknown-device", RUN("--device", "tpu"), None, "unknown device 'tpu'"),
    ("run-dtype-int8", RUN("--dtype", "int8"), None, "unknown dtype 'int8'"),
    ("run-dtype-typo", RUN("--dtype", "bfloat61"), None, "did you mean 'bfloat16'"),
    # ---- run: data (an explicit folder is used or refused, never skipped for the samples)
    ("run-source-unknown", RUN(source="web"), None, "invalid choice: 'web'"),
    ("run-half-unknown", RUN("--half", "middle"), None, "invalid choice: 'middle'"),
    # ---- the split (issue 23): a wrong value or a missing split file, before anything is created
    ("run-split-unknown", RUN("--split", "tset"), None, "invalid choice: 'tset'"),
    ("run-split-train", RUN("--split", "train"), None, "invalid choice: 'train'"),
    ("run-split-test-of-samples", RUN("--split", "test"), None, "the embedded samples (--source sample) have only a "
                                                                 "dev split"),
    ("run-split-test-missing", RUN("--split", "test", source="local", data_dir="{S}/data"), None,
     "--data-dir {S}/data has no triviaqa/test.jsonl (no task folder in it holds a test.jsonl)"),
    ("run-split-test-missing-auto", RUN("--split", "test", source="auto", data_dir="{S}/data"), None,
     "has no triviaqa/test.jsonl"),
    ("run-split-test-other-task", RUN("--split", "test", source="local", data_dir="{S}/data", task="nq"),
     put("data/triviaqa/test.jsonl", json.dumps(GOOD_ROWS[0]) + "\n"), "has no nq/test.jsonl (it has triviaqa)"),
    ("run-split-test-env", RUN("--split", "test", source="auto"), env("ADAFUSE_DATA", "{S}/data"),
     "$ADAFUSE_DATA {S}/data has no triviaqa/test.jsonl"),
    ("run-split-test-nowhere", RUN("--split", "test", source="local"), None, "--split test: no triviaqa/test.jsonl in"),
    ("run-split-test-bad-json", RUN("--split", "test", source="local", data_dir="{S}/data"),
     put("data/triviaqa/test.jsonl", b'{"question": "q", "answer": ["a"]}\n{oops\n'), "test.jsonl:2: invalid JSON"),
    ("demo-split-unknown", ["demo", "--models", "tiny:bpe,tiny:spm", "--split", "dev2", "--out", "{S}/demo"], None,
     "invalid choice: 'dev2'"),
    ("demo-split-test-of-samples", ["demo", "--models", "tiny:bpe,tiny:spm", "--split", "test", "--out", "{S}/demo"],
     None, "have only a dev split"),
    ("tune-split-unknown", TUNE("--split", "tests"), None, "invalid choice: 'tests'"),
    ("tune-split-test-of-samples", TUNE("--split", "test"), None, "have only a dev split"),
    ("tune-split-test-missing", TUNE("--split", "test", source="local", data_dir="{S}/data"), None,
     "has no triviaqa/test.jsonl"),
    ("quality-split-unknown", QUALITY("--split", "Test"), None, "invalid choice: 'Test'"),
    ("quality-split-test-of-samples", QUALITY("--split", "test"), None, "have only a dev split"),
    ("quality-split-test-missing", QUALITY("--split", "test", source="local", data_dir="{S}/data"), None,
     "has no triviaqa/test.jsonl"),
    ("figures-params-split-unknown", FIGURES(params="{S}/p.json"), params_for_first_notebook({"split": "tst"}),
     "parameter split must be dev or test, got 'tst'"),
    ("figures-params-split-test-missing", FIGURES(params="{S}/p.json"),
     params_for_first_notebook({"split": "test", "source": "local", "data_dir": "{S}/data"}),
     "has no triviaqa/test.jsonl"),
    ("figures-plan-split-test-missing", FIGURES("--plan", params="{S}/p.json"),
     params_for_first_notebook({"split": "test", "source": "local", "data_dir": "{S}/data"}),
     "has no triviaqa/test.jsonl"),
    ("data-dir-missing-auto", RUN(source="auto", data_dir="{S}/dta"), None, "--data-dir"),
    ("data-dir-missing-local", RUN(source="local", data_dir="{S}/dta"), None, "does not exist"),
    ("data-dir-is-a-file", RUN(source="auto", data_dir="{S}/afile.txt"), None, "is a file"),
    ("data-dir-without-task", RUN(source="auto", data_dir="{S}/emptydir"), None, "has no triviaqa/dev.jsonl"),
    ("data-dir-with-source-sample", RUN(data_dir="{S}/data"), None, "--data-dir is not read with --source sample"),
    ("data-env-missing", RUN(source="auto"), env("ADAFUSE_DATA", "{S}/nothing"), "$ADAFUSE_DATA"),
    ("data-bad-json", RUN(source="local", data_dir="{S}/data"), data_with(b"{oops\n"),
     "dev.jsonl:2: invalid JSON"),
    ("data-not-utf8", RUN(source="local", data_dir="{S}/data"),
     data_with(b'{"question": "caf\xe9", "answer": ["x"]}\n'), "dev.jsonl:2: not UTF-8"),
    ("data-missing-field", RUN(source="local", data_dir="{S}/data"), data_with({"question": "q"}),
     "dev.jsonl:2: missing field 'answer'"),
    ("data-prompt-not-utf8", RUN(source="local", data_dir="{S}/data"), data_with(prompt=b"Answer \xff\n"),
     "prompt.txt: not UTF-8"),
    # ---- run: the output folder
    ("out-missing", RUN(out=None), None, "--out"),
    ("out-empty", RUN(out=""), None, "--out is empty"),
    ("out-is-a-file", RUN(out="{S}/afile.txt"), None, "is a file, not a folder"),
    ("out-under-a-file", RUN(out="{S}/afile.txt/run"), None, "is a file, so no folder can be made under it"),
    ("out-foreign-results", RUN(out="{S}/foreign"), None, "holds files adafuse_lab did not write"),
    ("out-foreign-notes", RUN(out="{S}/notes"), None, "holds files adafuse_lab did not write (notes.txt)"),
    ("out-hf-config", RUN(out="{S}/hfmodel"), None, "is not a run config"),
    ("out-broken-config", RUN(out="{S}/run"), edit_run(lambda d: (d / "config.json").write_text("{")),
     "does not read as JSON"),
    ("out-notes-in-our-run", RUN(out="{S}/run"), put("run/notes.txt", "mine"), "did not write (notes.txt)"),
    ("out-other-config", RUN("--method", "single", out="{S}/run"), None, "holds a run with a different config"),
    ("out-locked", RUN(out="{S}/run"), locked_run, "another process is writing"),
    ("run-unknown-option", RUN("--thta", "0.5"), None, "unrecognized arguments: --thta"),
    # ---- demo
    ("demo-limit-0", ["demo", "--models", "tiny:bpe,tiny:spm", "--limit", "0", "--out", "{S}/demo"], None,
     "limit must be"),
    ("demo-out-file", ["demo", "--models", "tiny:bpe,tiny:spm", "--out", "{S}/afile.txt"], None, "is a file"),
    # ---- eval
    ("eval-missing", ["eval", "{S}/nothing"], None, "does not exist"),
    ("eval-file", ["eval", "{S}/afile.txt"], None, "it is a file"),
    ("eval-empty-path", ["eval", ""], None, "empty path"),
    ("eval-no-config", ["eval", "{S}/emptydir"], None, "no config.json"),
    ("eval-config-bad-json", ["eval", "{S}/run"], edit_run(lambda d: (d / "config.json").write_text("{")),
     "config.json is not valid JSON"),
    ("eval-config-not-utf8", ["eval", "{S}/run"], edit_run(lambda d: (d / "config.json").write_bytes(b"\xff\xfe")),
     "config.json is not UTF-8"),
    ("eval-config-a-list", ["eval", "{S}/run"], edit_run(lambda d: (d / "config.json").write_text("[]")),
     "is not a run config"),
    ("eval-config-unknown-task", ["eval", "{S}/run"],
     edit_run(lambda d: (d / "config.json").write_text('{"task": "nope", "models": [], "method": "x"}')),
     "unknown task 'nope'"),
    ("eval-no-samples", ["eval", "{S}/run"], edit_run(lambda d: (d / "samples.jsonl").unlink()),
     "has no samples.jsonl"),
    ("eval-empty-samples", ["eval", "{S}/run"], edit_run(lambda d: (d / "samples.jsonl").write_text("")),
     "has no finished examples"),
    ("eval-damaged-record", ["eval", "{S}/run"], edit_run(damage_first_record), "samples.jsonl:1: not a JSON record"),
    ("eval-cut-last-record", ["eval", "{S}/run"], edit_run(cut_last_record), "the last record is cut off"),
    ("eval-record-without-prediction", ["eval", "{S}/run"], edit_run(strip_prediction),
     "samples.jsonl:2: the record has no prediction"),
    ("eval-record-dropped", ["eval", "{S}/run"], edit_run(drop_last_record),
     "holds 1 records but results.json counts 2"),
    ("eval-samples-not-utf8", ["eval", "{S}/run"],
     edit_run(lambda d: (d / "samples.jsonl").write_bytes(b'{"id": "\xff"}\n')), "samples.jsonl:1: not UTF-8"),
    ("eval-results-bad-json", ["eval", "{S}/run"], edit_run(lambda d: (d / "results.json").write_text("{\n")),
     "results.json is not valid JSON"),
    ("eval-no-dir", ["eval"], None, "the following arguments are required: dir"),
    # ---- models
    ("models-info-typo", ["models", "info", "smollm2"], None, "Did you mean smollm2-135m"),
    ("models-fetch-unknown", ["models", "fetch", "llama-70b"], None, "unknown model 'llama-70b'"),
    ("models-fetch-cache-is-a-file", ["models", "fetch", "smollm2-135m"], None, "is not a folder"),
    ("models-list-cache-is-a-file", ["models", "list"], None, "is not a folder"),
    ("models-no-action", ["models"], None, "required: action"),
    ("models-unknown-action", ["models", "download", "x"], None, "invalid choice: 'download'"),
    # ---- tune: the grid and the output folder, before any run
    ("tune-no-grid", TUNE(grid=None), None, "give at least one --grid"),
    ("tune-grid-no-equals", TUNE(grid="theta"), None, "--grid expects KEY=V1,V2"),
    ("tune-grid-no-values", TUNE(grid="theta="), None, "--grid expects KEY=V1,V2"),
    ("tune-grid-unknown-key", TUNE(grid="thetta=0.5,0.9"), None, "unknown decoding parameter 'thetta'"),
    ("tune-grid-out-of-range", TUNE(grid="theta=0.5,1.5"), None, "theta must be in [0, 1]"),
    ("tune-grid-not-a-number", TUNE(grid="B=1,x"), None, "B must be a whole number, got 'x'"),
    ("tune-grid-twice", TUNE("--grid", "theta=0.7"), None, "--grid names 'theta' twice"),
    ("tune-grid-run-option", TUNE(grid="limit=1,2"), None, "is a run option"),
    ("tune-out-empty", TUNE(out=""), None, "--out is empty"),
    ("tune-out-file", TUNE(out="{S}/afile.txt"), None, "is a file, not a folder"),
    ("tune-out-foreign", TUNE(out="{S}/notes"), None, "holds files adafuse_lab did not write"),
    ("tune-n-boot-0", TUNE("--n-boot", "0"), None, "--n-boot must be >= 1"),
    ("tune-unknown-task", TUNE(task="gsm8"), None, "'gsm8k'"),
    ("tune-bad-member", TUNE(models="tiny:bpe,./nope"), None, "does not exist"),
    ("tune-data-dir-missing", TUNE(source="auto", data_dir="{S}/dta"), None, "--data-dir"),
    # ---- figures: the parameter file and the folders, before any notebook runs
    ("figures-params-missing", FIGURES(params="nope"), None, "no parameter file 'nope'"),
    ("figures-params-bad-yaml", FIGURES(params="{S}/p.yaml"), put("p.yaml", "common: [1, 2\n"), "not valid YAML"),
    ("figures-params-bad-json", FIGURES(params="{S}/p.json"), put("p.json", "{"), "not valid JSON"),
    ("figures-params-not-utf8", FIGURES(params="{S}/p.yaml"), put("p.yaml", b"common:\n  x: \xff\n"), "not UTF-8"),
    ("figures-params-a-list", FIGURES(params="{S}/p.json"), put("p.json", "[1, 2]"), "expected a mapping"),
    ("figures-params-section-a-list", FIGURES(params="{S}/p.json"), put("p.json", '{"common": [1]}'),
     "must map parameter names to values"),
    ("figures-params-unknown-section", FIGURES(params="{S}/p.json"), put("p.json", '{"comon": {}}'),
     "unknown section(s) comon"),
    ("figures-params-a-folder", FIGURES(params="{S}/emptydir"), None, "is a folder"),
    ("figures-params-sets-a-path", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"fig_dir": "x"}}'),
     "set by the figures command"),
    ("figures-params-unknown-parameter", FIGURES(params="{S}/p.json"), params_for_first_notebook({"nope": 1}),
     "has no parameter(s) nope"),
    ("figures-only-no-match", FIGURES("--only", "zz"), None, "--only zz matches none"),
    ("figures-notebooks-missing", FIGURES("--notebooks", "{S}/emptydir"), None, "no numbered notebooks"),
    ("figures-retries-negative", FIGURES("--retries", "-1"), None, "--retries must be >= 0"),
    ("figures-cell-timeout-0", FIGURES("--cell-timeout", "0"), None, "--cell-timeout must be"),
    ("figures-out-file", FIGURES(out="{S}/afile.txt"), None, "is a file"),
    ("figures-work-file", FIGURES(work="{S}/afile.txt"), None, "is a file"),
    # ---- quality: every task, member, method, grid point and folder, before any step
    ("quality-unknown-step", QUALITY("--steps", "plan,decod"), None, "unknown step(s) decod"),
    ("quality-limits-no-equals", QUALITY("--limits", "triviaqa"), None, "--limits expects TASK=N"),
    ("quality-limits-not-a-count", QUALITY("--limits", "triviaqa=x"), None, "is not a count or 'all'"),
    ("quality-limits-unknown-task", QUALITY("--limits", "trivia=all"), None, "trivia"),
    ("quality-grid-no-equals", QUALITY("--grid", "theta"), None, "--grid expects KEY=V1,V2"),
    ("quality-grid-out-of-range", QUALITY("--grid", "theta=2"), None, "theta must be in [0, 1]"),
    ("quality-bad-member", QUALITY(models="tiny:nope,tiny:bpe"), None, "unknown tiny model"),
    ("quality-unknown-method", QUALITY("--methods", "single,adafus"), None, "unknown method 'adafus'"),
    ("quality-dtype", QUALITY("--dtype", "int8"), None, "unknown dtype 'int8'"),
    ("quality-work-file", QUALITY(work="{S}/afile.txt"), None, "is a file, not a folder"),
    ("quality-work-empty", QUALITY(work=""), None, "--work is empty"),
    ("quality-work-foreign", QUALITY(work="{S}/notes"), None, "holds files adafuse_lab did not write"),
    ("quality-limit-0", QUALITY(limit="0"), None, "limit must be >= 1"),
    ("quality-n-boot-0", QUALITY("--n-boot", "0"), None, "--n-boot must be >= 1"),
    ("quality-gpus-not-numbers", QUALITY("--gpus", "a,b"), None, "--gpus expects GPU numbers"),
    ("quality-data-dir-missing", QUALITY(source="local", data_dir="{S}/dta"), None, "does not exist"),
    # ---- bench: the same checks as run, before a model loads
    ("bench-unknown-member", BENCH(models="tiny:nope"), None, "unknown tiny model"),
    ("bench-unknown-method", BENCH("--method", "adafuse,rerank,unit"), None, "unknown method 'unit'"),
    ("bench-limit-0", BENCH(limit="0"), None, "limit must be"),
    ("bench-set-out-of-range", BENCH("--set", "theta=2"), None, "theta must be in [0, 1]"),
    ("bench-set-no-equals", BENCH("--set", "theta"), None, "--set expects KEY=VALUE"),
    ("bench-out-folder", BENCH(out="{S}/emptydir"), None, "is a folder"),
    pytest.param("bench-cuda-without-cuda", BENCH(device="cuda"), None, "CUDA is not available", marks=NO_CUDA),
    # ---------------- added by the second round of issue 22 (robust22): cases the first table lacked
    # run: a value given twice is refused, never silently replaced by the later one
    ("run-theta-and-set-theta", RUN("--theta", "0.5", "--set", "theta=0.6"), None,
     "theta is given twice (--theta 0.5 and --set theta=0.6)"),
    ("run-set-twice", RUN("--set", "B=2", "--set", "B=3"), None, "--set names 'B' twice"),
    # run: a fractional M or B that rounds to 0 is one error line, not a warning and an error
    ("run-M-fraction-below-1", RUN("--M", "0.5"), None, "M must be >= 1, got 0.5 (a fractional M is rounded down)"),
    ("set-B-fraction-below-1", RUN("--set", "B=0.9"), None, "B must be >= 1, got 0.9"),
    ("run-M-infinite", RUN("--M", "inf"), None, "M must be a whole number, got Infinity"),
    ("run-max-new-tokens-huge", RUN(max_new_tokens=str(10 ** 20)), None, "max_new_tokens must be at most 1048576"),
    ("run-batch-size-negative", RUN("--batch-size", "-2"), None, "batch_size must be an integer >= 1, got -2"),
    ("run-limit-fraction", RUN(limit="1.5"), None, "invalid int value: '1.5'"),
    ("run-half-of-one-example", RUN("--half", "tune", limit="1"), None, "the 'tune' half of 1 example(s) is empty"),
    # run: the new --set fields (official_gating, span_length, max_span_rounds, ...)
    ("set-official-gating-number", RUN("--set", "official_gating=1"), None, "official_gating must be true or false, got 1"),
    ("set-official-gating-word", RUN("--set", "official_gating=on"), None, "official_gating must be true or false, got 'on'"),
    ("set-greedy-word2-number", RUN("--set", "greedy_word2=2"), None, "greedy_word2 must be true or false, got 2"),
    ("set-lookahead-list", RUN("--set", "lookahead_scoring=[true]"), None, "lookahead_scoring must be true or false"),
    ("set-span-length-text", RUN("--set", 'span_length="3"'), None, "span_length must be a whole number, got '3'"),
    ("set-span-length-bool", RUN("--set", "span_length=true"), None, "span_length must be a whole number, got true"),
    ("set-span-length-negative", RUN("--set", "span_length=-2"), None, "span_length must be >= 1, got -2"),
    ("set-max-span-rounds-fraction", RUN("--set", "max_span_rounds=2.5"), None,
     "max_span_rounds must be a whole number, got 2.5"),
    ("set-max-span-rounds-word", RUN("--set", "max_span_rounds=five"), None, "max_span_rounds must be a whole number"),
    ("set-compat-null", RUN("--set", "compat=null"), None, "compat needs a value, got null"),
    ("set-batches-in-flight-0", RUN("--set", "batches_in_flight=0"), None, "batches_in_flight must be a whole number >= 1, got 0"),
    ("set-batches-in-flight-fraction", RUN("--set", "batches_in_flight=1.5"), None,
     "batches_in_flight must be a whole number, got 1.5"),
    ("set-attention-unknown", RUN("--set", "attention=flash"), None, "attention must be one of"),
    ("set-threshold-typo", RUN("--set", "threshold=dynamc"), None, "threshold must be one of"),
    ("set-dyn-quantile-1", RUN("--set", "dyn_quantile=1"), None, "dyn_quantile must be in (0, 1)"),
    ("set-gac-threshold-2", RUN("--set", "gac_threshold=2"), None, "gac_threshold must be in [0, 1]"),
    ("set-weights-infinite", RUN("--set", "weights=[1, Infinity]"), None, "weights must be a list of numbers"),
    ("set-weights-bools", RUN("--set", "weights=[true, false]"), None, "weights must be a list of numbers"),
    ("set-member-fraction", RUN("--method", "single", "--set", "member=0.5"), None, "member must be a whole number"),
    ("set-seed", RUN("--set", "seed=3"), None, "is a run option: set it with --seed"),
    # run: members, device, dtype
    ("run-model-folder-with-damaged-gguf", RUN(models="{S}/zm,tiny:bpe"), put("zm/model.gguf", b"junk" * 10),
     "zm/model.gguf: not a GGUF file"),
    ("run-gguf-only-its-magic", RUN(models="{S}/m.gguf,tiny:bpe"), put("m.gguf", b"GGUF"), "the GGUF weights do not read"),
    ("run-gguf-unknown-version", RUN(models="{S}/m.gguf,tiny:bpe"), put("m.gguf", b"GGUF\x63\0\0\0" + b"\0" * 16),
     "is GGUF v99"),
    ("run-hf-folder-broken-config", RUN(models="{S}/hfm,tiny:bpe"),
     chain(put("hfm/config.json", "{"), put("hfm/model.safetensors", b"xx")), "could not load model"),
    ("run-gguf-named-folder", RUN(models="{S}/x.gguf,tiny:bpe"), mkdirs("x.gguf"), "holds no model"),
    ("run-current-folder-as-model", RUN(models=".,tiny:bpe"), None, "model folder '.' holds no model"),
    ("run-home-path-missing", RUN(models="~/no_such_model_22,tiny:bpe"), None, "does not exist"),
    ("run-random-unknown-arch", RUN(models="random:nope,tiny:bpe"), None, "unknown architecture 'nope'"),
    ("run-zoo-cache-under-a-file", RUN(models="smollm2-135m,tiny:bpe"), env("ADAFUSE_CACHE", "{S}/afile.txt/cache"),
     "afile.txt is a file"),
    ("run-device-empty", RUN("--device", ""), None, "unknown device ''"),
    ("run-device-meta", RUN("--device", "meta"), None, "--device meta: not available here"),
    ("run-device-auto-without-accelerate", RUN("--device", "auto"), without("accelerate"),
     "--device auto needs the accelerate package, a base dependency"),
    ("run-source-hub-without-datasets", RUN(source="hub"), without("datasets"), "pip install 'adafuse-lab[hub]'"),
    ("run-dtype-empty", RUN("--dtype", ""), None, "unknown dtype ''"),
    # run: --split, --half, --source values
    ("run-split-empty", RUN("--split", ""), None, "invalid choice: ''"),
    ("run-split-upper-case", RUN("--split", "DEV"), None, "invalid choice: 'DEV'"),
    ("run-split-validation", RUN("--split", "validation"), None, "invalid choice: 'validation'"),
    ("run-half-empty", RUN("--half", ""), None, "invalid choice: ''"),
    # run: data files
    ("data-dir-empty", RUN(source="local", data_dir=""), None, "--data-dir is empty"),
    ("data-split-file-is-a-folder", RUN(source="local", data_dir="{S}/d2"), mkdirs("d2/triviaqa/dev.jsonl"),
     "triviaqa/dev.jsonl is a folder, not a data file"),
    ("data-empty-file", RUN(source="local", data_dir="{S}/d2"),
     chain(put("d2/triviaqa/dev.jsonl", ""), put("d2/triviaqa/prompt.txt", "P")), "dev.jsonl holds no examples"),
    ("data-only-demo-questions", RUN(source="local", data_dir="{S}/data"),
     lambda s, mp: write_data(s / "data", [{"question": "Which British king married Mary of Teck?",
                                            "answer": ["George V"]}]), "(all 1 repeat a few-shot demo question"),
    ("data-prompt-is-a-folder", RUN(source="local", data_dir="{S}/d2"),
     chain(put("d2/triviaqa/dev.jsonl", json.dumps(GOOD_ROWS[0]) + "\n"), mkdirs("d2/triviaqa/prompt.txt")),
     "prompt.txt is not a file"),
    ("data-row-a-list", RUN(source="local", data_dir="{S}/data"), data_with(b"[1, 2]\n"),
     "dev.jsonl:2: expected a JSON object, got list"),
    ("data-question-null", RUN(source="local", data_dir="{S}/data"), data_with({"question": None, "answer": ["a"]}),
     "dev.jsonl:2: 'question' must be a string"),
    ("data-answer-empty-list", RUN(source="local", data_dir="{S}/data"), data_with({"question": "q", "answer": []}),
     "dev.jsonl:2: 'answer' must be a non-empty list of strings"),
    ("data-utf8-bom", RUN(source="local", data_dir="{S}/data"),
     data_with(b'\xef\xbb\xbf{"question": "q", "answer": ["a"]}\n'), "dev.jsonl:2: invalid JSON"),
    ("data-utf16", RUN(source="local", data_dir="{S}/data"),
     lambda s, mp: write_data(s / "data", [json.dumps(GOOD_ROWS[0]).encode("utf-16")]), "dev.jsonl:1: not UTF-8"),
    ("data-gsm8k-answer-without-number", RUN(source="local", data_dir="{S}/data", task="gsm8k"),
     put("data/gsm8k/dev.jsonl", json.dumps({"question": "q", "answer": "no number"}) + "\n"),
     "gsm8k/dev.jsonl:1: no number in the gold answer"),
    ("data-env-is-a-file", RUN(source="auto"), env("ADAFUSE_DATA", "{S}/afile.txt"), "$ADAFUSE_DATA"),
    ("data-env-blank", RUN(source="local"), env("ADAFUSE_DATA", " "), "$ADAFUSE_DATA is empty"),
    # run: the output folder
    ("out-blank", RUN(out="   "), None, "--out is empty"),
    ("out-current-folder", RUN(out="."), None, "holds files adafuse_lab did not write"),
    ("out-link-to-a-file", RUN(out="{S}/lnk"), symlink("lnk", "afile.txt"), "is a file, not a folder"),
    ("out-broken-link", RUN(out="{S}/lnk"), symlink("lnk", "nowhere"), "is a broken symbolic link"),
    ("out-only-samples", RUN(out="{S}/os"), put("os/samples.jsonl", "{}\n"), "did not write (samples.jsonl)"),
    ("out-hidden-file", RUN(out="{S}/hid"), put("hid/.gitignore", "*"), "did not write (.gitignore)"),
    ("out-results-is-a-folder", RUN(out="{S}/run"),
     edit_run(lambda d: ((d / "results.json").unlink(), (d / "results.json").mkdir())), "holds a folder results.json"),
    ("out-samples-is-a-folder", RUN(out="{S}/run"),
     edit_run(lambda d: ((d / "samples.jsonl").unlink(), (d / "samples.jsonl").mkdir())), "holds a folder samples.jsonl"),
    ("out-config-not-utf8", RUN(out="{S}/run"), edit_run(lambda d: (d / "config.json").write_bytes(b"\xff\xfe")),
     "config.json does not read as JSON"),
    ("out-subfolder-in-our-run", RUN(out="{S}/run"), mkdirs("run/sub"), "did not write (sub)"),
    ("out-inside-a-run", RUN(out="{S}/run/inner"), None, "is inside the run directory"),
    # demo
    ("demo-out-empty", DEMO(out=""), None, "--out is empty"),
    ("demo-out-foreign", DEMO(out="{S}/notes"), None, "holds files adafuse_lab did not write"),
    ("demo-method-typo", DEMO("--method", "unit"), None, "did you mean 'unite'"),
    ("demo-M-0", DEMO("--M", "0"), None, "M must be >= 1"),
    ("demo-official-gating-word", DEMO("--set", "official_gating=maybe"), None, "official_gating must be true or false"),
    ("demo-data-dir-with-samples", DEMO("--data-dir", "{S}/data"), None, "--data-dir is not read with --source sample"),
    pytest.param("demo-cuda-without-cuda", DEMO("--device", "cuda"), None, "CUDA is not available", marks=NO_CUDA),
    # eval: corrupt run files, each named with its line
    ("eval-config-a-folder", ["eval", "{S}/cf"], mkdirs("cf/config.json"), "config.json is a folder"),
    ("eval-config-task-a-number", ["eval", "{S}/run"], edit_run(lambda d: (d / "config.json").write_text('{"task": 5}')),
     "is not a run config (no task)"),
    ("eval-hf-model-folder", ["eval", "{S}/hfmodel"], None, "is not a run config"),
    ("eval-samples-a-folder", ["eval", "{S}/run"],
     edit_run(lambda d: ((d / "samples.jsonl").unlink(), (d / "samples.jsonl").mkdir())), "is a folder, not the run's records"),
    ("eval-record-a-list", ["eval", "{S}/run"], records("[1, 2]\n"), "samples.jsonl:1: the record has no id"),
    ("eval-record-id-a-list", ["eval", "{S}/run"], records('{"id": [1], "prediction": "x", "references": ["x"]}\n'),
     "samples.jsonl:1: 'id' must be a string or an integer"),
    ("eval-record-references-numbers", ["eval", "{S}/run"],
     records('{"id": "a", "prediction": "x", "references": [1, null]}\n'),
     "samples.jsonl:1: 'references' must be a list of strings"),
    ("eval-record-meta-a-list", ["eval", "{S}/run"],
     records('{"id": "a", "prediction": "x", "references": ["x"], "meta": [1]}\n'), "'meta' an object"),
    ("eval-record-prediction-a-number", ["eval", "{S}/run"],
     records('{"id": "a", "prediction": 5, "references": ["x"]}\n'), "samples.jsonl:1: 'prediction' must be a string"),
    ("eval-record-twice", ["eval", "{S}/run"],
     edit_run(lambda d: (d / "samples.jsonl").write_bytes((d / "samples.jsonl").read_bytes().splitlines(True)[0] * 2)),
     "samples.jsonl:2: example 'triviaqa-0000' is recorded twice"),
    ("eval-nul-bytes", ["eval", "{S}/run"], records("\0" * 20 + "\n"), "samples.jsonl:1: not a JSON record"),
    ("eval-records-of-another-task", ["eval", "{S}/run"],
     records('{"id": "a", "prediction": "x", "references": ["x"]}\n{"id": "b", "prediction": "x", "references": ["x", "y"]}\n',
             '{"task": "flores_en-de", "models": ["tiny:bpe"], "method": "single"}'),
     "do not score together as flores_en-de"),
    ("eval-results-a-list", ["eval", "{S}/run"], edit_run(lambda d: (d / "results.json").write_text("[]")),
     "results.json is not a results file"),
    ("eval-results-count-a-string", ["eval", "{S}/run"],
     edit_run(lambda d: (d / "results.json").write_text('{"n_examples": "2", "metrics": 5}')), "is not a results file"),
    ("eval-results-not-utf8", ["eval", "{S}/run"], edit_run(lambda d: (d / "results.json").write_bytes(b"\xff")),
     "results.json is not UTF-8"),
    ("eval-two-folders", ["eval", "{S}/run", "{S}/run"], None, "unrecognized arguments"),
    ("eval-blank-path", ["eval", "  "], None, "empty path"),
    # models
    ("models-fetch-empty-name", ["models", "fetch", ""], None, "unknown model ''"),
    ("models-info-tiny", ["models", "info", "tiny:bpe"], None, "tiny:bpe is a built-in tiny test model, not a zoo model"),
    ("models-list-extra-argument", ["models", "list", "x"], None, "unrecognized arguments: x"),
    ("models-cache-under-a-file", ["models", "list"], env("ADAFUSE_CACHE", "{S}/afile.txt/c"), "afile.txt is a file"),
    ("models-info-cache-is-a-file", ["models", "info", "smollm2-135m"], env("ADAFUSE_CACHE", "{S}/afile.txt"),
     "is not a folder"),
    # tune
    ("tune-grid-empty-value", TUNE(grid="theta=0.5,,0.7"), None, "has an empty value"),
    ("tune-grid-weights-length", TUNE(grid="weights=[0.6,0.4,0.1],[0.5,0.5]"), None, "weights has 3 value(s) for 2"),
    ("tune-grid-official-gating-word", TUNE(grid="official_gating=yes,no"), None, "official_gating must be true or false"),
    ("tune-grid-span-length-0", TUNE(grid="span_length=0,2"), None, "span_length must be >= 1"),
    ("tune-grid-max-span-rounds-negative", TUNE(grid="max_span_rounds=-1,2"), None, "max_span_rounds must be >= 0"),
    ("tune-grid-M-fraction-below-1", TUNE(grid="M=0.5,2"), None, "M must be >= 1, got 0.5"),
    ("tune-grid-member", TUNE(grid="member=5"), None, "member=5 does not exist"),
    ("tune-out-a-run", TUNE(out="{S}/run"), None, "holds files adafuse_lab did not write"),
    ("tune-out-inside-a-run", TUNE(out="{S}/run/t"), None, "is inside the run directory"),
    ("tune-limit-1", TUNE(limit="1"), None, "the 'tune' half of 1 example(s) is empty"),
    ("tune-dtype", TUNE("--dtype", "fp8"), None, "unknown dtype 'fp8'"),
    pytest.param("tune-cuda-without-cuda", TUNE("--device", "cuda"), None, "CUDA is not available", marks=NO_CUDA),
    ("tune-data-not-utf8", TUNE(source="local", data_dir="{S}/data"),
     data_with(b'{"question": "caf\xe9", "answer": ["x"]}\n'), "dev.jsonl:2: not UTF-8"),
    # figures
    ("figures-params-empty", FIGURES(params=""), None, "--params is empty"),
    ("figures-params-unknown-notebook", FIGURES(params="{S}/p.json"), put("p.json", '{"notebooks": {"99_nope": {}}}'),
     "notebooks.99_nope names no notebook"),
    ("figures-params-misspelt-notebook", FIGURES(params="{S}/p.json"),
     put("p.json", json.dumps({"notebooks": {NOTEBOOKS[0][:-1]: {"limit": 2}}})), f"(did you mean {NOTEBOOKS[0]!r}?)"),
    ("figures-params-unknown-member", FIGURES(params="{S}/p.json"), params_for_first_notebook({"models": "tiny:nope"}),
     "unknown tiny model 'tiny:nope'"),
    ("figures-params-missing-data-dir", FIGURES(params="{S}/p.json"),
     params_for_first_notebook({"source": "local", "data_dir": "{S}/nodata"}), "does not exist"),
    ("figures-params-bad-limit", FIGURES(params="{S}/p.json"), params_for_first_notebook({"limit": "lots"}),
     "parameter limit must be >= 1 or 'all'"),
    ("figures-params-yaml-tab", FIGURES(params="{S}/p.yaml"), put("p.yaml", "common:\n\tlimit: 2\n"), "not valid YAML"),
    ("figures-params-json-null", FIGURES(params="{S}/p.json"), put("p.json", "null"), "expected a mapping"),
    ("figures-params-json-bom", FIGURES(params="{S}/p.json"), put("p.json", b'\xef\xbb\xbf{"common": {}}'), "not valid JSON"),
    ("figures-only-one-typo", FIGURES("--only", "00,zz"), None, "--only zz matches none"),
    ("figures-only-commas", FIGURES("--only", ","), None, "--only is empty"),
    ("figures-kernel-missing", FIGURES("--kernel", "nokernel", "--only", "00"), None, "no such Jupyter kernel"),
    ("figures-out-empty", FIGURES(out=""), None, "--out is empty"),
    ("figures-out-inside-a-run", FIGURES(out="{S}/run/figs"), None, "is inside the run directory"),
    ("figures-cell-timeout-nan", FIGURES("--cell-timeout", "nan"), None, "--cell-timeout must be"),
    ("figures-without-papermill", FIGURES("--only", "00"), without("papermill"), "pip install 'adafuse-lab[notebooks]'"),
    ("figures-plan-without-papermill", FIGURES("--plan", "--only", "00"), without("papermill"), "[notebooks]"),
    ("figures-decode-missing-plan", FIGURES("--decode", "{S}/plan.jsonl"), None, "no plan file"),
    ("figures-decode-bad-line", FIGURES("--decode", "{S}/plan.jsonl"), put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"]}\n{oops\n'),
     "plan.jsonl:2: not a plan file"),
    ("figures-decode-not-utf8", FIGURES("--decode", "{S}/plan.jsonl"), put("plan.jsonl", b'{"task": "\xff"}\n'),
     "plan.jsonl: not UTF-8"),
    ("figures-decode-models-a-number", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": 5}\n'), "plan.jsonl:1: not a plan file"),
    ("figures-decode-unknown-task", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "trivia", "models": ["tiny:bpe"]}\n'), "run 1 (trivia adafuse): unknown task"),
    ("figures-decode-unknown-member", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:nope"], "source": "sample"}\n'), "unknown tiny model"),
    ("figures-decode-bad-second-plan", FIGURES("--decode", "{S}/plan.jsonl", "{S}/plan2.jsonl"),
     chain(put("plan.jsonl", json.dumps({"task": "triviaqa", "models": ["tiny:bpe", "tiny:spm"], "source": "sample",
                                         "limit": 1, "max_new_tokens": 2}) + "\n"),
           put("plan2.jsonl", '{"task": "nq", "models": ["tiny:bpe"], "method": "adafus"}\n')),
     "plan2.jsonl: run 1 (nq adafus): unknown method 'adafus'"),
    # quality
    ("quality-tasks-empty", QUALITY(tasks=""), None, "--tasks is empty"),
    ("quality-tasks-commas", QUALITY(tasks=",,"), None, "--tasks is empty"),
    ("quality-methods-empty", QUALITY("--methods", ""), None, "--methods is empty"),
    ("quality-steps-empty", QUALITY("--steps", ""), None, "--steps is empty"),
    ("quality-decode-without-plan", QUALITY("--steps", "decode"), None, "add the plan step"),
    ("quality-limits-twice", QUALITY("--limits", "triviaqa=2", "--limits", "triviaqa=3"), None,
     "--limits names 'triviaqa' twice"),
    ("quality-limits-negative", QUALITY("--limits", "triviaqa=-1"), None, "limits['triviaqa'] must be None or >= 1"),
    ("quality-grid-official-gating-number", QUALITY("--grid", "official_gating=1"), None,
     "official_gating must be true or false, got 1"),
    ("quality-batch-size-0", QUALITY("--batch-size", "0"), None, "batch_size must be >= 1"),
    ("quality-gpus-empty", QUALITY("--gpus", ""), None, "--gpus expects GPU numbers"),
    pytest.param("quality-gpus-without-cuda", QUALITY("--gpus", "0"), None, "no CUDA GPU is visible", marks=NO_CUDA),
    ("quality-work-a-run", QUALITY(work="{S}/run"), None, "holds files adafuse_lab did not write"),
    ("quality-work-inside-a-run", QUALITY(work="{S}/run/q"), None, "is inside the run directory"),
    ("quality-without-papermill", QUALITY(), without("papermill"), "pip install 'adafuse-lab[notebooks]'"),
    # bench
    ("bench-attention-unknown", BENCH("--attention", "flash"), None, "invalid choice: 'flash'"),
    ("bench-attention-twice", BENCH("--attention", "reference", "--set", "attention=sdpa_gqa"), None,
     "attention is given twice"),
    ("bench-set-twice", BENCH("--set", "theta=0.5", "--set", "theta=0.6"), None, "--set names 'theta' twice"),
    ("bench-set-official-gating-word", BENCH("--set", "official_gating=yes"), None, "official_gating must be true or false"),
    ("bench-set-span-length-0", BENCH("--set", "span_length=0"), None, "span_length must be >= 1"),
    ("bench-set-max-span-rounds-fraction", BENCH("--set", "max_span_rounds=1.5"), None, "must be a whole number"),
    ("bench-set-batches-in-flight-negative", BENCH("--set", "batches_in_flight=-2"), None,
     "batches_in_flight must be a whole number >= 1, got -2"),
    ("bench-out-someone-elses-file", BENCH(out="{S}/afile.txt"), None, "exists and is not a bench result"),
    ("bench-out-someone-elses-json", BENCH(out="{S}/foreign/results.json"), None, "is not a bench result"),
    ("bench-out-empty", BENCH(out=""), None, "--out is empty"),
    ("bench-out-under-a-file", BENCH(out="{S}/afile.txt/x.json"), None, "is not a writable folder"),
    ("bench-method-commas", BENCH("--method", ",,"), None, "--method is empty"),
    ("bench-profile-only-alone", BENCH("--profile-only"), None, "--profile-only times nothing by itself"),
    ("bench-data-dir-missing", BENCH(source="local", data_dir="{S}/dta"), None, "does not exist"),
    ("bench-models-missing-path", BENCH(models="./nope"), None, "does not exist"),
    ("bench-max-new-tokens-huge", BENCH(max_new_tokens=str(10 ** 7)), None, "max_new_tokens must be at most"),
    # models fetch/info: a member spec of another kind is named for what it is
    ("models-fetch-tiny", ["models", "fetch", "tiny:spm"], None, "tiny:spm is a built-in tiny test model"),
    ("models-fetch-local-gguf", ["models", "fetch", "./m.gguf"], None, "./m.gguf is a local path, not a zoo model"),
    ("models-fetch-local-folder", ["models", "fetch", "hfmodel"], None, "hfmodel is a local path, not a zoo model"),
    ("models-fetch-hub-id", ["models", "fetch", "Qwen/Qwen2.5-0.5B"], None, "is a Hugging Face hub id, not a zoo model"),
    # work and figure folders hold only what we write: one foreign file among ours is refused
    ("tune-out-ours-and-foreign", TUNE(out="{S}/tw"), chain(mkdirs("tw/runs"), put("tw/notes.txt", "mine")),
     "holds files adafuse_lab did not write (notes.txt)"),
    ("quality-work-ours-and-foreign", QUALITY(work="{S}/qw"), chain(put("qw/plan.jsonl", ""), put("qw/data.csv", "1")),
     "holds files adafuse_lab did not write (data.csv)"),
    ("figures-out-foreign", FIGURES(out="{S}/notes"), None, "--out {S}/notes holds files adafuse_lab did not write"),
    ("figures-out-figures-and-foreign", FIGURES(out="{S}/figs"),
     chain(put("figs/00_quickstart_rounds.png", "png"), put("figs/paper.tex", "tex")),
     "holds files adafuse_lab did not write (paper.tex)"),
    ("figures-work-foreign", FIGURES(work="{S}/foreign"), None, "--work {S}/foreign holds files adafuse_lab did not write"),
    ("figures-plan-work-foreign", FIGURES("--plan", work="{S}/notes"), None, "holds files adafuse_lab did not write"),
    ("figures-decode-work-foreign", FIGURES("--decode", "{S}/plan.jsonl", work="{S}/notes"),
     put("plan.jsonl", ""), "holds files adafuse_lab did not write"),
    # loading a GGUF (every zoo model) needs gguf and accelerate: a broken base install is named, before anything
    ("run-zoo-without-accelerate", RUN(models="smollm2-135m,tiny:bpe"), without("accelerate"),
     "smollm2-135m: loading a GGUF model needs the accelerate package, a base dependency"),
    ("run-gguf-without-gguf", RUN(models="{S}/m.gguf,tiny:bpe"), chain(put("m.gguf", b"GGUF\x03\0\0\0"), without("gguf")),
     "needs the gguf package, a base dependency of adafuse-lab"),
    ("bench-zoo-without-accelerate", BENCH(models="smollm2-135m,tiny:bpe"), without("accelerate"),
     "needs the accelerate package"),
    # a warning (degenerate ensemble, fractional M) waits until the command is checked: a refusal stays one line
    ("run-warned-then-out-a-file", RUN("--M", "2.5", models="tiny:bpe", out="{S}/afile.txt"), None,
     "is a file, not a folder"),
    ("run-warned-then-other-config", RUN("--set", "weights=[0, 0]", out="{S}/run"), None,
     "holds a run with a different config"),
    ("demo-warned-then-out-foreign", DEMO(models="tiny:bpe,tiny:bpe", out="{S}/notes"), None,
     "holds files adafuse_lab did not write"),
    ("tune-warned-then-out-foreign", TUNE(models="tiny:bpe,tiny:bpe", out="{S}/notes"), None,
     "holds files adafuse_lab did not write"),
    ("bench-warned-then-out-a-folder", BENCH(models="tiny:bpe", out="{S}/emptydir"), None, "is a folder"),
    ("run-auto-source-then-no-examples", RUN(source="auto", data_dir="{S}/data"), put("data/triviaqa/dev.jsonl", ""),
     "dev.jsonl holds no examples"),
    # quality --steps decode reads an existing plan: every run of it is checked before a worker starts
    ("quality-decode-plan-bad-json", QUALITY("--steps", "decode"), put("q/plan.jsonl", "{oops\n"),
     "plan.jsonl:1: not a plan file"),
    ("quality-decode-plan-not-utf8", QUALITY("--steps", "decode"), put("q/plan.jsonl", b"\xff\xfe\n"),
     "plan.jsonl: not UTF-8 text"),
    ("quality-decode-plan-unknown-member", QUALITY("--steps", "decode"),
     put("q/plan.jsonl", '{"task": "triviaqa", "models": ["tiny:nope"], "source": "sample"}\n'),
     "run 1 (triviaqa adafuse): unknown tiny model 'tiny:nope'"),
    ("set-sweetspan-words-0", RUN("--set", "sweetspan_words=0"), None, "sweetspan_words must be >= 1, got 0"),
    ("tune-grid-sweetspan-words-negative", TUNE(grid="sweetspan_words=-1,3"), None, "sweetspan_words must be >= 1"),
    # a named pipe where a file is expected is refused, not read (it would block)
    ("figures-params-a-pipe", FIGURES(params="{S}/p.yaml"), fifo("p.yaml"), "is not a regular file"),
    ("data-file-a-pipe", RUN(source="local", data_dir="{S}/pd"), fifo("pd/triviaqa/dev.jsonl"),
     "dev.jsonl is not a regular file, not a data file"),
    # a plan or parameter file of the wrong types: one line naming the field, status 2 (was: "unexpected
    # TypeError ... probably a bug", status 1), and a word where true/false is meant is refused, not read as true
    ("figures-decode-task-a-number", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": 5, "models": ["tiny:bpe"]}\n'), "plan.jsonl:1: not a plan file (task must be a string, got 5)"),
    ("figures-decode-method-null", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"], "method": null}\n'), "method must be a string, got null"),
    ("figures-decode-data-dir-a-number", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"], "source": "local", "data_dir": 5}\n'),
     "data_dir must be a string or null, got 5"),
    ("figures-decode-chat-a-word", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"], "source": "sample", "chat": "no"}\n'),
     "chat must be true, false or null, got 'no'"),
    ("figures-decode-decode-a-list", FIGURES("--decode", "{S}/plan.jsonl"),
     put("plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"], "source": "sample", "decode": [["theta", 0.5]]}\n'),
     "decode must be a mapping of names to values"),
    ("quality-decode-plan-source-null", QUALITY("--steps", "decode"),
     put("q/plan.jsonl", '{"task": "triviaqa", "models": ["tiny:bpe"], "source": null}\n'), "source must be a string, got null"),
    ("figures-params-models-a-number", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"models": 5}}'),
     "parameter models must be a list (or a comma-separated string), got 5"),
    ("figures-params-task-a-number", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"task": 5}}'),
     "parameter task must be a string or null, got 5"),
    ("figures-params-max-new-tokens-text", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"max_new_tokens": "8"}}'),
     "parameter max_new_tokens must be a whole number, got '8'"),
    ("figures-params-theta-a-word", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"theta": "high"}}'),
     "parameter theta must be a finite number, got 'high'"),
    ("figures-params-M-null", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"M": null}}'),
     "parameter M must be a whole number, got null"),
    ("figures-params-limits-a-list", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"limits": [1]}}'),
     "parameter limits must be a mapping"),
    ("figures-params-launch-a-word", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"launch": "no"}}'),
     "parameter launch must be true or false, got 'no'"),
    ("figures-params-n-boot-fraction", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"n_boot": 1.5}}'),
     "parameter n_boot must be a whole number, got 1.5"),
    ("figures-params-thetas-words", FIGURES(params="{S}/p.json"), put("p.json", '{"common": {"thetas": "a,b"}}'),
     "parameter thetas must be a list of numbers, got 'a'"),
    ("figures-params-B-values-fraction", FIGURES(params="{S}/p.json"),
     put("p.json", '{"notebooks": {"03_diversity_ablations": {"B_values": [1, 2.5]}}}'),
     "parameter B_values must be a list of whole numbers, got 2.5"),
    # a negative value in exponent form reads as an option to argparse: the line says how to write it
    ("run-theta-negative-exponent", RUN("--theta", "-1e-9"), None,
     "--theta: expected one argument (a value that starts with '-', such as -1e-9 or -inf, is written --option=VALUE)"),
    ("run-B-minus-inf", RUN("--B", "-inf"), None, "is written --option=VALUE"),
    ("run-theta-negative-exponent-with-equals", RUN("--theta=-1e-9"), None, "theta must be in [0, 1]"),
    # the top level
    ("no-command", [], None, "required: command"),
    ("unknown-command", ["rn"], None, "invalid choice: 'rn'"),
]

# cases whose environment needs more than a file: the zoo cache is a file
CACHE_IS_A_FILE = {"run-zoo-cache-is-a-file", "models-fetch-cache-is-a-file", "models-list-cache-is-a-file"}
NEEDLES = {"run-zoo-cache-is-a-file": "is not a folder"}


def _unpack(case):
    return case.values if hasattr(case, "values") else case


def test_the_table_is_large_enough():
    ids = [_unpack(c)[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    commands = {_unpack(c)[1][0] for c in CASES if _unpack(c)[1]}
    assert commands >= {"run", "demo", "eval", "models", "tune", "figures", "quality", "bench"}


@pytest.mark.parametrize("name, argv, setup, needle", CASES, ids=[_unpack(c)[0] for c in CASES])
def test_bad_input(name, argv, setup, needle, sandbox, monkeypatch, capsys):
    if setup is not None:
        setup(sandbox, monkeypatch)
    if name in CACHE_IS_A_FILE:
        (sandbox / "cachefile").write_text("x")
        monkeypatch.setenv("ADAFUSE_CACHE", str(sandbox / "cachefile"))
    needle = (needle or NEEDLES[name]).replace("{S}", str(sandbox))
    argv = [a.replace("{S}", str(sandbox)) for a in argv]
    before = tree(sandbox)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            main(argv)
    finally:
        while _held:
            _held.pop().close()
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert tree(sandbox) == before  # nothing created, changed or removed


def test_debug_shows_the_traceback(sandbox):
    with pytest.raises(runs.UsageError, match="does not exist"):
        main(RUN("--debug", source="auto", data_dir=str(sandbox / "dta")))


def test_a_mistyped_data_dir_never_decodes_the_samples(sandbox, capsys):
    """The issue's case: --data-dir with a typo used to decode the 8 embedded questions."""
    argv = [a.replace("{S}", str(sandbox)) for a in RUN(source="auto", data_dir="{S}/dat")]
    with pytest.raises(SystemExit):
        main(argv)
    assert not (sandbox / "new").exists() and "does not exist" in capsys.readouterr().err
    assert main([a.replace("{S}", str(sandbox)) for a in RUN(source="auto", data_dir="{S}/data")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"data: triviaqa from local ({sandbox / 'data' / 'triviaqa' / 'dev.jsonl'}), " \
                                  "chosen by --source auto"
    assert json.loads((sandbox / "new" / "results.json").read_text())["data"]["source"] == "local"


def test_a_missing_base_dependency_is_named():
    """A broken install that lacks a base dependency (gguf, accelerate) says which one, exit 2."""
    from adafuse_lab.cli import describe
    for mod in ("gguf", "accelerate"):
        msg, code = describe(ModuleNotFoundError(f"No module named {mod!r}", name=mod))
        assert code == 2 and f"needs the {mod} package, a base dependency" in msg and "pip install" in msg
