"""adafuse_lab.plots: one style, one colour mapping, stable files, widget-callable functions."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from adafuse_lab import plots  # noqa: E402
from adafuse_lab import stats, tables, traces  # noqa: E402
from adafuse_lab import runs as R  # noqa: E402
from adafuse_lab.decoding import METHODS  # noqa: E402

from test_analysis import TRACE, qa_records  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    plots.style()
    yield
    plt.close("all")


def test_one_colour_per_method():
    for m in METHODS:
        assert m in plots.METHOD_COLORS
    colours = list(plots.METHOD_COLORS.values())
    assert len(set(colours)) == len(colours), "two keys share a colour"
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in colours + list(plots.TASK_COLORS.values()))
    assert plots.color("single: b", ["a", "b"]) == plots.METHOD_COLORS["member1"]
    assert plots.color("single: z") == plots.METHOD_COLORS["single"]
    assert plots.color("adafuse-whatever") == plots.METHOD_COLORS["adafuse"]
    assert plots.color("gsm8k") == plots.TASK_COLORS["gsm8k"]
    assert plots.color("nonsense") == "#7F7F7F"


def test_style_sets_rcparams():
    matplotlib.rcdefaults()
    plots.style()
    assert matplotlib.rcParams["savefig.dpi"] == 150 and matplotlib.rcParams["pdf.fonttype"] == 42


def test_saved_files_are_stable(tmp_path):
    def draw():
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 1], color=plots.color("adafuse"), label="adafuse")
        ax.set_title("θ and Δ")
        ax.legend()
        return fig
    a = plots.save(draw(), "fig", tmp_path / "a")
    b = plots.save(draw(), "fig", tmp_path / "b")
    assert [p.name for p in a] == ["fig.png", "fig.pdf"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), f"{pa.name} differs between two saves"
    png, pdf = a[0].read_bytes(), a[1].read_bytes()
    assert b"Software" not in png and matplotlib.__version__.encode() not in png
    assert b"CreationDate" not in pdf and b"ModDate" not in pdf and b"Producer" not in pdf
    assert matplotlib.__version__.encode() not in pdf


def test_answer_html_escapes_and_colours():
    trace = [dict(TRACE[0]), dict(TRACE[1])]
    first = {**TRACE[1]["candidates"][0], "text": " <b>&\nx"}
    trace[1] = {**TRACE[1], "candidates": [first] + TRACE[1]["candidates"][1:]}
    page = plots.answer_html(trace, ["m0", "m1"])
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page
    assert plots.METHOD_COLORS["member1"] in page and plots.METHOD_COLORS["shared"] in page
    assert page.count(plots.BRANCH_MARK) >= 2 and f"{plots.NEWLINE_MARK}<br>" in page
    assert all(ord(ch) < 256 for ch in plots.BRANCH_MARK + plots.NEWLINE_MARK)  # in every font
    assert plots.answer_html(None, ["a"], "<x>") == "<pre>&lt;x&gt;</pre>"


def test_answer_html_keeps_text_past_the_stop_apart():
    # the last round committed " fox" and more; the task's stop cut the answer after " the big red"
    trace = [dict(TRACE[0]), {**TRACE[1], "candidates": [{**TRACE[1]["candidates"][0], "text": " fox\n\nQuestion: Which"}]
                                                        + TRACE[1]["candidates"][1:]}]
    page = plots.answer_html(trace, ["m0", "m1"], " the big red fox")
    answer, _, past = page.partition("past the stop")
    assert "fox" in page and "Question: Which" not in answer.split("line-through")[0]
    assert "line-through" in page and "Question: Which" in page.split("line-through")[1]
    whole = plots.answer_html(trace, ["m0", "m1"], " the big red fox\n\nQuestion: Which")
    assert "line-through" not in whole
    assert plots.winner_key(TRACE[0]) == "member1" and plots.winner_key(TRACE[1]) == "shared"


def test_plot_rounds():
    fig = plots.plot_rounds(TRACE, ["m0", "m1"], title="t")
    ax1, ax2 = fig.axes[:2]
    assert len(ax2.patches) >= 2 and [round(p.get_height()) for p in ax2.patches[:2]] == [3, 1]
    fig.canvas.draw()
    assert all(float(x).is_integer() for x in ax2.get_xticks())  # rounds are whole numbers
    assert plots.plot_rounds([], ["m0"]) is not None


def test_analysis_figures_draw():
    members = traces.frame(traces.member_rounds(TRACE * 4, ["m0", "m1"], task="triviaqa"))
    assert plots.plot_confidence_hist(members, "margin").axes
    assert plots.plot_confidence_hist(members, "entropy", ["triviaqa"]).axes
    table = stats.uncertainty_table(members)
    fig = plots.plot_auroc(table, ["AUROC lost | margin", "AUROC split | entropy"], group_col="member_name")
    assert fig.axes[0].get_ylim() == (0.0, 1.0)
    # a missing AUROC (one class only) says n/a; an AUROC of 0.00 is drawn as a value
    both = pd.DataFrame({"g": ["a", "b"], "x": [0.0, np.nan]})
    ax = plots.plot_auroc(both, ["x"], group_col="g").axes[0]
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert any(len(line.get_xdata()) == 1 and line.get_ydata()[0] == 0.0 for line in ax.lines)
    rel = {"m0": (stats.reliability(members.margin, ~members.lost, 5), "member0"), "none": ([], "member1")}
    assert plots.plot_reliability(rel, title="x").axes
    cc = {"m0 · margin": (stats.catch_curve(members.margin, members.lost), "member0", "-")}
    assert plots.plot_catch_curves(cc).axes


def test_trigger_curves_read_off_theta():
    grid = np.linspace(0, 1, 11)
    curves = {"gsm8k": {"theta": grid, "trigger_rate": grid, "mean_span": 3 - 2 * grid, "rounds_per_word": grid,
                        "word_rate": grid}}
    measured = {"gsm8k": [{"theta": 0.7, "trigger_rate": 0.6, "mean_span": 1.5, "rounds_per_word": 0.5}]}
    fig = plots.plot_trigger_curves(curves, 0.3, measured)
    assert "gsm8k 0.30" in fig.axes[0].get_title()
    assert "gsm8k 2.40" in fig.axes[1].get_title()
    assert plots.plot_span_hist({"gsm8k": [1, 2, 3, 3], "nq": []}).axes


def test_cost_accuracy_and_benchmark():
    df = pd.DataFrame([{"task": "triviaqa", "variant": "B=3", "key": "adafuse", "metric": "lenient", "score": 50.0,
                        "score lo": 40.0, "score hi": 60.0, "forwards": 10.0},
                       {"task": "triviaqa", "variant": "B=1", "key": "adafuse", "metric": "lenient", "score": 45.0,
                        "score lo": np.nan, "score hi": np.nan, "forwards": 5.0}])
    fig = plots.plot_cost_accuracy(df, label_col="variant", key_col="key")
    assert fig.axes[0].get_ylabel() == "score (lenient)"
    # labels in one legend with a marker each, not as text next to points (they overlapped)
    assert not fig.axes[0].texts and [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["B=3", "B=1"]
    runs = {("single: a", "triviaqa"): R.Run(None, {}, {}, qa_records([1, 0])),
            ("adafuse", "triviaqa"): R.Run(None, {}, {}, qa_records([1, 1]))}
    table = tables.benchmark_table(runs, ["triviaqa"], ["single: a", "adafuse", "unite"], n_boot=20)
    fig = plots.plot_benchmark(table, ["triviaqa"], ["a"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["single: a", "adafuse", "unite"]


def test_show_and_widget_result():
    fig, _ = plt.subplots()
    assert plots.show(fig) is fig
    assert not plt.fignum_exists(fig.number)

    class View:
        result = None
    with pytest.raises(RuntimeError, match="widget"):
        plots.widget_result(View())
    View.result = 3
    assert plots.widget_result(View()) == 3


def test_quickstart_view_redecodes():
    from adafuse_lab.models import load_session
    from adafuse_lab.tasks import get_task
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    task = get_task("flores_en-de")
    examples = task.load(source="sample", limit=2)
    res = plots.quickstart_view(members, task, examples, theta=1.0, M=2, B=2, criterion="entropy", question=3,
                                max_new_tokens=6)
    assert res["example"].id == examples[1].id  # indices wrap around
    trace = res["output"].trace
    assert trace and all(m["branched"] for rd in trace for m in rd["members"])  # theta 1: always uncertain
    assert res["figure"].axes and plots.BRANCH_MARK in res["html"]
    assert "gold:" in res["html"] and set(res["score"]) >= {"answer"}


def test_interact_builds_widgets(monkeypatch):
    monkeypatch.delenv(plots.HEADLESS_ENV, raising=False)
    calls = []

    def fn(theta, M, criterion):
        calls.append((theta, M, criterion))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, theta * M])
        return {"figure": fig, "html": f"<b>{len(calls)}</b>"}
    view = plots.interact(fn, theta=plots.control(0.7, min=0.0, max=1.0, step=0.05, description="θ"),
                          M=plots.control(3, min=1, max=8),
                          criterion=plots.control("margin", options=["margin", "entropy"]))
    assert isinstance(view, plots.Interactive)
    kinds = {w.description: type(w).__name__ for w in view.controls.values()}
    assert kinds == {"θ": "FloatSlider", "M": "IntSlider", "criterion": "Dropdown"}
    assert calls == [(0.7, 3, "margin")] and plots.widget_result(view)["html"] == "<b>1</b>"  # ran once
    first = bytes(view.image.value)
    assert first.startswith(b"\x89PNG") and "done in" in view.status.value
    seen = []  # the controls are disabled while the function runs: the busy state
    view.fn = lambda **kw: seen.append([w.disabled for w in view.controls.values()]) or fn(**kw)
    view.controls["M"].value = 5
    assert calls[-1] == (0.7, 5, "margin") and view.page.value == "<b>2</b>" and seen == [[True, True, True]]
    assert bytes(view.image.value) != first and not any(w.disabled for w in view.controls.values())
    # a failure shows under the controls and keeps the last figure; widget_result raises
    view.fn = lambda **kw: 1 / 0
    view.controls["theta"].value = 0.5
    assert "failed: ZeroDivisionError" in view.status.value and view.image.value
    with pytest.raises(RuntimeError, match="widget"):
        plots.widget_result(view)


def test_interact_headless(monkeypatch):
    monkeypatch.setenv(plots.HEADLESS_ENV, "1")
    view = plots.interact(lambda theta: {"html": f"<i>{theta * 2}</i>"}, theta=plots.control(0.25, min=0.0, max=1.0))
    assert isinstance(view, plots.Headless)
    assert plots.widget_result(view) == {"html": "<i>0.5</i>"} and view.kwargs == {"theta": 0.25}


def test_figures_headless_restores_environment(monkeypatch):
    from adafuse_lab import figures
    monkeypatch.delenv(plots.HEADLESS_ENV, raising=False)
    import os
    with figures.headless():
        assert os.environ[plots.HEADLESS_ENV] == "1"
    assert plots.HEADLESS_ENV not in os.environ


def _benchmark_script(name):
    """A script of benchmarks/ (not a package) as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_target_bounds_from_the_committed_results(capsys):
    """benchmarks/diag/target_bounds.py: per question, engine v18's b256 is 1.29x cheaper than b64
    at the floor and 1.71x in GPU forwards (the figures BENCHMARKS.md quotes for targets 2 and 3)."""
    mod = _benchmark_script("diag/target_bounds")
    v18 = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "engine_v18"
    b64, b256 = (mod.per_question(str(v18 / f)) for f in ("v18f/b64_f1.json", "v18g/b256_f1.json"))
    assert (b64["batch"], b256["batch"]) == (64, 256)
    assert round(b64["floor"] / b256["floor"], 2) == 1.29
    assert round(b64["gpu_forwards"] / b256["gpu_forwards"], 2) == 1.71
    assert round(b64["wall"], 4) == 0.1850 and round(b256["wall"], 4) == 0.1357
    mod.main([str(v18 / "v18f/b64_f1.json"), str(v18 / "v18g/b256_f1.json")])
    assert "batch 256: floor 1.29, GPU forwards 1.71, wall 1.36" in capsys.readouterr().out


