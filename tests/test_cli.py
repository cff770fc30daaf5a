"""python -m adafuse_lab: subcommands, option plumbing and one-line errors."""
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import adafuse_lab
from adafuse_lab import cli
from adafuse_lab.cli import main
from helpers import fails

REPO = Path(__file__).resolve().parent.parent
TINY = ["--task", "triviaqa", "--models", "tiny:char,tiny:bpe", "--source", "sample", "--limit", "2",
        "--max-new-tokens", "8", "--no-progress"]


def test_run_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--method", "single", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["n"] == 2
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "results.json").read_text())["metrics"]


@pytest.mark.parametrize("method", ["adafuse", "single", "sweetspan", "coolfusion", "unite", "gac", "rerank"])
def test_run_every_method(tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["run", *TINY, "--method", method, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n"] == 2
    assert json.loads((out / "results.json").read_text())["method"] == method


def test_decode_options_reach_the_config(tmp_path):
    args = cli.build_parser().parse_args(
        ["run", *TINY, "--out", "x", "--theta", "0.5", "--B", "2", "--M", "4", "--criterion", "entropy",
         "--set", "branch_select=distinct", "--set", "weights=[1, 2]", "--set", "compat=true"])
    c = cli._run_config(args)
    assert c.decode == {"theta": 0.5, "B": 2, "M": 4, "criterion": "entropy", "branch_select": "distinct",
                        "weights": [1, 2], "compat": True}
    assert c.models == ("tiny:char", "tiny:bpe") and c.method == "adafuse" and c.limit == 2


@pytest.mark.parametrize("extra, needle", [
    (["--method", "adafus"], "did you mean 'adafuse'"),
    (["--method", "single", "--task", "trivia"], "triviaqa"),
    (["--method", "single", "--models", "tiny:chr"], "did you mean 'tiny:char'"),
    (["--theta", "1.5"], "theta must be in [0, 1]"),
    (["--B", "0"], "B must be >= 1"),
    (["--limit", "0"], "limit must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--set", "thetta=0.5"], "theta"),
    (["--set", "theta"], "KEY=VALUE"),
    (["--limit", "x"], "invalid int value"),
])
def test_run_errors_are_one_line(tmp_path, capsys, extra, needle):
    err = fails(["run", *TINY, "--out", str(tmp_path / "o"), *extra], capsys)
    assert needle in err


def test_other_errors_are_one_line(tmp_path, capsys):
    assert "not a run directory" in fails(["eval", str(tmp_path / "nothing")], capsys)
    assert "--task" in fails(["run", "--models", "tiny:char", "--out", "x"], capsys)
    fails(["no-such-command"], capsys)
    main(["run", *TINY, "--method", "single", "--out", str(tmp_path / "r")])
    capsys.readouterr()
    err = fails(["run", *TINY, "--method", "adafuse", "--out", str(tmp_path / "r")], capsys)
    assert "method: 'single' -> 'adafuse'" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(adafuse_lab.runs.UsageError):
        main(["run", *TINY, "--method", "adafus", "--out", str(tmp_path / "o"), "--debug"])


def interrupted_exit(argv, capsys) -> str:
    """Run main, expect exit 130 and one line on stderr; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_keyboard_interrupt_exits_130_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_eval", interrupted)
    assert interrupted_exit(["eval", "x"], capsys) == "error: interrupted; nothing was changed\n"
    from adafuse_lab import runs
    monkeypatch.setattr(runs, "_decode_iter", interrupted)
    err = interrupted_exit(["run", *TINY, "--out", str(tmp_path / "o")], capsys)
    assert err == "error: interrupted; rerun the same command to resume: finished work is kept\n"
    with pytest.raises(KeyboardInterrupt):  # --debug: the traceback
        main(["run", *TINY, "--out", str(tmp_path / "o"), "--debug"])


def test_sigterm_ends_a_run_like_ctrl_c(monkeypatch, capsys, tmp_path):
    """kill, timeout or a scheduler stopping a run: one line saying how to resume, status 143
    (it used to die silently), finished examples kept, and SIGTERM's own handler back afterwards."""
    import os
    import signal
    from adafuse_lab import runs

    def killed(*args, **kw):
        for i, item in enumerate(real(*args, **kw)):
            if i == 2:  # two examples are written
                os.kill(os.getpid(), signal.SIGTERM)
            yield item
    real = runs._decode_iter
    monkeypatch.setattr(runs, "_decode_iter", killed)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["run", *TINY, "--limit", "4", "--batch-size", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 143 and err == ("error: terminated (SIGTERM); rerun the same command to resume: "
                                           "finished work is kept\n"), err
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 and not (out / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_process_exit_code_and_stderr(tmp_path):
    r = subprocess.run([sys.executable, "-m", "adafuse_lab", "run", *TINY, "--method", "adafus",
                        "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        r.stderr.strip()] and "did you mean 'adafuse'" in r.stderr and "Traceback" not in r.stderr


def test_demo_prints_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--models", "tiny:char,tiny:bpe", "--out", str(out), "--limit", "2",
                 "--max-new-tokens", "6", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["question", "prediction", "gold", "correct"]
    assert "Which planet" in text  # first embedded TriviaQA question
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "adafuse" and cfg["source"] == "sample"


def test_models_subcommands_use_the_zoo(monkeypatch, capsys):
    zoo = types.ModuleType("adafuse_lab.zoo")
    zoo.list_models = lambda: [{"name": "smollm2-135m", "params": "135M", "cached": False}]
    zoo.fetch = lambda name: f"/cache/{name}"
    zoo.check_cache = lambda write=True: None
    def model_info(name):
        if name != "smollm2-135m":
            raise ValueError(f"unknown model {name!r}. Did you mean smollm2-135m?")
        return {"name": name, "licence": "apache-2.0"}
    zoo.model_info = model_info
    monkeypatch.setitem(sys.modules, "adafuse_lab.zoo", zoo)
    monkeypatch.setattr(adafuse_lab, "zoo", zoo, raising=False)
    main(["models", "list"])
    main(["models", "fetch", "smollm2-135m"])
    main(["models", "info", "smollm2-135m"])
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "135M" in out and "/cache/smollm2-135m" in out and "apache-2.0" in out
    assert "Did you mean smollm2-135m" in fails(["models", "info", "smollm2"], capsys)


def test_plugin_subcommands_register(monkeypatch, capsys):
    bench = types.ModuleType("adafuse_lab.bench")

    def add_parser(sub):
        p = sub.add_parser("bench")
        p.set_defaults(func=lambda args: print("bench ran"))

    bench.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "adafuse_lab.bench", bench)
    assert main(["bench"]) == 0 and capsys.readouterr().out == "bench ran\n"


def test_bench_times_several_methods_on_cpu(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "tiny:bpe,tiny:spm", "--method", "adafuse,rerank", "--task", "triviaqa",
                 "--source", "sample", "--limit", "3", "--batch-size", "2", "--max-new-tokens", "6",
                 "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["methods"]) == ["adafuse", "rerank"] and r["method"] == r["methods"]["adafuse"]
    assert set(r["generate"]) == {"tiny:bpe", "tiny:spm"} and set(r["members"]) == {"tiny:bpe", "tiny:spm"}
    for m in r["methods"].values():
        assert m["new_tokens"] > 0 and all(n > 0 for n in m["forward_calls"])
        assert m["ratio_to_summed_generate"] > 0 and len(m["forwards_per_answer_token"]) == 2
        assert all(x > 0 for x in m["forward_calls_vs_generate"])
    # where the host's time goes, by phase of a step (span methods)
    phases = r["methods"]["adafuse"]["host_phases_s"]
    assert set(phases) == {"wait", "decide", "propose", "settle", "growing", "grow_early", "forward"}
    assert 0 < sum(phases.values()) < r["methods"]["adafuse"]["wall_s"]
    assert r["methods"]["rerank"]["host_phases_s"] == {}
    # two batches of 3 prompts, decoded together (2 in flight, the default): the times overlap
    assert r["decode_config"]["batches_in_flight"] == 2 and all("overlap" in m for m in r["methods"].values())
    # the answers' digest: what two runs that should agree compare
    from adafuse_lab.decoding import DecodeConfig, decode
    from adafuse_lab.models import load_session
    from adafuse_lab.tasks import get_task
    task = get_task("triviaqa")
    prompts = [task.prompt(e) for e in task.load(source="sample", limit=3)]
    texts = [o.text for o in decode("rerank", [load_session("tiny:bpe"), load_session("tiny:spm")], prompts,
                                    DecodeConfig(**r["decode_config"]))]
    assert r["methods"]["rerank"]["answers_sha256"] == hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    assert r["methods"]["adafuse"]["answers_sha256"] != r["methods"]["rerank"]["answers_sha256"]


def test_bench_loads_members_in_the_dtype_asked_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--models", "tiny:bpe", "--method", "single", "--task", "triviaqa", "--source", "sample",
            "--limit", "2", "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu", "--no-generate",
            "--out", str(out)]
    assert main(args + ["--dtype", "bfloat16"]) == 0
    assert json.loads(out.read_text())["dtype"] == "torch.bfloat16"
    with pytest.raises(SystemExit) as stop:
        main(args + ["--dtype", "float64x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dtype 'float64x'" in err and len(err.strip().splitlines()) == 1


def test_bench_refuses_prompts_longer_than_a_members_context_before_any_generate(tmp_path, monkeypatch, capsys):
    from adafuse_lab import bench

    def generate_baseline(*a, **k):
        raise AssertionError("generate ran before the prompts were checked")

    monkeypatch.setattr(bench, "generate_baseline", generate_baseline)
    # GSM8K's few-shot prompts are some 2,800 tokens for tiny:bpe, whose context is 2,048
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--models", "tiny:bpe", "--method", "single", "--task", "gsm8k", "--source", "sample",
              "--limit", "1", "--batch-size", "1", "--max-new-tokens", "4", "--device", "cpu",
              "--out", str(tmp_path / "b.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "tiny:bpe has a context of 2048" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_bench_keeps_going_when_a_method_runs_out_of_memory(tmp_path, monkeypatch):
    from adafuse_lab import bench
    real = bench.run_method

    def run_method(method, sessions, prompts, cfg, stop=None):
        if method == "rerank" and cfg.max_new_tokens > 4:  # the warm-up (4 tokens) fits
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 27.68 GiB.\nmore")
        return real(method, sessions, prompts, cfg, stop)

    monkeypatch.setattr(bench, "run_method", run_method)
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "tiny:bpe", "--method", "rerank,single", "--task", "triviaqa",
                 "--source", "sample", "--limit", "2", "--batch-size", "2", "--max-new-tokens", "6",
                 "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["methods"]["rerank"] == {"name": "rerank",
                                      "error": "out of GPU memory: CUDA out of memory. Tried to allocate 27.68 GiB."}
    assert r["methods"]["single"]["new_tokens"] > 0


def test_a_missing_extra_is_named_and_an_unexpected_error_is_one_line(monkeypatch, capsys):
    def needs_papermill(args):
        raise ModuleNotFoundError("No module named 'papermill'", name="papermill")
    monkeypatch.setattr(cli, "cmd_eval", needs_papermill)
    assert "pip install 'adafuse-lab[notebooks]'" in fails(["eval", "x"], capsys)

    def bug(args):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(cli, "cmd_eval", bug)
    with pytest.raises(SystemExit) as e:
        main(["eval", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "unexpected ZeroDivisionError" in err and "--debug" in err
