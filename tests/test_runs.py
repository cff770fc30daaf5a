"""Run directories: files and fields, eval, resume, refusals (tiny members, CPU)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adafuse_lab import runs
from adafuse_lab.runs import RunConfig, UsageError, evaluate_dir, run

REPO = Path(__file__).resolve().parent.parent


def cfg(**kw):
    base = dict(task="triviaqa", models=("tiny:char", "tiny:bpe"), method="single", limit=4,
                source="sample", max_new_tokens=12, batch_size=2)
    return RunConfig(**{**base, **kw})


def lines(path):
    return Path(path).read_bytes().decode().splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted adafuse run that other tests compare with."""
    out = tmp_path_factory.mktemp("ref")
    c = cfg(method="adafuse", limit=3, max_new_tokens=8)
    return c, out, run(c, out, progress=False)


def test_run_writes_files_with_fields(reference):
    c, out, res = reference
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "results.json", "samples.jsonl"]
    assert json.loads((out / "config.json").read_text()) == c.to_dict()
    recs = [json.loads(x) for x in lines(out / "samples.jsonl")]
    assert [r["id"] for r in recs] == [f"triviaqa-{i:04d}" for i in range(3)]
    for r in recs:
        assert {"id", "prompt_sha256", "prediction", "answer", "references", "metrics", "stats", "trace"} <= set(r)
        assert set(r["metrics"]) == {"exact_match", "f1", "lenient"}
        assert r["stats"]["tokens"] and r["trace"]  # adafuse records its rounds
        assert not any("time" in k or k.endswith("_s") for k in r["stats"])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["metrics"]["n"] == 3 and set(on_disk["metrics"]) >= {"exact_match", "f1", "lenient"}
    assert on_disk["config"] == c.to_dict()
    assert set(on_disk["versions"]) >= {"python", "torch", "transformers", "adafuse_lab"}
    assert on_disk["device"].startswith("cpu") and on_disk["attention"] == "sdpa_gqa"
    assert "attention" not in on_disk["config"]  # run directories keep their names whichever path decoded
    assert set(on_disk["timings"]) >= {"wall_s", "load_s", "per_example_s"}
    assert on_disk["seeds"]["torch"] == 0 and on_disk["data"]["source"] == "sample"


def test_eval_reproduces_metrics(reference):
    _, out, res = reference
    ev = evaluate_dir(out)
    assert ev["metrics"] == res["metrics"] and ev["matches_results"] is True


@pytest.mark.parametrize("task", ["gsm8k", "flores_en-de"])
def test_eval_reproduces_other_scorers(task, tmp_path, monkeypatch):
    real = runs._load_members

    def long_context(c, sessions=None):  # the GSM8K few-shot prompt is longer than a tiny member's 2048 positions
        members = real(c, sessions)
        for m in members:
            m.model.config.max_position_embeddings = 8192
        return members

    monkeypatch.setattr(runs, "_load_members", long_context)
    res = run(cfg(task=task, models=("tiny:bpe",), limit=2, max_new_tokens=4), tmp_path, progress=False)
    ev = evaluate_dir(tmp_path)
    assert ev["matches_results"] is True and ev["metrics"] == res["metrics"]


def test_rerun_of_finished_dir_decodes_nothing(tmp_path, monkeypatch):
    c = cfg()
    first = run(c, tmp_path, progress=False)
    before = (tmp_path / "samples.jsonl").read_bytes()
    monkeypatch.setattr(runs, "_load_members", lambda cfg, sessions=None: pytest.fail("nothing left to decode"))
    res = run(c, tmp_path, progress=False)
    assert (tmp_path / "samples.jsonl").read_bytes() == before
    assert res["timings"] == first["timings"] and res["device"] == first["device"]  # the real ones are kept


