"""python -m adafuse_lab figures: re-execute the notebooks and write their figures.

    python -m adafuse_lab figures                      # full parameters, figures into figures/
    python -m adafuse_lab figures --params smoke --out /tmp/figs --only 00,02

Every numbered notebook in notebooks/ runs through papermill with the parameters
of notebooks/params/<name>.yaml (or .json, or a path): the "common" section goes
to each notebook that declares the parameter, a notebook's own section overrides
it. The executed copies, each notebook's summary.json and the shared run
directories go under --work (git-ignored runs/notebooks/ by default); PNG and PDF
figures go to --out.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
PATH_PARAMS = ("runs_dir", "out_dir", "fig_dir")  # set by this command, never by a parameter file


def notebook_dir(path=None) -> Path:
    """notebooks/ of the current directory, else of the source checkout."""
    for cand in ([Path(path)] if path else [Path.cwd() / "notebooks", REPO / "notebooks"]):
        if cand.is_dir() and any(cand.glob("[0-9][0-9]_*.ipynb")):
            return cand.resolve()
    from .runs import UsageError
    raise UsageError(f"no numbered notebooks found in {path or 'notebooks/'}; run from the repository root "
                     "or pass --notebooks")


def notebooks(nb_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order; `only`: prefixes or names such as "00" or "02_trigger_rates"."""
    found = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        keep = [p for p in found if any(p.stem == o or p.stem.startswith(o) for o in only)]
        unmatched = [o for o in only if not any(p.stem == o or p.stem.startswith(o) for p in found)]
        if unmatched:  # one typo among several prefixes is refused too, never dropped silently
            from .runs import UsageError
            raise UsageError(f"--only {','.join(unmatched)} matches none of {', '.join(p.stem for p in found)}")
        found = keep
    return found


def load_params(spec: str, nb_dir: Path) -> dict:
    """A parameter file: a name in notebooks/params ("smoke", "full") or a path; YAML or JSON.
    Returns {"common": {...}, "notebooks": {name: {...}}}."""
    from .runs import UsageError
    if not str(spec).strip():
        raise UsageError("--params is empty; give smoke, full or the path of a YAML or JSON file")
    path = Path(spec)
    if not path.exists():
        for ext in (".yaml", ".yml", ".json"):
            if (nb_dir / "params" / f"{spec}{ext}").exists():
                path = nb_dir / "params" / f"{spec}{ext}"
                break
        else:
            names = sorted({p.stem for p in (nb_dir / "params").glob("*.*")})
            raise UsageError(f"no parameter file {spec!r}; choose one of {', '.join(names) or 'none'} or give a path")
    if path.exists() and not path.is_file() and not path.is_dir():  # a pipe or device would block or never end
        raise UsageError(f"--params {path} is not a regular file; give a YAML or JSON file")
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise UsageError(f"--params {path} is a folder; give a YAML or JSON file") from None
    except OSError as e:
        raise UsageError(f"cannot read the parameter file {path} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start}); save the parameter file as UTF-8") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text) or {}
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    except Exception as e:  # yaml.YAMLError
        if type(e).__module__.split(".")[0] != "yaml":
            raise
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with the sections common and notebooks, "
                         f"got a {type(data).__name__}")
    bad = [k for k in ("common", "notebooks") if not isinstance(data.get(k) or {}, dict)]
    bad += [f"notebooks.{k}" for k, v in (data.get("notebooks") or {}).items()
            if isinstance(data.get("notebooks"), dict) and not isinstance(v or {}, dict)]
    if bad:
        raise UsageError(f"{path}: section(s) {', '.join(bad)} must map parameter names to values")
    unknown = set(data) - {"common", "notebooks"}
    if unknown:
        raise UsageError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; use common and notebooks")
    names = [p.stem for p in notebooks(nb_dir)]
    strays = [k for k in (data.get("notebooks") or {}) if k not in names]
    if strays:  # a misspelt notebook name would leave that notebook at its defaults, silently
        from .runs import closest
        raise UsageError(f"{path}: notebooks.{strays[0]} names no notebook{closest(str(strays[0]), names)}; "
                         f"the notebooks are {', '.join(names)}")
    return {"common": dict(data.get("common") or {}), "notebooks": {k: dict(v or {}) for k, v in
                                                                    (data.get("notebooks") or {}).items()},
            "path": str(path)}


