"""Tune on one half, report on the other: the halves, the choice, and the command end to end."""
from __future__ import annotations

import json
import math

import pytest

from adafuse_lab import runs as R
from adafuse_lab import tune as T
from adafuse_lab.cli import main
from adafuse_lab.runs import RunConfig, UsageError, run, select_half


def test_halves_split_the_examples():
    ex = list(range(9))
    assert select_half(ex, "tune") == [0, 1, 2, 3] and select_half(ex, "report") == [4, 5, 6, 7, 8]
    assert select_half(ex, None) == ex


def test_half_is_left_out_of_old_configs():
    # earlier run directories (no "half" in their config.json) keep their name and hash
    plain = RunConfig(task="triviaqa", models="tiny:bpe")
    assert "half" not in plain.to_dict()
    assert RunConfig(task="triviaqa", models="tiny:bpe", half="tune").to_dict()["half"] == "tune"
    assert R.run_dir("r", plain) != R.run_dir("r", RunConfig(task="triviaqa", models="tiny:bpe", half="tune"))


def test_run_on_halves(tmp_path):
    kw = dict(task="triviaqa", models="tiny:bpe,tiny:spm", source="sample", max_new_tokens=4)
    a = run(RunConfig(half="tune", **kw), tmp_path / "a", progress=False)
    b = run(RunConfig(half="report", **kw), tmp_path / "b", progress=False)
    ids_a = [json.loads(x)["id"] for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    ids_b = [json.loads(x)["id"] for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    assert a["n_examples"] == 4 and b["n_examples"] == 4 and not set(ids_a) & set(ids_b)
    assert a["data"]["half"] == "tune"
    with pytest.raises(UsageError, match="'tune' half of 1 example.*empty"):
        run(RunConfig(half="tune", limit=1, **kw), tmp_path / "c", progress=False)
    with pytest.raises(UsageError, match="half must be tune or report"):
        run(RunConfig(half="dev", **kw), tmp_path / "d", progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_choose_and_grid():
    assert T.choose([0.0, 0.0, 0.0]) == 0              # a tie keeps the defaults
    assert T.choose([1.0, 3.0, 3.0]) == 1              # ties: the earlier point
    assert T.choose([float("nan"), 0.5]) == 1          # NaN never wins
    grid = T.parse_grid(["theta=0.5,0.7", "B=1,3"])
    assert grid == {"theta": [0.5, 0.7], "B": [1, 3]}
    # the defaults first; theta=0.7,B=3 is the defaults and is not listed twice
    assert T.grid_points(grid) == [{}, {"B": 1, "theta": 0.5}, {"theta": 0.5}, {"B": 1}]
    for bad in (["theta"], ["theta="], ["theta=1", "theta=2"]):
        with pytest.raises(UsageError):
            T.parse_grid(bad)


def test_tune_command(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--task", "triviaqa", "--models", "tiny:bpe,tiny:spm", "--source", "sample",
                 "--grid", "theta=0.3,0.9", "--max-new-tokens", "4", "--n-boot", "50", "--out", str(out)]) == 0
    r = json.loads((out / "tune_triviaqa.json").read_text())
    assert [row["decode"] for row in r["tune_half"]] == [{}, {"theta": 0.3}, {"theta": 0.9}]
    assert all(row["n"] == 4 and row["metric"] == "lenient" for row in r["tune_half"])
    scores = [row["score"] for row in r["tune_half"]]
    assert r["chosen"] == r["tune_half"][T.choose(scores)]["decode"]
    assert r["report_half"]["default"]["n"] == 4 and not math.isnan(r["report_half"]["tuned"]["value"])
    assert r["tuned_minus_default"]["n"] == 4
    # every run is an ordinary run directory: a second call finds them all and decodes nothing
    first = capsys.readouterr().out
    # 3 grid points on the tune half, then the defaults and the winner on the report half (one run if the same)
    assert first.count("decoded ") == (4 if r["chosen"] == {} else 5)
    main(["tune", "--task", "triviaqa", "--models", "tiny:bpe,tiny:spm", "--source", "sample",
          "--grid", "theta=0.3,0.9", "--max-new-tokens", "4", "--n-boot", "50", "--out", str(out)])
    second = capsys.readouterr().out
    assert "decoded " not in second and second.count("found ") == 5
    assert json.loads((out / "tune_triviaqa.json").read_text()) == r