def test_resume_after_truncated_line_is_identical(tmp_path):
    c = cfg()
    run(c, tmp_path, progress=False)
    full = (tmp_path / "samples.jsonl").read_bytes()
    first, second = full.split(b"\n")[:2]
    (tmp_path / "samples.jsonl").write_bytes(first + b"\n" + second[: len(second) // 2])  # killed mid-write
    (tmp_path / "results.json").unlink()
    res = run(c, tmp_path, progress=False)
    assert (tmp_path / "samples.jsonl").read_bytes() == full
    assert res["timings"]["n_resumed"] == 1


@pytest.mark.parametrize("first, then", [(1, 1), (2, 2), (2, 1), (1, 3)])
def test_resume_after_exception_mid_batch_is_identical(reference, tmp_path, monkeypatch, first, then):
    """Stopped after one answer (with two batches in flight: while both were), then resumed,
    with the same or another number of batches in flight: the bytes of the uninterrupted run
    (2 in flight, the default)."""
    c, ref, _ = reference
    with_n = lambda n: RunConfig(**{**c.to_dict(), "decode": {"batches_in_flight": n}})
    c = with_n(first)
    real, seen = runs._decode_iter, []

    def interrupted(*a, **kw):
        for item in real(*a, **kw):
            if len(seen) == 1:  # the first batch is half done
                raise KeyboardInterrupt
            seen.append(item)
            yield item

    monkeypatch.setattr(runs, "_decode_iter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path, progress=False)
    assert len(lines(tmp_path / "samples.jsonl")) == 1 and not (tmp_path / "results.json").exists()
    monkeypatch.setattr(runs, "_decode_iter", real)
    run(with_n(then), tmp_path, progress=False)
    assert (tmp_path / "samples.jsonl").read_bytes() == (ref / "samples.jsonl").read_bytes()


@pytest.mark.parametrize("n", [2, 3])
def test_batches_in_flight_give_the_samples_of_one_batch_at_a_time(reference, tmp_path, n):
    """A run with n batches in flight decodes them together (2 of 2 prompts and the last
    short one of 1 here) and writes the bytes of the one-at-a-time run."""
    c, ref, _ = reference
    run(RunConfig(**{**c.to_dict(), "decode": {"batches_in_flight": n}}), tmp_path, progress=False)
    assert (tmp_path / "samples.jsonl").read_bytes() == (ref / "samples.jsonl").read_bytes()


def test_different_config_is_refused_naming_keys(tmp_path):
    run(cfg(), tmp_path, progress=False)
    with pytest.raises(UsageError, match=r"max_new_tokens: 12 -> 8; method: 'single' -> 'adafuse'"):
        run(cfg(method="adafuse", max_new_tokens=8), tmp_path, progress=False)
    with pytest.raises(UsageError, match=r"decode\.theta"):
        run(cfg(decode={"theta": 0.5}), tmp_path, progress=False)
    run(cfg(batch_size=3), tmp_path, progress=False)  # speed-only key: accepted


@pytest.mark.parametrize("kw, msg", [
    (dict(decode={"theta": 1.5}), "theta must be in"),
    (dict(decode={"B": 0}), "B must be >= 1"),
    (dict(decode={"M": 0}), "M must be >= 1"),
    (dict(limit=0), "limit must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(task="triviaq"), "triviaqa"),
    (dict(method="adafus"), "adafuse"),
    (dict(models=("tiny:chr",)), "tiny:char"),
    (dict(models=("no-such-model",)), "unknown model"),
    (dict(decode={"thetta": 0.5}), "theta"),
    (dict(decode={"seed": 1}), "run option"),
])
def test_bad_config_refused_before_writing(tmp_path, kw, msg):
    with pytest.raises(UsageError, match=msg):
        run(cfg(**kw), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, msg", [
    (dict(task=5), "task must be a string, got 5"),
    (dict(method=None), "method must be a string, got null"),
    (dict(models=("tiny:bpe", 5)), "models must be a list of strings"),
    (dict(models=None), "models must be a list of strings"),
    (dict(chat="no"), "chat must be true, false or null, got 'no'"),  # was: read as true, chat on
    (dict(decode="theta=0.5"), "decode must be a mapping"),
    (dict(limit="2"), "limit must be a whole number or null, got '2'"),
    (dict(source=None), "source must be a string, got null"),
    (dict(data_dir=5), "data_dir must be a string or null, got 5"),
])
def test_wrong_field_types_are_refused_by_name(kw, msg):
    """Python API, plan files: each field of the wrong type is a UsageError naming it, not a
    TypeError or AttributeError from deep inside, and never a value silently read another way."""
    with pytest.raises(UsageError, match=msg):
        cfg(**kw)


def test_a_path_data_dir_is_kept_as_a_string():
    assert cfg(data_dir=Path("/some/where"), source="local").data_dir == "/some/where"


def test_prompt_longer_than_context(tmp_path, monkeypatch):
    real = runs._load_members

    def short_context(c, sessions=None):
        members = real(c, sessions)
        members[1].model.config.max_position_embeddings = 64
        return members

    monkeypatch.setattr(runs, "_load_members", short_context)
    with pytest.raises(UsageError, match=r"example 'triviaqa-0000': prompt is \d+ tokens but tiny:bpe has a context of 64"):
        run(cfg(), tmp_path, progress=False)
    assert not (tmp_path / "samples.jsonl").exists()


@pytest.mark.parametrize("ok_fsyncs", [0, 2])  # 0: the atomic rewrite fails; 2: an append fails
def test_disk_full_gives_clear_error_and_keeps_files(tmp_path, monkeypatch, ok_fsyncs):
    c = cfg(limit=2)
    run(c, tmp_path, progress=False)
    (tmp_path / "samples.jsonl").write_bytes(lines(tmp_path / "samples.jsonl")[0].encode() + b"\n")
    (tmp_path / "results.json").unlink()
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > ok_fsyncs:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    with pytest.raises(UsageError, match="disk full while writing .*samples.jsonl"):
        run(c, tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept  # no .tmp left, nothing half-written
    monkeypatch.setattr(runs.os, "fsync", real)
    assert run(c, tmp_path, progress=False)["timings"]["n_resumed"] == 1


def test_read_samples_drops_partial_and_duplicate_lines(tmp_path):
    p = tmp_path / "samples.jsonl"
    p.write_bytes(b'{"id": "a"}\nnot json\n{"id": "a", "x": 1}\n{"id": "b"}\n{"id": "c"')
    assert runs.read_samples(p) == [{"id": "a"}, {"id": "b"}]


def test_read_samples_reads_committed_xz_records(tmp_path):
    import lzma
    p = tmp_path / "samples.jsonl.xz"
    p.write_bytes(lzma.compress(b'{"id": "a"}\n{"id": "b", "x": [1]}\n'))
    assert runs.read_samples(p) == [{"id": "a"}, {"id": "b", "x": [1]}]


def test_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path):
    args = ["--task", "triviaqa", "--models", "tiny:char,tiny:bpe", "--method", "single", "--limit", "4",
            "--source", "sample", "--max-new-tokens", "16", "--batch-size", "1", "--no-progress"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run(RunConfig(task="triviaqa", models=("tiny:char", "tiny:bpe"), method="single", limit=4,
                  source="sample", max_new_tokens=16, batch_size=1), ref, progress=False)
    cmd = [sys.executable, "-m", "adafuse_lab", "run", *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples, deadline = out / "samples.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= samples.read_bytes().count(b"\n") < 4 and not (out / "results.json").exists()
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    ids = [json.loads(x)["id"] for x in lines(samples)]
    assert ids == [f"triviaqa-{i:04d}" for i in range(4)]
    assert samples.read_bytes() == (ref / "samples.jsonl").read_bytes()
    assert json.loads((out / "results.json").read_text())["metrics"] == \
        json.loads((ref / "results.json").read_text())["metrics"]


# ---- several processes (one per GPU): shards by batch, merged into one run directory

def test_sharded_run_merges_into_the_one_process_run(tmp_path):
    c = cfg(method="adafuse", limit=5, max_new_tokens=8, batch_size=2)
    one, two = tmp_path / "one", tmp_path / "two"
    single = run(c, one, progress=False)
    assert runs.run_sharded(c, two, 1, 2, progress=False) is None  # rank 1 only decodes its shard
    merged = runs.run_sharded(c, two, 0, 2, progress=False, poll_s=0.01)
    ids = [json.loads(x)["id"] for x in lines(one / "samples.jsonl")]
    shard_ids = [[json.loads(x)["id"] for x in lines(two / "shards" / str(r) / "samples.jsonl")] for r in (0, 1)]
    assert shard_ids == [ids[0:2] + ids[4:5], ids[2:4]]  # whole batches, alternating
    for name in ("samples.jsonl", "config.json"):
        assert (two / name).read_bytes() == (one / name).read_bytes()
    assert merged["metrics"] == single["metrics"] and merged["n_examples"] == 5
    assert len(merged["timings"]["shards"]) == 2 and len(merged["device"]) == 2
    spans = [t["decode_unix"] for t in merged["timings"]["shards"]]  # rank 1 decoded before rank 0 began
    assert spans[1][1] <= spans[0][0] and merged["timings"]["decode_span_s"] == pytest.approx(
        spans[0][1] - spans[1][0], abs=2e-3)
    assert evaluate_dir(two)["matches_results"]


def test_more_processes_than_gpus_share_them(tmp_path, monkeypatch):
    """Rank r runs on GPU LOCAL_RANK modulo the GPUs there are, so that several processes can
    share one GPU (one's rounds on the host while another's forwards run)."""
    import torch
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runs, "run", lambda c, out, **kw: seen.append(c.device))
    for local in (1, 2, 3):  # rank 0 would wait for the shards' results
        monkeypatch.setenv("LOCAL_RANK", str(local))
        assert runs.run_sharded(cfg(), tmp_path, local, 4, progress=False) is None
    assert seen == ["cuda:1", "cuda:0", "cuda:1"]


def test_sharded_run_under_torchrun(tmp_path):
    """The command line notices torchrun's environment; rank 0 prints the merged metrics."""
    args = ["--task", "triviaqa", "--models", "tiny:char,tiny:bpe", "--method", "coolfusion", "--limit", "3",
            "--source", "sample", "--max-new-tokens", "6", "--batch-size", "1", "--no-progress"]
    ref = run(cfg(method="coolfusion", limit=3, max_new_tokens=6, batch_size=1), tmp_path / "ref", progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "adafuse_lab", "run", *args, "--out", str(tmp_path / "two")]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert all(lines(tmp_path / "two" / "shards" / r / "samples.jsonl") for r in ("0", "1"))
    assert (tmp_path / "two" / "samples.jsonl").read_bytes() == (tmp_path / "ref" / "samples.jsonl").read_bytes()
    assert '"metrics"' in p.stdout and json.loads((tmp_path / "two" / "results.json").read_text())["metrics"] == \
        ref["metrics"]


def test_shard_rank_out_of_range(tmp_path):
    with pytest.raises(UsageError, match="rank 2"):
        runs.run_sharded(cfg(), tmp_path, 2, 2, progress=False)


# ---------------------------------------------------------------- chat prompts

def _with_template(monkeypatch, template):
    from adafuse_lab import tiny
    real = tiny.make_tokenizer

    def templated(name):
        tok = real(name)
        tok.chat_template = template
        return tok

    monkeypatch.setattr(tiny, "make_tokenizer", templated)


def test_chat_config_is_recorded_only_when_on():
    assert "chat" not in cfg().to_dict() and "chat" not in cfg(chat=False).to_dict()  # earlier run dirs keep their names
    assert cfg(chat=True).to_dict()["chat"] is True


def test_chat_prompt_is_one_user_turn_of_each_members_template(monkeypatch):
    from adafuse_lab.tiny import make_tiny
    _with_template(monkeypatch, "<u>{{ messages[0]['content'] }}</u>{% if add_generation_prompt %}A:{% endif %}")
    for name in ("tiny:char", "tiny:spm"):  # spm prepends BOS to plain prompts; a template writes its own
        s = make_tiny(name)
        assert s.as_chat().encode_prompt("hi") == s.encode("<u>hi</u>A:")
        assert s.as_chat().model is s.model and not s.chat  # a view: the model is shared, the member unchanged


def test_prompt_is_tokenized_once_per_session(monkeypatch):
    """encode_prompt keeps a prompt's ids: each call hands out an equal, independent list, the
    chat view keeps its own, and a decode (its input checks, then each member) tokenizes each
    prompt once per member."""
    from adafuse_lab.decoding import DecodeConfig, decode
    from adafuse_lab.session import ModelSession
    from adafuse_lab.tiny import make_tiny
    _with_template(monkeypatch, "<u>{{ messages[0]['content'] }}</u>{% if add_generation_prompt %}A:{% endif %}")
    texts, encode = [], ModelSession.encode
    monkeypatch.setattr(ModelSession, "encode", lambda self, text: texts.append(text) or encode(self, text))
    s = make_tiny("tiny:spm")
    a, b = s.encode_prompt("hi"), s.encode_prompt("hi")
    a.append(0)
    assert s.encode_prompt("hi") == b != a and texts == ["hi"]
    chat = s.as_chat()
    assert chat.encode_prompt("hi") == chat.encode_prompt("hi") == encode(s, "<u>hi</u>A:") != b
    assert s.encode_prompt("hi") == b and texts == ["hi", "<u>hi</u>A:"]
    prompts = ["Question: 2 + 2 =", "Hello"]
    decode("adafuse", [make_tiny("tiny:char"), s], prompts, DecodeConfig(max_new_tokens=4))
    assert sorted(t for t in texts if t in prompts) == sorted(prompts * 2)  # char once each; spm once each


def test_chat_with_identity_template_gives_the_plain_run(monkeypatch, tmp_path):
    """Members without BOS, a template that returns the text: the chat path must change nothing."""
    plain = run(cfg(method="adafuse", limit=2, max_new_tokens=8), tmp_path / "plain", progress=False)
    _with_template(monkeypatch, "{{ messages[0]['content'] }}")
    chat = run(cfg(method="adafuse", limit=2, max_new_tokens=8, chat=True), tmp_path / "chat", progress=False)
    assert chat["config"]["chat"] is True
    # one process, two chat runs: the chat views are loaded once (the per-member caches key on them)
    sessions = {}
    first = runs._load_members(cfg(chat=True), sessions)
    assert runs._load_members(cfg(chat=True), sessions) == first and all(m.chat for m in first)
    assert not any(m.chat for m in runs._load_members(cfg(), sessions))
    assert lines(tmp_path / "chat" / "samples.jsonl") == lines(tmp_path / "plain" / "samples.jsonl")
    _with_template(monkeypatch, "Q {{ messages[0]['content'] }} A")
    other = run(cfg(method="adafuse", limit=2, max_new_tokens=8, chat=True), tmp_path / "other", progress=False)
    assert [json.loads(x)["prediction"] for x in lines(tmp_path / "other" / "samples.jsonl")] != \
           [json.loads(x)["prediction"] for x in lines(tmp_path / "plain" / "samples.jsonl")]
    assert plain["metrics"]["n"] == 2


def test_chat_refused_for_a_member_without_template(tmp_path):
    with pytest.raises(UsageError, match=r"could not load model 'tiny:char': tiny:char has no chat template"):
        run(cfg(chat=True), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_context_warning_says_the_answer_may_run_past_the_context(capsys):
    """A prompt that fits but leaves less room than max_new_tokens is decoded anyway: the
    warning says the answer may run past the context (the engine does not stop there), and a
    prompt that does not fit is refused."""
    from types import SimpleNamespace
    member = SimpleNamespace(name="m", max_context=10, encode_prompt=lambda text: text.split())
    ex = SimpleNamespace(id="q1")
    runs._check_context([member], [ex], {"q1": "a b c d e f"}, 8)
    err = capsys.readouterr().err
    assert "exceeds m's context (10)" in err and "may run past it" in err and "stop early" not in err
    with pytest.raises(runs.UsageError, match="prompt is 10 tokens"):
        runs._check_context([member], [ex], {"q1": " ".join("x" * 10)}, 8)