def test_speed_figures_from_the_committed_results(tmp_path):
    """benchmarks/plot_speed.py reads the committed JSON files (numbers as BENCHMARKS.md quotes them)."""
    mod = _benchmark_script("plot_speed")
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    b64 = {m: (r, s) for m, r, s in mod.method_rows(results, mod.METHODS_B64)}
    assert b64["adafuse grouped"] == (2.531, 0.5055) and b64["single"][0] < 1 < b64["unite"][0]
    versions = mod.version_rows(results)
    assert len(versions) == len(mod.VERSIONS) and versions[-1][1] == 31.553 and versions[-4][1] == 32.353
    assert [round(a / b, 2) for _, a, b in mod.scaling_rows(results)][-1] == 2.0
    written = mod.main(["--results", str(results), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == ["scaling.png", "speed_engine_versions.png", "speed_methods.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_output_language_counts_finished_runs_only(tmp_path, capsys):
    """benchmarks/output_language.py: one line per finished run, languages counted per answer."""
    mod = _benchmark_script("output_language")
    answers = ["The weather was very cold and the children stayed at home all day.",
               "Das Wetter war sehr kalt und die Kinder sind den ganzen Tag zu Hause geblieben.",
               "Die Regierung hat gestern beschlossen, die neue Brücke nicht zu bauen.", ""]
    for name, done in (("single-a", True), ("single-b", False)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"method": "single", "models": ["m"], "half": "report"}))
        (run / "samples.jsonl").write_text("".join(json.dumps({"prediction": a}) + "\n" for a in answers))
        if done:
            (run / "results.json").write_text("{}")
    mod.main([str(tmp_path / "single-a"), str(tmp_path / "single-b")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["single-a\tsingle\tm\treport\tde 2, en 1, none 1"]


def test_qa_stops_counts_budget_stops_the_cap_and_overruled_endings(tmp_path, capsys):
    """benchmarks/qa_stops.py: lenient with and without our length cap, stops by cause, and the
    rounds where an ending candidate lost to its own text going on."""
    mod = _benchmark_script("qa_stops")
    ending, going_on = {"text": " Prague.", "eos": True}, {"text": " Prague. The", "eos": False}
    overruled = [{"candidates": [ending, going_on], "winner": 1}]
    kept = [{"candidates": [ending, going_on], "winner": 0}]
    recs = [("q1", "Prague. The capital city of the Czech Republic is Prague.", "budget", overruled),
            ("q2", "Prague.", "eos", kept), ("q3", "Paris.", "eos", kept)]
    for name, method, rows in (("ada", "adafuse", recs), ("one", "single", recs[1:])):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"task": "triviaqa", "method": method, "models": ["m"]}))
        (run / "samples.jsonl").write_text("".join(json.dumps(
            {"id": i, "answer": a, "references": ["Prague"], "stats": {"stopped_by": s},
             "trace": t if method == "adafuse" else None}) + "\n" for i, a, s, t in rows))
    mod.main([str(tmp_path / "ada"), str(tmp_path / "one")])
    ada, one = capsys.readouterr().out.strip().splitlines()
    assert "n=3 stops={'budget': 1, 'eos': 2}" in ada and "lenient=33.3 official=66.7" in ada
    assert ada.endswith("overruled_stop_examples=1 rounds=1") and "lenient=50.0 official=50.0" in one
    mod.main([str(tmp_path / "ada"), str(tmp_path / "one"), "--same-examples", "--diff"])
    out = capsys.readouterr().out.splitlines()
    assert "n=2 " in out[0] and out[2].startswith("first - single {}: +0.0 [") and out[2].endswith("n=2")


