"""What each notebook runs: its two presets, its validated parameters and its run plan.

Every notebook starts with a parameter ``preset``: ``"gpu"`` is the full run the committed
figures come from (real members, 100 dev examples per task, 256 new tokens); ``"cpu"`` is a
small run of the same cells (tiny in-memory members, 4 dev examples, short answers) that
finishes in a few minutes on a 2-core laptop; ``"auto"`` picks gpu when CUDA is available.
A parameter left at None takes the preset's value (``PRESETS``); any other value overrides it.

A notebook's runs are declared here, not discovered by executing it: ``runs_of(name, P)``
returns its run configurations, keyed the way the notebook reads them. The notebook decodes
the missing ones (``ensure_runs``), ``figures --plan`` lists them for several GPUs, and the
``quality`` command takes notebook 04's.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .runs import ensure_run, run_config

NOTEBOOKS = ("00_quickstart", "01_uncertainty_analysis", "02_trigger_rates", "03_diversity_ablations",
             "04_full_benchmark")
ALL_TASKS = "gsm8k,triviaqa,nq,squad,flores_en-de,flores_de-en"
ALL_METHODS = ("single", "unite", "gac", "sweetspan", "coolfusion", "rerank", "adafuse")
CPU_MODELS = "tiny:bpe,tiny:spm"  # random weights, two tokenizers: answers are noise, every code path runs

# preset -> {"common": values for every notebook, notebook: its own values}
PRESETS: dict[str, dict] = {
    "gpu": {
        "common": {"models": "qwen2.5-coder-0.5b,smollm2-135m", "limit": 100, "max_new_tokens": 256,
                   "batch_size": 64, "n_boot": 1000},
        "00_quickstart": {"task": "triviaqa", "limit": 8, "max_new_tokens": 64},
        "01_uncertainty_analysis": {"tasks": ALL_TASKS},
        "02_trigger_rates": {"tasks": ALL_TASKS, "thetas": [0.3, 0.5, 0.7, 0.9]},
        "03_diversity_ablations": {"tasks": "gsm8k,triviaqa,flores_de-en", "B_values": [1, 2, 3, 5],
                                   "branch_selects": ["topk", "distinct", "semantic"]},
        "04_full_benchmark": {"tasks": "nq,squad,triviaqa,gsm8k,flores_en-de,flores_de-en",
                              "methods": list(ALL_METHODS)},
    },
    "cpu": {
        "common": {"models": CPU_MODELS, "limit": 4, "max_new_tokens": 16, "batch_size": 8, "n_boot": 200},
        "00_quickstart": {"task": "triviaqa", "limit": 4, "max_new_tokens": 24},
        "01_uncertainty_analysis": {"tasks": "triviaqa,flores_en-de"},
        "02_trigger_rates": {"tasks": "triviaqa,flores_en-de", "thetas": [0.5, 0.7]},
        "03_diversity_ablations": {"tasks": "triviaqa", "B_values": [1, 3], "branch_selects": ["topk", "distinct"]},
        "04_full_benchmark": {"tasks": "triviaqa", "methods": ["single", "unite", "sweetspan", "adafuse"]},
    },
}


def resolve_preset(preset: str) -> str:
    """"gpu" or "cpu"; "auto": gpu when CUDA is available."""
    if preset == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    if preset not in PRESETS:
        raise ValueError(f"parameter preset: {preset!r} is not gpu, cpu or auto")
    return preset


def preset_values(name: str, preset: str) -> dict:
    """The values a preset gives notebook `name`."""
    p = PRESETS[resolve_preset(preset)]
    return {**p["common"], **p.get(name, {})}


class ParameterError(ValueError):
    """A notebook parameter is wrong. In a notebook (and papermill's error) it shows as its one
    line, not as a traceback through the package's checks."""

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of the traceback
        return [f"ParameterError: {self}"]


def notebook_params(name: str, preset: str = "auto", **values) -> "NotebookParams":
    """A notebook's parameters: the preset's values for every parameter left at None (or not
    given), the rest as given; validated. Prints the preset and what it chose."""
    if name not in NOTEBOOKS:
        raise ValueError(f"no notebook {name!r}; the notebooks are {', '.join(NOTEBOOKS)}")
    try:
        chosen = resolve_preset(preset)
        from_preset = {k: v for k, v in preset_values(name, chosen).items() if values.get(k) is None}
        P = NotebookParams.from_dict({**{k: v for k, v in values.items() if v is not None or k not in from_preset},
                                      **from_preset, "preset": chosen})
        from .runs import check_model_spec
        for spec in P.models:  # an unknown member is named here, not by load_session cells later
            check_model_spec(spec)
    except ValueError as e:
        raise ParameterError(str(e)) from None
    shown = ", ".join(f"{k}={getattr(P, k)!r}" for k in ("models", "task", "tasks", "split", "limit", "max_new_tokens")
                      if getattr(P, k) not in (None, ()))
    print(f"preset {chosen}{' (auto)' if preset == 'auto' else ''}: {shown}")
    return P


# The two traced runs the analysis notebooks share (method, decode options):
# PROBE: Cool-Fusion, one word per round and one candidate per member: every member's
#        confidence at every committed word start of the ensemble's path. It is also the
#        fixed-granularity ensemble that AdaFuse's cost is compared with.
# SELF:  one member alone with theta 0 (never branches): its greedy answer, with a
#        confidence at every word start.
PROBE = ("coolfusion", {})
SELF = ("adafuse", {"theta": 0.0, "M": 16})


def ablation_variants(theta: float, M: int, B: int, B_values: Sequence[int] = (1, 2, 3, 5),
                      branch_selects: Sequence[str] = ("topk", "distinct"), fixed_span: int | None = 3) -> list[dict]:
    """The diversity ablations: {"label", "key" (colour), "decode"} per variant. The first
    is the reference (B branches, top-k selection, adaptive spans); B = 1 is "without
    diversity-aware scaling", a fixed span "without adaptive commitment"."""
    base = {"theta": theta, "M": M}
    out = [{"label": f"B={B}", "key": "adafuse", "decode": {**base, "B": B}}]
    for b in B_values:
        if b != B:
            out.append({"label": f"B={b}" + (" (no scaling)" if b == 1 else ""), "key": "adafuse",
                        "decode": {**base, "B": b}})
    for sel in branch_selects:
        if sel != "topk":
            out.append({"label": f"{sel} B={B}", "key": f"adafuse-{sel}",
                        "decode": {**base, "B": B, "branch_select": sel}})
    if fixed_span:
        out.append({"label": f"fixed {fixed_span} words", "key": "adafuse-fixed",
                    "decode": {**base, "B": B, "span_words": fixed_span}})
    return out


TUNED = "adafuse (tuned)"


def benchmark_plan(methods: Sequence[str], models: Sequence[str], tuned: dict | None = None) -> list[dict]:
    """Rows of the benchmark: {"label", "method", "models", "decode"}; "single" becomes one
    row per member (that member alone), every other method one row over all members.
    tuned: {task: AdaFuse settings} (the `tune` command's choice) adds the row "adafuse
    (tuned)", whose settings depend on the task (row["decode_by_task"])."""
    out = []
    for m in methods:
        if m == "single":
            out += [{"label": f"single: {x}", "method": "single", "models": [x], "decode": {}} for x in models]
        else:
            out.append({"label": m, "method": m, "models": list(models), "decode": {}})
    if tuned:
        out.append({"label": TUNED, "method": "adafuse", "models": list(models), "decode": {},
                    "decode_by_task": {t: dict(d) for t, d in tuned.items()}})
    return out


def row_decode(row: dict, task: str) -> dict | None:
    """A benchmark row's decode options for one task; None where the row has no run for it
    (the tuned row on a task that was not tuned: its cell stays empty, not the defaults)."""
    if "decode_by_task" in row:
        return row["decode_by_task"].get(task)
    return row["decode"]



@dataclass(frozen=True)
class NotebookParams:
    """The parameters of every notebook, validated in the cell after the parameters cell.

    Unknown names are refused (papermill only warns about them); comma-separated
    strings become tuples."""
    models: tuple = ()
    task: str | None = None
    tasks: tuple = ()
    methods: tuple = ()
    source: str = "auto"
    data_dir: str | None = None
    limit: int | None = None
    limits: dict = field(default_factory=dict)  # per task, replaces limit (None: every example)
    split: str = "dev"  # the data split: <data_dir>/<task>/<split>.jsonl, dev or test
    half: str | None = None  # None: every example; "tune" / "report": that half (runs.select_half)
    tuned: dict = field(default_factory=dict)  # per task, AdaFuse settings chosen by the tune command
    dtype: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    theta: float = 0.7
    thetas: tuple = ()
    M: int = 3
    B: int = 3
    criterion: str = "margin"
    B_values: tuple = ()
    branch_selects: tuple = ()
    fixed_span: int | None = None  # 0 or None: leave the fixed-span variant out
    question: int = 0
    n_bins: int = 10
    n_boot: int = 1000
    launch: bool = True
    runs_dir: str = "runs/notebooks/runs"
    out_dir: str = "runs/notebooks/out"
    fig_dir: str | None = None  # None: <out_dir>/figures
    preset: str | None = None  # the preset the values came from (notebook_params), for the record

    def __post_init__(self):
        from .decoding import METHODS
        from .decoding.config import BRANCH_SELECT, CRITERIA
        from .fields import check_field_types
        from .tasks import get_task

        def need(ok, msg):
            if not ok:
                raise ValueError(f"parameter {msg}")

        if self.limit == "all":
            object.__setattr__(self, "limit", None)
        need(self.limit is None or (isinstance(self.limit, int) and not isinstance(self.limit, bool)
                                    and self.limit >= 1), f"limit must be >= 1 or 'all', got {self.limit!r}")
        check_field_types(self, ValueError, "parameter ")  # {"M": null}, {"launch": "no"}: named, not a TypeError

        def tup(name, kind=str):
            """A list parameter (or a comma-separated string) as a tuple of `kind`."""
            v = getattr(self, name)
            if isinstance(v, str):
                v = [x.strip() for x in v.split(",") if x.strip()]
            out = []
            for x in v or ():
                if kind is not str and isinstance(x, str):
                    try:
                        x = float(x)
                    except ValueError:
                        pass
                ok = isinstance(x, str) if kind is str else (
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and (kind is float or float(x).is_integer()))
                need(ok, f"{name} must be a list of {({str: 'strings', float: 'numbers', int: 'whole numbers'})[kind]}, "
                         f"got {x!r}")
                out.append(kind(x))
            object.__setattr__(self, name, tuple(out))

        for name in ("models", "tasks", "methods", "branch_selects"):
            tup(name)
        tup("thetas", float)
        tup("B_values", int)
        for t in self.tasks + ((self.task,) if self.task else ()):
            get_task(t)  # raises with the closest name
        for m in self.methods:
            need(m in METHODS, f"methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
        need(self.source in ("auto", "local", "hub", "sample"), f"source: {self.source!r} is not auto/local/hub/sample")
        for t, n in dict(self.limits or {}).items():
            get_task(t)
            need(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1), f"limits[{t!r}] must be None or >= 1, got {n!r}")
        from .runs import HALVES, SPLITS, UsageError, _dtype
        need(self.split in SPLITS, f"split must be dev or test, got {self.split!r}")
        need(self.half is None or self.half in HALVES, f"half must be None, tune or report, got {self.half!r}")
        for t in dict(self.tuned or {}):
            get_task(t)
        try:
            _dtype(self.dtype)
        except UsageError as e:
            raise ValueError(f"parameter dtype: {e}") from e
        need(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")
        need(all(0.0 <= t <= 1.0 for t in self.thetas + (self.theta,)), "theta(s) must be in [0, 1]")
        need(self.M >= 1 and self.B >= 1 and all(b >= 1 for b in self.B_values), "M, B and B_values must be >= 1")
        need(self.criterion in CRITERIA, f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        need(all(b in BRANCH_SELECT for b in self.branch_selects), f"branch_selects must be in {BRANCH_SELECT}")
        need(self.fixed_span is None or self.fixed_span >= 0, "fixed_span must be >= 0")
        need(self.n_bins >= 1 and self.n_boot >= 1, "n_bins and n_boot must be >= 1")

    @classmethod
    def from_dict(cls, values: dict) -> "NotebookParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            import difflib
            hints = [f"{u!r}" + (f" (did you mean {difflib.get_close_matches(u, names, 1)[0]!r}?)"
                                 if difflib.get_close_matches(u, names, 1) else "") for u in unknown]
            raise ValueError(f"unknown notebook parameter(s): {', '.join(hints)}")
        return cls(**values)

    def run_kw(self, task: str | None = None) -> dict:
        """The RunConfig options shared by every run a notebook asks for (for `task`: its own limit)."""
        limit = self.limits[task] if task in (self.limits or {}) else self.limit
        return {"limit": limit, "source": self.source, "data_dir": self.data_dir, "batch_size": self.batch_size,
                "seed": self.seed, "max_new_tokens": self.max_new_tokens, "device": self.device, "dtype": self.dtype,
                "split": self.split, "half": self.half}

    @property
    def torch_dtype(self):
        from .runs import _dtype
        return _dtype(self.dtype)

    def dirs(self) -> tuple[Path, Path, Path]:
        """(runs_dir, out_dir, fig_dir); out_dir and fig_dir are created (runs_dir when a run is).
        fig_dir defaults to <out_dir>/figures: only `python -m adafuse_lab figures` writes figures/."""
        runs, out = Path(self.runs_dir), Path(self.out_dir)
        figs = out / "figures" if self.fig_dir is None else Path(self.fig_dir)
        out.mkdir(parents=True, exist_ok=True)
        figs.mkdir(parents=True, exist_ok=True)
        return runs, out, figs


# ---------------------------------------------------------------- run plans


def uncertainty_runs(P: "NotebookParams") -> dict:
    """01: per task the probe ensemble ("probe", task) and each member alone ("alone", task, member)."""
    out = {}
    for t in P.tasks:
        out["probe", t] = run_config(t, P.models, *PROBE, **P.run_kw())
        for m in P.models:
            out["alone", t, m] = run_config(t, [m], *SELF, **P.run_kw())
    return out


def trigger_thetas(P: "NotebookParams") -> list[float]:
    """02: the thetas decoded: `thetas` and the main `theta`."""
    return sorted(set(P.thetas) | {P.theta})


def trigger_runs(P: "NotebookParams") -> dict:
    """02: AdaFuse at each theta ("adafuse", task, theta), the probe ("probe", task) and
    SweetSpan ("sweetspan", task)."""
    out = {}
    for t in P.tasks:
        for th in trigger_thetas(P):
            out["adafuse", t, th] = run_config(t, P.models, "adafuse", {"theta": th, "M": P.M, "B": P.B}, **P.run_kw())
        out["probe", t] = run_config(t, P.models, *PROBE, **P.run_kw())
        out["sweetspan", t] = run_config(t, P.models, "sweetspan", {}, **P.run_kw())
    return out


def ablation_runs(P: "NotebookParams") -> dict:
    """03: every variant of ablation_variants on every task: (task, variant label)."""
    variants = ablation_variants(P.theta, P.M, P.B, P.B_values, P.branch_selects, P.fixed_span)
    return {(t, v["label"]): run_config(t, P.models, "adafuse", v["decode"], **P.run_kw())
            for t in P.tasks for v in variants}


def benchmark_runs(P: "NotebookParams") -> dict:
    """04: every row of benchmark_plan on every task it has a run for: (row label, task)."""
    return {(row["label"], t): run_config(t, row["models"], row["method"], row_decode(row, t), **P.run_kw(t))
            for t in P.tasks for row in benchmark_plan(P.methods, P.models, P.tuned)
            if row_decode(row, t) is not None}


PLANS = {"00_quickstart": lambda P: {},  # 00 decodes its few questions itself, into no run directory
         "01_uncertainty_analysis": uncertainty_runs, "02_trigger_rates": trigger_runs,
         "03_diversity_ablations": ablation_runs, "04_full_benchmark": benchmark_runs}


def runs_of(name: str, P: "NotebookParams") -> dict:
    """The run configurations notebook `name` reads with parameters P: {key: RunConfig}."""
    return PLANS[name](P)


def ensure_runs(plan: dict, runs_dir, launch: bool = True, log=print) -> dict:
    """{key: Run or None} for a run plan: each saved run found, each missing one decoded when
    `launch` (members loaded once for all of them), with a progress bar over the runs
    ("run k of N", time left) and one over the examples of the run being decoded."""
    from tqdm.auto import tqdm

    from .runs import finished_run, run_dir
    todo = [k for k, cfg in plan.items() if finished_run(run_dir(runs_dir, cfg)) is None]
    found = len(plan) - len(todo)
    log(f"{len(plan)} runs: {found} found in {runs_dir}, {len(todo)} to decode" +
        ("" if launch or not todo else " (launch=False: left out)"))
    out, sessions = {}, {}
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not (launch and todo))
    for key, cfg in plan.items():
        if key in todo and launch:
            k = bar.n + 1
            bar.set_description(f"run {k} of {len(todo)}: {cfg.task} {cfg.method}")
            out[key] = ensure_run(cfg, runs_dir, launch=True, progress=True, log=lambda *_: None,
                                  sessions=sessions)
            bar.update(1)
        else:
            out[key] = ensure_run(cfg, runs_dir, launch=False, log=lambda *_: None)
    bar.close()
    return out


def write_summary(out_dir, summary: dict, name: str = "summary.json") -> Path:
    """The numbers a notebook records, as stable JSON (NaN becomes null)."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return None if not math.isfinite(float(x)) else round(float(x), 6)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        return x
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(summary), indent=2, sort_keys=True) + "\n")
    return path
