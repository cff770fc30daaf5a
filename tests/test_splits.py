"""Issue 23: --split dev|test end to end (run, demo, tune, quality, the notebooks' plans).

A temporary data folder holds a dev and a test file with different questions, so every
check below fails if --split is ignored (the dev questions would come back instead). Tiny
members, nothing downloaded. Bad split values and missing split files are rows of
tests/test_bad_inputs.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from adafuse_lab import figures, plans, runs
from adafuse_lab import quality as Q
from adafuse_lab.cli import main
from adafuse_lab.runs import RunConfig
from adafuse_lab.tasks import demo_questions

REPO = Path(__file__).resolve().parent.parent
PROMPT = (REPO / "adafuse_lab" / "samples" / "triviaqa" / "prompt.txt").read_text()
DEMO = demo_questions(PROMPT)[0]  # a few-shot demo question: dropped from every split

DEV = [f"Dev question number {i}?" for i in range(4)]
TEST = [f"Test question number {i}?" for i in range(4)]
TINY = ["--models", "tiny:bpe,tiny:spm", "--max-new-tokens", "4"]


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """D/triviaqa/{prompt.txt, dev.jsonl, test.jsonl}; the test file also holds a demo question (row 1)."""
    d = tmp_path / "data"
    (d / "triviaqa").mkdir(parents=True)
    (d / "triviaqa" / "prompt.txt").write_text(PROMPT)
    rows = {"dev": DEV, "test": [TEST[0], DEMO, *TEST[1:]]}
    for split, questions in rows.items():
        (d / "triviaqa" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in questions))
    monkeypatch.delenv("ADAFUSE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(runs, "_WARNED", set())
    return d


def questions(run_dir: Path) -> list[str]:
    return [json.loads(x)["question"] for x in (run_dir / "samples.jsonl").read_text().splitlines()]


def _key(q: str) -> str:
    return " ".join(q.split())


# ---------------------------------------------------------------- run and demo


@pytest.mark.parametrize("split", ["dev", "test"])
def test_run_reads_the_split_it_is_given(data, tmp_path, capsys, split):
    out = tmp_path / split
    assert main(["run", "--task", "triviaqa", *TINY, "--data-dir", str(data), "--split", split,
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == split
    assert questions(out) == (DEV if split == "dev" else TEST)
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["split"] == split and res["data"]["location"] == str(data / "triviaqa" / f"{split}.jsonl")
    config = json.loads((out / "config.json").read_text())
    # a dev run's config.json is what it was before --split existed (same run directory names)
    assert config.get("split") == (None if split == "dev" else "test")


def test_demo_questions_are_dropped_from_the_test_split(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--task", "triviaqa", *TINY, "--data-dir", str(data), "--split", "test",
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["dropped_demo_leaks"] == ["triviaqa-0001"] and res["n_examples"] == 4
    assert _key(DEMO) not in map(_key, questions(out))
    ids = [json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert ids == ["triviaqa-0000", "triviaqa-0002", "triviaqa-0003", "triviaqa-0004"]  # row indices stay stable


def test_split_is_part_of_the_run(data, tmp_path, capsys):
    dev = RunConfig(task="triviaqa", models="tiny:bpe", split="dev")
    assert dev.to_dict() == RunConfig(task="triviaqa", models="tiny:bpe").to_dict()
    assert runs.run_dir("r", dev) != runs.run_dir("r", RunConfig(task="triviaqa", models="tiny:bpe", split="test"))
    out = tmp_path / "r"
    argv = ["run", "--task", "triviaqa", *TINY, "--data-dir", str(data), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    with pytest.raises(SystemExit) as e:  # resuming a dev run as a test run is another run
        main(argv + ["--split", "test"])
    assert e.value.code == 2 and "split: '<unset>' -> 'test'" in capsys.readouterr().err


def test_demo_takes_the_split(data, tmp_path, capsys):
    assert main(["demo", *TINY, "--source", "local", "--data-dir", str(data), "--split", "test", "--limit", "2",
                 "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(test split, local)" in out and "Test question number 0?" in out and "Dev question" not in out


# ---------------------------------------------------------------- tune and quality


def test_tune_on_dev_report_on_test(data, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--task", "triviaqa", *TINY, "--source", "local", "--data-dir", str(data),
                 "--split", "test", "--grid", "theta=0.3", "--n-boot", "20", "--out", str(out)]) == 0
    r = json.loads((out / "tune_triviaqa.json").read_text())
    assert r["tuned_on"] == {"split": "dev", "half": None} and r["reported_on"] == {"split": "test", "half": None}
    assert [(row["split"], row["half"], row["n"]) for row in r["tune_half"]] == [("dev", None, 4)] * 2
    for side in ("default", "tuned"):
        rep = r["report_half"][side]
        assert (rep["split"], rep["half"], rep["n"]) == ("test", None, 4)
        assert questions(Path(rep["run"])) == TEST
    assert all(questions(Path(row["run"])) == DEV for row in r["tune_half"])
    assert "on dev (" in capsys.readouterr().out  # "chosen ... on dev (lenient ...); on test: ..."


def test_tune_on_dev_halves_by_default(data, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--task", "triviaqa", *TINY, "--source", "local", "--data-dir", str(data),
                 "--grid", "theta=0.3", "--n-boot", "20", "--out", str(out)]) == 0
    r = json.loads((out / "tune_triviaqa.json").read_text())
    assert r["tuned_on"] == {"split": "dev", "half": "tune"} and r["reported_on"] == {"split": "dev", "half": "report"}
    assert questions(Path(r["tune_half"][0]["run"])) == DEV[:2]
    assert questions(Path(r["report_half"]["default"]["run"])) == DEV[2:]


def test_quality_tunes_on_dev_and_reports_on_test(data, tmp_path, capsys):
    work = tmp_path / "w"
    args = ["quality", *TINY, "--tasks", "triviaqa", "--methods", "single,adafuse", "--source", "local",
            "--data-dir", str(data), "--split", "test", "--grid", "theta=0.3", "--n-boot", "20", "--work", str(work)]
    assert main(args + ["--steps", "plan"]) == 0
    plan = [json.loads(x) for x in (work / "plan.jsonl").read_text().splitlines()]
    got = sorted((c["method"], ",".join(c["models"]), c.get("split", "dev"), c.get("half"), json.dumps(c["decode"]))
                 for c in plan)
    both = "tiny:bpe,tiny:spm"
    assert got == sorted([("single", "tiny:bpe", "test", None, "{}"), ("single", "tiny:spm", "test", None, "{}"),
                          ("adafuse", both, "test", None, "{}"),   # 04's rows, on test
                          ("adafuse", both, "dev", None, "{}"),    # the tune grid, on all of dev
                          ("adafuse", both, "dev", None, '{"theta": 0.3}')])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reported on test; AdaFuse (tuned) tuned on dev" in out
    summary = json.loads((work / Q.NOTEBOOK / "summary.json").read_text())
    assert summary["split"] == "test" and summary["half"] is None and summary["missing"] == []
    assert [r["method"] for r in summary["table"]][-1] == "adafuse (tuned)"
    t = json.loads((work / "tune_triviaqa.json").read_text())
    assert t["tuned_on"]["split"] == "dev" and t["reported_on"]["split"] == "test"
    params = json.loads((work / "quality_params.json").read_text())["notebooks"][Q.NOTEBOOK]
    assert params["split"] == "test" and params["half"] is None
    for res in (work / "runs").rglob("results.json"):  # every number says where it comes from
        r = json.loads(res.read_text())
        assert r["data"]["split"] == r["config"].get("split", "dev") and r["data"]["half"] is None
        assert questions(res.parent) == (TEST if r["data"]["split"] == "test" else DEV)


# ---------------------------------------------------------------- the notebooks


def test_every_notebook_takes_a_split():
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert pm.inspect_notebook(str(nb))["split"]["default"] == '"dev"', nb.stem
        assert "split=split" in nb.with_suffix(".py").read_text(), nb.stem  # passed to notebook_params
    P = plans.notebook_params("02_trigger_rates", "cpu", split="test")
    assert P.split == "test" and all(c.split == "test" for c in plans.runs_of("02_trigger_rates", P).values())
    with pytest.raises(ValueError, match="split must be dev or test"):
        plans.notebook_params("02_trigger_rates", "cpu", split="validation")
    quick = (REPO / "notebooks" / "00_quickstart.py").read_text()  # 00 loads its questions itself
    assert "the_task.load(source=P.source, data_dir=P.data_dir, limit=P.limit, split=P.split)" in quick


def test_figures_plan_follows_the_split(data, tmp_path, capsys):
    pfile = tmp_path / "p.json"
    pfile.write_text(json.dumps({"common": {"preset": "cpu", "source": "local", "data_dir": str(data),
                                            "split": "test", "tasks": "triviaqa"}}))
    assert main(["figures", "--plan", "--params", str(pfile), "--only", "02,04", "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "f")]) == 0
    configs = figures.read_plan(tmp_path / "w" / "plan.jsonl")
    assert configs and all(c.split == "test" and c.data_dir == str(data) for c in configs)


def test_quickstart_notebook_on_the_test_split(data, tmp_path, capsys):
    """Notebook 00 reads its questions itself (no run directory): executed with split test."""
    pfile = tmp_path / "p.json"
    pfile.write_text(json.dumps({"common": {"preset": "cpu", "source": "local", "data_dir": str(data),
                                            "split": "test", "limit": 2, "max_new_tokens": 4}}))
    assert main(["figures", "--params", str(pfile), "--only", "00", "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "w" / "00_quickstart" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["n_questions"] == 2
    executed = (tmp_path / "w" / "00_quickstart.ipynb").read_text()
    assert "Test question number 0?" in executed and "Dev question" not in executed