def test_paired_runs_scores_each_run_and_the_paired_difference(tmp_path, capsys):
    """benchmarks/paired_runs.py: paper metric per run, first minus each other run over the shared
    examples, same predictions counted; runs of different tasks are refused."""
    mod = _benchmark_script("paired_runs")
    rows = {"a": [("q1", "4", 1.0), ("q2", "5", 1.0), ("q3", "7", 0.0)],
            "b": [("q1", "4", 1.0), ("q2", "6", 0.0)]}
    for name, recs in rows.items():
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"task": "gsm8k", "method": "adafuse", "half": "report"}))
        (run / "samples.jsonl").write_text("".join(json.dumps(
            {"id": i, "prediction": p, "metrics": {"exact_match": s}}) + "\n" for i, p, s in recs))
    mod.main([str(tmp_path / "a"), str(tmp_path / "b")])
    a, b, diff = capsys.readouterr().out.strip().splitlines()
    assert "n=3 exact_match=66.7" in a and "n=2 exact_match=50.0" in b
    assert diff.startswith("first - b: +50.0 [") and diff.endswith("n=2, same prediction 1")
    (tmp_path / "b" / "config.json").write_text(json.dumps({"task": "nq", "method": "single"}))
    with pytest.raises(SystemExit, match="different tasks"):
        mod.main([str(tmp_path / "a"), str(tmp_path / "b")])


def test_same_samples_counts_equal_records_and_ignores_a_named_trace_field(tmp_path):
    mod = _benchmark_script("same_samples")
    member = {"conf": [0.5, 0.25], "words": 1}
    rec = {"id": "q1", "prediction": "Paris", "trace": [{"members": [member]}]}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    moved = {**rec, "id": "q2", "trace": [{"members": [{**member, "conf": [0.5, 0.25000001]}]}]}
    a.write_text(json.dumps(rec) + "\n" + json.dumps({**moved, "trace": rec["trace"]}) + "\n")
    newer = {**rec, "trace": [{"members": [{**member, "proposed": [0]}]}]}  # a field the older run lacks
    b.write_text(json.dumps(newer) + "\n" + json.dumps(moved) + "\n" + json.dumps({**rec, "id": "q3"}) + "\n")
    assert mod.compare(a, b) == {"examples": 2, "same_prediction": 2, "same_trace": 0, "same_record": 0,
                                 "trace_numbers": 4}
    assert mod.compare(a, b, ["proposed"]) == {"examples": 2, "same_prediction": 2, "same_trace": 1,
                                               "same_record": 1, "trace_numbers": 4}
