"""The quality command: plan, decode, tune and table for one ensemble, and resuming."""
from __future__ import annotations

import json

import pytest

from adafuse_lab import quality as Q
from adafuse_lab.cli import main
from adafuse_lab.runs import UsageError
from helpers import fails

ARGS = ["quality", "--models", "tiny:bpe,tiny:spm", "--source", "sample", "--tasks", "triviaqa",
        "--methods", "single,unite,adafuse", "--max-new-tokens", "4", "--n-boot", "50", "--grid", "theta=0.3,0.9"]


def test_limits_and_params():
    assert Q.parse_limits(["gsm8k=all", "nq=200"]) == {"gsm8k": None, "nq": 200}
    for bad in (["gsm8k"], ["=3"], ["nq=many"]):
        with pytest.raises(UsageError):
            Q.parse_limits(bad)
    nb = Q.notebook_params({"models": "a,b", "source": "local", "batch_size": 64, "max_new_tokens": 256,
                            "n_boot": 10, "limit": None, "limits": {"gsm8k": None}}, {"nq": {"theta": 0.5}})
    p = nb["notebooks"][Q.NOTEBOOK]
    # limit None is passed on as "all" (every example), not dropped in favour of the preset's 100
    assert p["limit"] == "all" and p["limits"] == {"gsm8k": None} and p["half"] == "report" and p["preset"] == "gpu"
    assert Q.nb_params({"models": "tiny:bpe,tiny:spm", "limit": None}).limit is None
    assert Q.tasks_of({"models": "tiny:bpe,tiny:spm"}) == ["nq", "squad", "triviaqa", "gsm8k", "flores_en-de", "flores_de-en"]
    assert p["tuned"] == {"nq": {"theta": 0.5}} and p["launch"] is False


def test_workers(monkeypatch):
    assert Q.workers("0,1") == ["0", "1"] and Q.workers("2") == ["2"]  # GPU names, never a count
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert Q.workers(None) == [None]  # one CPU worker
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert Q.workers(None) == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Q.workers(None) == ["0", "1"]