def parameters_for(nb: Path, pfile: dict, paths: dict) -> dict:
    """The parameters injected into one notebook. Names a notebook does not declare are an
    error for its own section and skipped for "common"; papermill would only warn."""
    import papermill as pm
    from .runs import UsageError
    declared = set(pm.inspect_notebook(str(nb)))
    own = pfile["notebooks"].get(nb.stem, {})
    bad = sorted(set(own) - declared)
    if bad:
        raise UsageError(f"{pfile.get('path', 'parameters')}: {nb.stem} has no parameter(s) {', '.join(bad)}; "
                         f"it declares {', '.join(sorted(declared))}")
    fixed = sorted(set(own) & set(PATH_PARAMS) | set(pfile["common"]) & set(PATH_PARAMS))
    if fixed:
        raise UsageError(f"{', '.join(fixed)} are set by the figures command (--out, --work), not the parameter file")
    out = {k: v for k, v in pfile["common"].items() if k in declared}
    out.update(own)
    out.update({k: str(v) for k, v in paths.items() if k in declared})
    return out


@contextlib.contextmanager
def environment(**values):
    """Set environment variables for the kernels started inside (they inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def headless():
    """$ADAFUSE_HEADLESS=1: plots.interact then draws its figure without creating widgets."""
    from .plots import HEADLESS_ENV
    return environment(**{HEADLESS_ENV: "1"})


def build(params: str = "full", fig_dir="figures", work_dir="runs/notebooks", only: Sequence[str] | None = None,
          nb_dir=None, kernel: str = "python3", cell_timeout: float | None = None, retries: int = 0,
          log=print) -> dict:
    """Execute the notebooks; returns {notebook: {"seconds", "executed", "summary", "attempts"}}.

    cell_timeout: seconds a cell may run (None: no limit). retries: how often a notebook
    whose kernel stopped answering (a cell timeout, a dead kernel) is run again; finished
    runs are found in runs_dir, so a retry only redoes what was not saved. A cell that
    raises is never retried."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    from .runs import UsageError
    nb_dir = notebook_dir(nb_dir)
    pfile = load_params(params, nb_dir)
    check_kernel(kernel)
    fig_dir, work_dir = Path(fig_dir).resolve(), Path(work_dir).resolve()
    runs_dir = work_dir / "runs"
    for nb in notebooks(nb_dir, only):  # every notebook's parameters are checked before the first one runs
        check_values(nb, pfile, {"runs_dir": runs_dir, "out_dir": work_dir / nb.stem, "fig_dir": fig_dir})
    work_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for nb in notebooks(nb_dir, only):
        paths = {"runs_dir": runs_dir, "out_dir": work_dir / nb.stem, "fig_dir": fig_dir}
        values = parameters_for(nb, pfile, paths)
        executed = work_dir / nb.name
        t0 = time.perf_counter()
        log(f"{nb.stem}: running with {Path(pfile['path']).name} ...")
        for attempt in range(retries + 1):
            try:
                with headless():
                    pm.execute_notebook(str(nb), str(executed), parameters=values, cwd=str(nb.parent),
                                        kernel_name=kernel, progress_bar=False, log_output=False,
                                        execution_timeout=cell_timeout)
                break
            except pm.PapermillExecutionError as e:
                raise UsageError(f"{nb.stem} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; "
                                 f"the executed copy is {executed}") from e
            except (TimeoutError, DeadKernelError) as e:  # the kernel, not the notebook, went wrong
                if attempt == retries:
                    raise UsageError(f"{nb.stem}: the kernel stopped answering ({type(e).__name__}: {e}); "
                                     f"the executed copy is {executed}") from e
                log(f"{nb.stem}: kernel stopped answering ({type(e).__name__}); running it again")
        secs = time.perf_counter() - t0
        summary_path = paths["out_dir"] / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        report[nb.stem] = {"seconds": round(secs, 1), "executed": str(executed), "summary": summary,
                           "attempts": attempt + 1}
        log(f"{nb.stem}: done in {secs:.1f} s; figures: {', '.join((summary or {}).get('figures', [])) or 'none'}")
    return report


