"""The notebooks: paired with py:percent scripts, output-free, parameterised, executed end to end.

Every notebook runs once through papermill with notebooks/params/smoke.yaml (its cpu
preset: tiny members, 4 examples of each dev split in data/) via the `figures` command's
own code; the tests then assert on the summary.json each one records. About 4 minutes on
2 CPU cores. tests/test_browser.py runs 00 in JupyterLab in a real browser.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from adafuse_lab import figures, plans

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NAMES = ["00_quickstart", "01_uncertainty_analysis", "02_trigger_rates", "03_diversity_ablations", "04_full_benchmark"]
PATHS = {n: NB_DIR / f"{n}.ipynb" for n in NAMES}
SCRIPTS = {n: NB_DIR / f"{n}.py" for n in NAMES}


# ------------------------------------------------------------------ static checks (fast)


def test_every_numbered_notebook_is_known():
    assert [p.stem for p in figures.notebooks(NB_DIR)] == NAMES == list(plans.NOTEBOOKS)
    assert not (NB_DIR / "build_notebooks.py").exists()  # the notebooks are the source: no generator


@pytest.mark.parametrize("name", NAMES)
def test_paired_script_in_sync(name):
    """Each notebook and its py:percent script hold the same cells (jupytext pairing: saving in
    JupyterLab with jupytext installed writes both; `jupytext --sync notebooks/*.ipynb` by hand)."""
    import jupytext
    nb = jupytext.read(PATHS[name])
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    # the header names the jupytext version that wrote the script: a newer one must not fail it
    same = lambda text: re.sub(r"(?m)^#\s+jupytext_version: .*$", "", text)
    assert same(jupytext.writes(nb, "py:percent")) == same(SCRIPTS[name].read_text()), (
        f"{PATHS[name].name} and {SCRIPTS[name].name} differ: run `jupytext --sync {PATHS[name]}`")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(PATHS[name], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {cell.id} has outputs"
    if shutil.which("nbstripout"):  # cell ids stay: JupyterLab gives new cells random ones
        r = subprocess.run(["nbstripout", "--keep-id", "--verify", str(PATHS[name])], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", NAMES)
def test_presets_explained_and_first(name):
    nb = nbformat.read(PATHS[name], as_version=4)
    first_md = next(c for c in nb.cells if c.cell_type == "markdown").source
    assert "**Two presets.**" in first_md and '"cpu"' in first_md and '"gpu"' in first_md
    params = pm.inspect_notebook(str(PATHS[name]))
    assert next(iter(params)) == "preset" and params["preset"]["default"] == '"auto"'
    # every value a preset sets is left at None in the notebook, so that the preset decides
    for key in plans.preset_values(name, "gpu"):
        if key in params:
            assert params[key]["default"] == "None", f"{name}: {key} should be None (the preset's)"
    assert params["fig_dir"]["default"] == "None"  # figures under out_dir; only `figures` writes figures/


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell(name):
    """One cell tagged parameters; each line `name = literal  # comment`; papermill sees every name."""
    nb = nbformat.read(PATHS[name], as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = []
    for line in tagged[0].source.splitlines():
        if not line.strip() or line.startswith("# "):  # a comment line groups the parameters
            continue
        code, sep, comment = line.partition("  # ")
        assert sep and comment.strip(), f"{name}: no comment on {line!r}"
        assert line.count("=") == 1, f"{name}: papermill cannot parse {line!r} (one '=' per line)"
        key, _, value = code.partition("=")
        ast.literal_eval(value.strip())  # plain literals only
        names.append(key.strip())
    assert names == list(pm.inspect_notebook(str(PATHS[name])))
    for key in ("fig_dir", "out_dir"):
        assert key in names


@pytest.mark.parametrize("spec", ["smoke", "full", "gpu"])
def test_parameter_files_name_existing_parameters(spec):
    pfile = figures.load_params(spec, NB_DIR)
    declared = {n: set(pm.inspect_notebook(str(PATHS[n]))) for n in NAMES}
    assert set(pfile["notebooks"]) <= set(NAMES)
    for n, own in pfile["notebooks"].items():
        assert set(own) <= declared[n], f"{spec}: {n} has no parameter(s) {set(own) - declared[n]}"
    for key in pfile["common"]:
        assert any(key in d for d in declared.values()), f"{spec}: no notebook declares {key!r}"
    for n in NAMES:
        injected = figures.parameters_for(PATHS[n], pfile, {"runs_dir": "r", "out_dir": "o", "fig_dir": "f"})
        assert set(injected) <= declared[n]
        assert injected["fig_dir"] == "f" and injected["out_dir"] == "o"


def test_parameter_file_errors(tmp_path):
    from adafuse_lab.runs import UsageError
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"common": {}, "notebooks": {"00_quickstart": {"thetaa": 0.5}}}))
    with pytest.raises(UsageError, match="no parameter.*thetaa"):
        figures.parameters_for(PATHS["00_quickstart"], figures.load_params(str(bad), NB_DIR), {})
    paths = tmp_path / "paths.json"
    paths.write_text(json.dumps({"common": {"fig_dir": "x"}}))
    with pytest.raises(UsageError, match="set by the figures command"):
        figures.parameters_for(PATHS["00_quickstart"], figures.load_params(str(paths), NB_DIR), {})
    with pytest.raises(UsageError, match="no parameter file"):
        figures.load_params("nope", NB_DIR)
    with pytest.raises(UsageError, match="matches none"):
        figures.notebooks(NB_DIR, ["99"])


def test_cli_registers_figures():
    from adafuse_lab.cli import build_parser
    args = build_parser().parse_args(["figures", "--params", "smoke", "--only", "00,02", "--out", "x"])
    assert args.func is figures.cmd_figures and args.params == "smoke" and args.only == "00,02"


# ------------------------------------------------------------------ executed (slow-ish)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    # The GPU route: list the runs (the notebooks' declared plans), decode them (decode_plan),
    # then execute the notebooks, which must find every run they need and decode none.
    plan = figures.plan("smoke", work_dir=base / "work", nb_dir=NB_DIR, log=log)
    decoded = figures.decode_plan(plan, base / "work" / "runs", log=log)
    # A cell limit and one retry: ipykernel 7 + nbclient rarely lose a message and wait forever
    # (seen once on a widget cell); a retry finds the saved runs and only redoes the rest.
    report = figures.build("smoke", fig_dir=base / "figures", work_dir=base / "work", nb_dir=NB_DIR,
                           cell_timeout=300, retries=1, log=log)
    return {"report": report, "figures": base / "figures", "work": base / "work", "plan": plan,
            "decoded": decoded}


def summary(executed, name) -> dict:
    s = executed["report"][name]["summary"]
    assert s is not None, f"{name} wrote no summary.json"
    return s


def test_all_notebooks_ran(executed):
    assert list(executed["report"]) == NAMES
    for name in NAMES:
        nb = nbformat.read(executed["report"][name]["executed"], as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors


def _printed(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_plan_lists_every_run(executed):
    planned = executed["plan"].read_text().splitlines()
    assert planned and len(planned) == len(set(planned))
    assert len(executed["decoded"]["decoded"]) == len(planned) and not executed["decoded"]["busy"]
    for name in NAMES[1:]:  # 00 decodes its few questions itself, without run directories
        text = _printed(executed["report"][name]["executed"])
        assert " 0 to decode" in text and "found in" in text, name


def test_figures_written(executed):
    written = {p.name for p in executed["figures"].iterdir()}
    for name in NAMES:
        listed = set(summary(executed, name)["figures"])
        assert listed and listed <= written
        stems = {Path(f).stem for f in listed}
        assert all(f"{s}.png" in written and f"{s}.pdf" in written for s in stems)
    for png in executed["figures"].glob("*.png"):
        assert b"Software" not in png.read_bytes()


def test_quickstart_numbers(executed):
    s = summary(executed, "00_quickstart")
    assert s["preset"] == "cpu" and s["models"] == ["tiny:bpe", "tiny:spm"] and s["source"] == "local"
    assert s["n_questions"] == 4 and len(s["answers"]) == 4
    assert all(a["rounds"] >= 1 and 0 <= a["triggered"] <= a["rounds"] for a in s["answers"])
    assert 0.0 <= s["trigger_rate"] <= 1.0
    w = s["widget"]
    assert (w["theta"], w["M"], w["B"], w["criterion"]) == (0.7, 3, 3, "margin")  # ran once with the defaults
    assert w["question"] == "triviaqa-0000" and w["rounds"] >= 1


def _unit(x):
    return x is None or 0.0 <= x <= 1.0


def test_uncertainty_numbers(executed):
    s = summary(executed, "01_uncertainty_analysis")
    assert s["tasks"] == ["triviaqa", "flores_en-de"] and s["n_member_words"] > 0
    assert {r["task"] for r in s["auroc"]} == {"triviaqa", "flores_en-de", "all"}
    for row in s["auroc"]:
        assert all(_unit(v) for k, v in row.items() if k.startswith(("AUROC", "ECE")) or k.endswith("rate"))
    assert all(_unit(v) for v in s["caught_at_30pct"].values())
    assert {r["task"] for r in s["answer_level"]} == {"triviaqa"}  # translation has no per-answer correctness
    for row in s["means"]:
        assert 0 <= row["margin"] <= 1 and 0 <= row["entropy"] <= 1


def test_trigger_rate_numbers(executed):
    s = summary(executed, "02_trigger_rates")
    assert s["tasks"] == ["triviaqa", "flores_en-de"]
    for row in s["at_theta"]:
        # recomputing from the stored confidences at the decoding theta reproduces the branching exactly
        assert row["recomputed trigger"] == pytest.approx(row["measured trigger"])
        assert _unit(row["measured trigger"]) and _unit(row["simulated trigger"])
        assert row["simulated rounds/word"] <= 1.0 + 1e-9
    for task, c in s["curves"].items():
        for key in ("trigger_rate", "word_rate"):
            vals = c[key]
            assert all(a <= b + 1e-9 for a, b in zip(vals, vals[1:])), f"{task} {key} not monotone in theta"
        assert c["rounds_per_word"][-1] == pytest.approx(1.0)  # theta 1: one word per round
    assert set(s["claim"]["by_kind"]) == {"qa", "mt"}
    methods = {(r["task"], r["method"]) for r in s["costs"]}
    assert ("triviaqa", "Cool-Fusion (1 word)") in methods and ("flores_en-de", "AdaFuse θ=0.7") in methods
    assert all(r["forwards"] > 0 for r in s["costs"])


def test_ablation_numbers(executed):
    s = summary(executed, "03_diversity_ablations")
    assert s["variants"] == ["B=3", "B=1 (no scaling)", "distinct B=3", "fixed 3 words"]
    rows = {r["variant"]: r for r in s["rows"]}
    assert set(rows) == set(s["variants"])
    for r in rows.values():
        assert r["n"] == 4 and r["forwards"] > 0 and r["score lo"] <= r["score"] <= r["score hi"]
        assert r["metric"] == "lenient"
    assert rows["B=3"]["Δ vs ref"] == 0.0


def test_benchmark_numbers(executed):
    s = summary(executed, "04_full_benchmark")
    assert s["labels"] == ["single: tiny:bpe", "single: tiny:spm", "unite", "sweetspan", "adafuse", "adafuse (tuned)"]
    assert s["missing"] == [] and s["tuned"] == {"triviaqa": {"theta": 0.5}}
    # AdaFuse and the tuned row, each against the best single member and the best baseline
    assert s["best_single"].startswith("single: ") and s["best_baseline"] in ("unite", "sweetspan")
    pairs = {(r["a"], r["b"]) for r in s["paired"]}
    assert pairs == {(a, b) for a in ("adafuse", "adafuse (tuned)") for b in (s["best_single"], s["best_baseline"])}
    assert all(r["n"] == 4 and r["low"] <= r["diff"] <= r["high"] for r in s["paired"])
    table = {r["method"]: r for r in s["table"]}
    for label in s["labels"]:
        r = table[label]
        assert r["triviaqa n"] == 4 and 0 <= r["triviaqa"] <= 100 and r["forwards/ex"] > 0
    # whose candidates win, from AdaFuse's traces: one row per member, and the two example groups
    assert [(r["task"], r["member"]) for r in s["overrules"]] == [("triviaqa", "tiny:bpe"), ("triviaqa", "tiny:spm")]
    assert all(r["rounds"] > 0 and 0 <= r["favourite_lost"] <= 1 for r in s["overrules"])
    assert [r["favourite_lost"] for r in s["overrule_split"]] == [True, False]
    assert sum(r["n"] for r in s["overrule_split"]) == 4
    assert {r["member"] for r in s["top1"]} <= {"tiny:bpe", "tiny:spm"}
    assert all(r["branched_rounds"] > 0 and 0 <= r["favourite_not_top1"] <= 1 and 0 <= r["top1_lost"] <= 1
               for r in s["top1"])
    # 04 reuses the AdaFuse and SweetSpan runs that 02 made (same settings -> same run directory)
    runs = executed["work"] / "runs" / "triviaqa"
    assert len(list(runs.glob("adafuse-*"))) == 1 and len(list(runs.glob("sweetspan-*"))) == 1
    assert len(list(runs.glob("adafuse_theta0.5-*"))) == 1  # the tuned row: theta 0.5 on triviaqa


def test_plan_is_declared_not_executed(tmp_path, monkeypatch):
    """figures --plan reads each notebook's parameters cell and asks plans.runs_of: no kernel starts."""
    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a notebook was executed"))
    configs = figures.plan_configs("smoke", tmp_path, nb_dir=NB_DIR)
    expected = {}
    for name in NAMES:
        values = figures.notebook_values(PATHS[name], figures.load_params("smoke", NB_DIR),
                                         {"runs_dir": "r", "out_dir": "o", "fig_dir": "f"})
        for cfg in plans.runs_of(name, plans.notebook_params(name, **values)).values():
            expected[json.dumps(cfg.to_dict(), sort_keys=True)] = cfg
    assert configs == list(expected.values()) and len(configs) > 10
    assert {c.models[0] for c in configs} <= {"tiny:bpe", "tiny:spm"}
    gpu = figures.plan_configs("full", tmp_path, nb_dir=NB_DIR)
    assert len(gpu) > len(configs) and all(c.limit == 100 and c.max_new_tokens == 256 for c in gpu)


def test_no_deprecation_warning_from_transformers():
    """pyproject pins transformers below the release that deprecates past_key_values=: decoding
    warns nothing (the notebooks showed that warning in red in every decoding cell)."""
    import warnings

    from adafuse_lab.decoding import DecodeConfig, decode
    from adafuse_lab.models import load_session
    members = [load_session("tiny:bpe"), load_session("tiny:spm")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="(?!transformers)")
        decode("adafuse", members, ["Question: Which planet is red?\nAnswer:"], DecodeConfig(max_new_tokens=6))