def test_quality_command_end_to_end(tmp_path, capsys, monkeypatch):
    work = tmp_path / "w"
    assert "plan.jsonl, which does not exist yet; add the plan step" in fails(ARGS + ["--work", str(work), "--steps", "decode"], capsys)
    assert "unknown step(s) report" in fails(ARGS + ["--work", str(work), "--steps", "plan,report"], capsys)
    assert main(ARGS + ["--work", str(work), "--steps", "plan"]) == 0
    assert not Q.replan_due(work)  # nothing saved yet
    plan = [json.loads(x) for x in (work / "plan.jsonl").read_text().splitlines()]
    # 04 on the report half: two singles, unite, adafuse; tune: defaults and two grid points on the tune half
    rows = sorted((c["method"], c["half"], ",".join(c["models"]), json.dumps(c["decode"])) for c in plan)
    both = "tiny:bpe,tiny:spm"
    assert rows == sorted([("single", "report", "tiny:bpe", "{}"), ("single", "report", "tiny:spm", "{}"),
                           ("unite", "report", both, "{}"), ("adafuse", "report", both, "{}"),
                           ("adafuse", "tune", both, "{}"), ("adafuse", "tune", both, '{"theta": 0.3}'),
                           ("adafuse", "tune", both, '{"theta": 0.9}')])
    assert all(c["limit"] is None and c["batch_size"] == 64 for c in plan)
    # before the tune step the table is partial: no tuned row, and it says so
    assert main(ARGS + ["--work", str(work), "--steps", "decode,table"]) == 0
    assert "no tuned row for triviaqa" in capsys.readouterr().out
    first = json.loads((work / Q.NOTEBOOK / "summary.json").read_text())
    assert "adafuse (tuned)" not in first["labels"] and first["missing"] == []
    assert " 7 of 7 runs finished (" in Q.plan_progress(work / "plan.jsonl", work / "runs")
    assert Q.replan_due(work)  # every planned run saved
    # a saved tune-half run makes a new plan due before the rest is saved; a saved report-half run does not
    saved_lines = (work / "plan.jsonl").read_text().splitlines()
    unsaved = json.dumps({**plan[0], "decode": {"theta": 0.5}, "half": "report"})
    for half, due in (("tune", True), ("report", False)):
        line = next(x for x in saved_lines if json.loads(x)["half"] == half)
        (work / "plan.jsonl").write_text(line + "\n" + unsaved + "\n")
        assert Q.replan_due(work) is due
    # with the tune half saved, a new plan adds the chosen settings on the report half (the
    # choice forced to the last grid point here; the tune step below makes its own)
    with monkeypatch.context() as m:
        m.setattr("adafuse_lab.tune.choose", lambda scores: len(scores) - 1)
        main(ARGS + ["--work", str(work), "--steps", "plan"])
        # --saved-only: the chosen setting's report run is not saved, so nothing is tuned or decoded
        capsys.readouterr()
        assert main(ARGS + ["--work", str(work), "--steps", "tune", "--saved-only"]) == 0
        assert "tune triviaqa: skipped" in capsys.readouterr().out
        assert not (work / "tune_triviaqa.json").exists() and len(list((work / "runs").rglob("results.json"))) == 7
    plan = [json.loads(x) for x in (work / "plan.jsonl").read_text().splitlines()]
    assert [(c["method"], c["half"], c["decode"]) for c in plan] == [("adafuse", "report", {"theta": 0.9})]

    assert main(ARGS + ["--work", str(work), "--steps", "tune,table"]) == 0
    out = capsys.readouterr().out
    assert "partial table" not in out
    chosen = json.loads((work / "tune_triviaqa.json").read_text())["chosen"]
    summary = json.loads((work / Q.NOTEBOOK / "summary.json").read_text())
    assert summary["missing"] == [] and summary["half"] == "report" and summary["tuned"] == {"triviaqa": chosen}
    labels = [r["method"] for r in summary["table"]]
    assert labels == ["single: tiny:bpe", "single: tiny:spm", "unite", "adafuse", "adafuse (tuned)"]
    assert "adafuse (tuned)" in out and (work / Q.NOTEBOOK / "paired.csv").is_file()
    # the tuned row reads the run the tune step decoded (or the default run, if the defaults won)
    assert {p["a"] for p in summary["paired"]} == {"adafuse", "adafuse (tuned)"}

    # with every run saved, --saved-only tunes (and decodes nothing)
    (work / "tune_triviaqa.json").unlink()
    n_runs = len(list((work / "runs").rglob("results.json")))
    assert main(ARGS + ["--work", str(work), "--steps", "tune", "--saved-only"]) == 0
    assert json.loads((work / "tune_triviaqa.json").read_text())["chosen"] == chosen
    assert len(list((work / "runs").rglob("results.json"))) == n_runs

    # everything is saved: a second plan lists nothing and the decode worker decodes nothing
    main(ARGS + ["--work", str(work), "--steps", "plan,decode"])
    assert (work / "plan.jsonl").read_text() == ""
    assert "decoded 0" in (work / "logs" / "decode_cpu.log").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "gsm9k"], "unknown task 'gsm9k'. Did you mean 'gsm8k'?"),
    (["--models", "tiny:bpe,tiny:bep"], "unknown tiny model 'tiny:bep'"),
    (["--grid", "thetaa=0.5"], "unknown decoding parameter 'thetaa'"),
    (["--grid", "theta=2"], "theta must be in [0, 1]"),
    (["--methods", "unite,adafusee"], "unknown method 'adafusee'"),
    (["--dtype", "fp33"], "unknown dtype 'fp33'"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, capsys, extra, message):
    work = tmp_path / "w"
    args = [a for a in ARGS if a not in ("--grid", "theta=0.3,0.9")]
    assert message in fails(args + ["--work", str(work)] + extra, capsys)
    assert not work.exists()