def check_kernel(name: str) -> None:
    """The Jupyter kernel the notebooks run on is installed (papermill would fail only after the
    work folder is made)."""
    from jupyter_client.kernelspec import KernelSpecManager

    from .runs import UsageError, closest
    names = sorted(KernelSpecManager().find_kernel_specs())
    if name not in names:
        raise UsageError(f"--kernel {name}: no such Jupyter kernel{closest(name, names)}; install one with "
                         f"`python -m ipykernel install --user --name {name}` or choose an installed one")


def notebook_values(nb: Path, pfile: dict, paths: dict) -> dict:
    """Every parameter of notebook `nb` as a run with this parameter file would see it: the
    parameters cell's literals (read, not executed), then the file's values."""
    import ast

    import papermill as pm
    declared = pm.inspect_notebook(str(nb))
    values = {k: ast.literal_eval(v["default"]) for k, v in declared.items()}
    values.update(parameters_for(nb, pfile, paths))
    return values


def check_values(nb: Path, pfile: dict, paths: dict) -> None:
    """Refuse a notebook's parameters before any notebook runs: the names (parameters_for), the
    values (plans.NotebookParams), and for a split other than dev its data files, looked for from
    the notebook's folder as the kernel will (runs.check_data)."""
    import io

    from .plans import notebook_params
    from .runs import RunConfig, UsageError, _get_task, check_data
    parameters_for(nb, pfile, paths)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its one-line preset report
            P = notebook_params(nb.stem, **notebook_values(nb, pfile, paths))
    except (KeyError, ValueError) as e:
        raise UsageError(f"{nb.stem}: {e.args[0] if e.args else e}") from e  # a KeyError's str() quotes it
    from .plans import runs_of
    from .runs import run_config, validate
    configs = list(runs_of(nb.stem, P).values())
    if not configs and P.task:  # 00 decodes its questions itself: its members, task and knobs
        configs = [run_config(P.task, P.models, "adafuse", {"theta": P.theta, "M": P.M, "B": P.B,
                                                            "criterion": P.criterion}, **P.run_kw())]
    here = Path.cwd()
    os.chdir(nb.parent)  # the kernel runs there: a relative data_dir, model path and data search start from it
    try:
        for cfg in configs:  # every member, method, device, dtype and decode value, as `run` checks them
            validate(cfg, warn_degenerate=False)
        if P.split != "dev":
            for task in P.tasks or (P.task,):
                check_data(RunConfig(task=task, models=P.models, source=P.source, data_dir=P.data_dir,
                                     split=P.split), _get_task(task))
    except UsageError as e:
        raise UsageError(f"{nb.stem}: {e}") from e
    finally:
        os.chdir(here)


def plan_configs(params: str = "full", work_dir="runs/notebooks", only: Sequence[str] | None = None,
                 nb_dir=None) -> list:
    """The RunConfigs the notebooks read with this parameter file, each once, in notebook order:
    each notebook's declared run plan (plans.runs_of); nothing is executed."""
    from .plans import notebook_params, runs_of
    nb_dir = notebook_dir(nb_dir)
    pfile = load_params(params, nb_dir)
    work_dir = Path(work_dir).resolve()
    out: dict = {}
    for nb in notebooks(nb_dir, only):
        paths = {"runs_dir": work_dir / "runs", "out_dir": work_dir / nb.stem, "fig_dir": work_dir / "figures"}
        check_values(nb, pfile, paths)
        P = notebook_params(nb.stem, **notebook_values(nb, pfile, paths))
        for cfg in runs_of(nb.stem, P).values():
            out.setdefault(json.dumps(cfg.to_dict(), sort_keys=True), cfg)
    return list(out.values())


def plan(params: str = "full", work_dir="runs/notebooks", only: Sequence[str] | None = None, nb_dir=None,
         kernel: str = "python3", log=print) -> Path:
    """WORK/plan.jsonl: every run the notebooks read with this parameter file that WORK/runs does
    not hold yet (one RunConfig per line, each once), for decode_plan. Nothing is decoded and no
    notebook is executed."""
    from .runs import finished_run, run_dir
    work_dir = Path(work_dir).resolve()
    out = work_dir / "plan.jsonl"
    lines = [json.dumps(cfg.to_dict(), sort_keys=True) for cfg in plan_configs(params, work_dir, only, nb_dir)
             if finished_run(run_dir(work_dir / "runs", cfg)) is None]
    work_dir.mkdir(parents=True, exist_ok=True)  # after the parameters are checked: a refusal leaves nothing
    write_plan(out, lines)
    log(f"{len(lines)} run(s) to decode, listed in {out}")
    return out


def write_plan(path: Path, lines: list[str]) -> None:
    """Write a plan file whole (workers may be reading it: they see the old plan or the new)."""
    from .runs import write_atomic
    write_atomic(path, "".join(line + "\n" for line in lines).encode())


def read_plan(plan_file) -> list:
    """The RunConfigs of a plan file (one JSON object per line), in file order."""
    from .runs import RunConfig, UsageError
    path = Path(plan_file)
    if not path.is_file():
        raise UsageError(f"no plan file {path}; write one with `figures --plan`")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start}): not a plan file") from None
    except OSError as e:
        raise UsageError(f"cannot read the plan file {path} ({e.strerror})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise TypeError(f"expected a JSON object, got {type(d).__name__}")
            out.append(RunConfig(**d))
        except (ValueError, TypeError, AttributeError) as e:
            raise UsageError(f"{path}:{n}: not a plan file ({e})") from e
    return out


def check_plans(plan_files) -> None:
    """Every run of every plan file is valid (task, members, method, options, data), before a
    worker makes a folder or loads a model."""
    from .runs import UsageError, validate
    for plan_file in plan_files:
        for n, cfg in enumerate(read_plan(plan_file), start=1):
            try:
                validate(cfg, warn_degenerate=False)
            except UsageError as e:
                raise UsageError(f"{plan_file}: run {n} ({cfg.task} {cfg.method}): {e}") from e


def _cost(cfg) -> float:
    """A rough relative cost, to start the longest runs first."""
    from .tasks import get_task
    per_example = {"math": 8.0, "mt": 2.0}.get(get_task(cfg.task).kind, 1.0)
    return per_example * (cfg.limit or 1000) * cfg.max_new_tokens


def _pending(plan_files, runs_dir, seen: set) -> list:
    """(run dir, config) of the plans' runs not yet in `seen`: the first plan's first, each
    plan's longest first. The files are read afresh each time, so a plan rewritten meanwhile
    (a re-plan that adds the tuned settings' runs) is taken up by workers already running."""
    from .runs import run_dir
    todo: dict = {}
    for plan_file in plan_files:
        for cfg in sorted(read_plan(plan_file), key=_cost, reverse=True):
            out = run_dir(runs_dir, cfg)
            if out not in seen:
                todo.setdefault(out, cfg)
    return list(todo.items())


def decode_plan(plan_files, runs_dir, progress: bool = False, log=print) -> dict:
    """Decode the runs listed in one or more plan files into runs_dir: the first plan's runs
    before the next's, each plan's longest first. Several workers (one per GPU:
    CUDA_VISIBLE_DEVICES) can work through the same plans at once: each run is locked while it is
    decoded (the lock goes with the process, so a killed worker leaves none behind) and a
    finished run is skipped. The plans are read again after every run. Members stay loaded
    from one run to the next. Returns {"decoded": [...], "found": [...], "busy": [...]}."""
    import fcntl

    from .runs import finished_run, run
    plan_files = [plan_files] if isinstance(plan_files, (str, Path)) else list(plan_files)
    check_plans(plan_files)
    sessions, report, seen = {}, {"decoded": [], "found": [], "busy": []}, set()
    while todo := _pending(plan_files, runs_dir, seen):
        out, cfg = todo[0]
        seen.add(out)
        tag = f"[{len(seen)}/{len(seen) + len(todo) - 1}]"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report["busy"].append(str(out))
                continue
            if finished_run(out) is not None:
                report["found"].append(str(out))
                continue
            t = time.perf_counter()
            log(f"{tag} decoding {out} ...")
            run(cfg, out, progress=progress, sessions=sessions)
            report["decoded"].append(str(out))
            log(f"{tag} decoded {out} ({time.perf_counter() - t:.1f} s)")
    return report


def add_parser(subparsers) -> None:
    """Register `figures` on the CLI (cli.py calls this)."""
    p = subparsers.add_parser("figures", help="re-execute the notebooks through papermill and write their figures")
    p.add_argument("--params", default="full",
                   help="parameter file: smoke, full (notebooks/params/) or a YAML/JSON path (default: %(default)s)")
    p.add_argument("--out", default="figures", help="where PNG and PDF figures go (default: %(default)s)")
    p.add_argument("--work", default="runs/notebooks",
                   help="executed notebooks, summaries and shared run directories (default: %(default)s)")
    p.add_argument("--only", help="comma-separated notebook prefixes, e.g. 00,02")
    p.add_argument("--notebooks", help="folder holding the numbered notebooks (default: ./notebooks)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")
    p.add_argument("--cell-timeout", type=float, help="seconds a cell may run (default: no limit)")
    p.add_argument("--retries", type=int, default=0,
                   help="run a notebook again when its kernel stops answering (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true",
                      help="decode nothing: list the runs the notebooks read (their declared run plans) "
                           "in WORK/plan.jsonl")
    mode.add_argument("--decode", metavar="PLAN", nargs="+",
                      help="decode the runs of one or more plan files (the first's before the next's; each "
                           "read again after every run) into WORK/runs and draw nothing; start one such "
                           "process per GPU (CUDA_VISIBLE_DEVICES) to share the work")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> dict:
    from .runs import UsageError, check_figure_dir, check_work_dir
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    if args.only is not None and not only:
        raise UsageError("--only is empty; give notebook prefixes such as 00,02")
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    if args.cell_timeout is not None and not args.cell_timeout > 0:
        raise UsageError(f"--cell-timeout must be a number of seconds > 0, got {args.cell_timeout}")
    check_figure_dir(args.out, "--out")
    check_work_dir(args.work, "--work")
    if args.plan:
        return {"plan": str(plan(args.params, args.work, only, args.notebooks, args.kernel))}
    if args.decode:
        report = decode_plan(args.decode, Path(args.work) / "runs", progress=False)
        print(f"decoded {len(report['decoded'])}, already there {len(report['found'])}, "
              f"taken by another worker {len(report['busy'])}")
        return report
    report = build(args.params, args.out, args.work, only, args.notebooks, args.kernel, args.cell_timeout,
                   args.retries)
    total = sum(r["seconds"] for r in report.values())
    print(f"{len(report)} notebook(s) in {total:.0f} s; figures in {args.out}, executed notebooks in {args.work}")
    return report
