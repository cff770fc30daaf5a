"""python -m adafuse_lab quality: the quality table of one ensemble, tuned on dev data.

    ADAFUSE_DATA=../shared/data python -m adafuse_lab quality --models qwen2.5-coder-0.5b,smollm2-135m \
        --source local --limit 500 --limits gsm8k=all --dtype float32 --grid theta=0.5,0.7,0.9 --work W

Where it tunes and where it reports (`--split`, as `tune`): with `--split dev` (the default)
it tunes on the first half of each dev split and reports on the second half; with
`--split test` it tunes on all of dev and reports on the test split. The table's
summary.json and every run's results.json name the split (and half) of their numbers.

Four steps, each resumable (every run is an ordinary run directory under W/runs):

1. plan    W/plan.jsonl: notebook 04's declared runs (plans.benchmark_runs) on the report
           examples (every single member, every baseline, AdaFuse with defaults) and the tune
           command's grid on the tuning examples.
2. decode  one `figures --decode` worker per visible GPU (one on CPU) works through the plan.
3. tune    `tune` per task, spread over the same workers: picks the grid point with the best
           paper metric on the tuning examples and decodes it on the report examples
           (W/tune_<task>.json).
4. table   notebook 04 through papermill, with the chosen settings as its "adafuse (tuned)"
           row: W/04_full_benchmark/{summary.json,table1.csv,paired.csv}, figures in W/figures.
           It decodes nothing: before every run and tune file exists the table is partial,
           and the command names its empty cells.

Bad input (task, member, method, grid point, dtype) is refused before any step runs.

The parameters 04 ran with are in W/quality_params.json; `figures --only 04 --params` with
that file redraws the table from the saved runs.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from .runs import UsageError

STEPS = ("plan", "decode", "tune", "table")
NOTEBOOK = "04_full_benchmark"


def parse_limits(items: list[str]) -> dict:
    """["gsm8k=all", "nq=200"] -> {"gsm8k": None, "nq": 200} (all / none: every example)."""
    out = {}
    for item in items:
        task, eq, value = item.partition("=")
        if not eq or not task.strip():
            raise UsageError(f"--limits expects TASK=N or TASK=all, got {item!r}")
        if task.strip() in out:
            raise UsageError(f"--limits names {task.strip()!r} twice; give it once")
        value = value.strip().lower()
        try:
            out[task.strip()] = None if value in ("all", "none") else int(value)
        except ValueError:
            raise UsageError(f"--limits {item!r}: {value!r} is not a count or 'all'") from None
    return out


def notebook_params(opts: dict, tuned: dict | None = None) -> dict:
    """The figures parameter file that makes notebook 04 the quality table (on the report examples)."""
    from .tune import stage_data
    nb = {k: opts[k] for k in ("models", "tasks", "methods", "source", "data_dir", "dtype",
                               "batch_size", "max_new_tokens", "n_boot") if opts.get(k) is not None}
    # the gpu preset for anything not given; limit always ("all": every example, not the preset's 100)
    limit = opts.get("limit")
    nb.update(preset="gpu", limit="all" if limit is None else limit, limits=opts.get("limits") or {},
              **stage_data("report", opts.get("split") or "dev"), tuned=tuned or {}, launch=False)
    return {"common": {}, "notebooks": {NOTEBOOK: nb}}


def write_params(work: Path, opts: dict, tuned: dict | None = None) -> Path:
    path = work / "quality_params.json"
    path.write_text(json.dumps(notebook_params(opts, tuned), indent=2) + "\n")
    return path


def nb_params(opts: dict):
    """Notebook 04's parameters for these options (plans.notebook_params, gpu preset)."""
    import contextlib
    import io

    from . import plans
    with contextlib.redirect_stdout(io.StringIO()):  # its one-line preset report
        return plans.notebook_params(NOTEBOOK, **notebook_params(opts)["notebooks"][NOTEBOOK])


def tasks_of(opts: dict) -> list[str]:
    """The tasks 04 reports (its gpu preset's when --tasks is not given)."""
    return list(nb_params(opts).tasks)


def run_kw(opts: dict, task: str) -> dict:
    """RunConfig options of every run for `task`: notebook 04's own (NotebookParams.run_kw) but
    the split and half, which the tune runs set themselves (tune.stage_data), so that tune and 04
    find the same runs."""
    kw = nb_params(opts).run_kw(task)
    kw.pop("half")
    kw.pop("split")
    return kw


def split_of(opts: dict) -> str:
    return opts.get("split") or "dev"


def check(opts: dict) -> None:
    """Refuse bad input before anything runs: every task, member, method, grid point and option."""
    from .runs import run_config, validate
    from .tune import stage_data, tune_configs
    try:
        kws = {task: run_kw(opts, task) for task in tasks_of(opts)}
    except (KeyError, ValueError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    unknown = sorted(set(opts.get("limits") or {}) - set(kws))
    if unknown:
        raise UsageError(f"--limits names {', '.join(unknown)}, not among the tasks of this table "
                         f"({', '.join(kws)}); fix the name or add it to --tasks")
    for task, kw in kws.items():
        for cfg in tune_configs(task, opts["models"], opts["grid"], split_of(opts), **kw):
            validate(cfg)
        for method in opts.get("methods") or ():
            validate(run_config(task, opts["models"], method, **kw, **stage_data("report", split_of(opts))))


# ---------------------------------------------------------------- steps


def tune_runs(work: Path, opts: dict, task: str) -> tuple[list, bool]:
    """The runs `tune` needs for this task: the grid on the tuning examples, the defaults on the
    report examples and, once the tuning runs are saved, the settings it will choose on the report
    examples; and whether that choice is known yet."""
    from .tune import chosen_point, tune_config, tune_configs
    kw, split = run_kw(opts, task), split_of(opts)
    chosen = chosen_point(task, opts["models"], opts["grid"], work / "runs", split=split, **kw)
    winner = [] if chosen is None else [tune_config(task, opts["models"], chosen, "report", split, **kw)]
    return tune_configs(task, opts["models"], opts["grid"], split, **kw) + winner, chosen is not None


def plan_step(work: Path, opts: dict, log=print) -> Path:
    """W/plan.jsonl: 04's missing runs on the report examples, then the tune grid's missing runs on
    the tuning examples, and, for a task whose tuning runs are all saved, the chosen settings on
    the report examples (which the tune step would otherwise decode alone, after every worker has
    finished)."""
    from .figures import plan, write_plan
    path = plan(str(write_params(work, opts)), work, only=[NOTEBOOK], log=log)
    lines = path.read_text().splitlines()
    for task in tasks_of(opts):
        for cfg in tune_runs(work, opts, task)[0]:
            line = json.dumps(cfg.to_dict(), sort_keys=True)
            if line not in lines and not saved(work, cfg):
                lines.append(line)
    write_plan(path, lines)
    log(f"{len(lines)} run(s) to decode in {path}")
    return path


def workers(gpus: str | None) -> list[str | None]:
    """One slot per GPU: "0,1" or "2" name them (as CUDA_VISIBLE_DEVICES would); default every
    visible GPU, or one CPU slot (None) when there is none."""
    import torch
    if gpus is not None:
        named = [g.strip() for g in gpus.split(",") if g.strip()]
        if not named or not all(g.isdigit() for g in named):
            raise UsageError(f"--gpus expects GPU numbers such as 0,1, got {gpus!r}")
        return named
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    count = torch.cuda.device_count()
    return (visible[:count] if visible else [str(i) for i in range(count)]) or [None]


def spread(jobs: list[tuple[str, list[str]]], slots: list[str | None], logs: Path, log=print,
           progress=None, every: float = 60.0) -> None:
    """Run each job (name, argv) as a subprocess on the next free slot (CUDA_VISIBLE_DEVICES);
    its output goes to logs/<name>.log. progress(): a line logged every `every` seconds while
    jobs run. Raises naming every job that failed."""
    logs.mkdir(parents=True, exist_ok=True)
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    failed = []

    def worker(slot):
        env = dict(os.environ) if slot is None else {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
        while True:
            try:
                name, argv = todo.get_nowait()
            except queue.Empty:
                return
            t = time.perf_counter()
            log(f"{name}: started{'' if slot is None else f' on GPU {slot}'}")
            with (logs / f"{name}.log").open("w") as f:
                rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
            log(f"{name}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t:.0f} s")
            if rc:
                failed.append(f"{name} (see {logs / f'{name}.log'})")

    threads = [threading.Thread(target=worker, args=(s,)) for s in slots]
    for th in threads:
        th.start()
    last = time.monotonic()
    while any(th.is_alive() for th in threads):
        time.sleep(0.2)
        if progress is not None and time.monotonic() - last >= every:
            log(progress())
            last = time.monotonic()
    for th in threads:
        th.join()
    if failed:
        raise UsageError(f"failed: {', '.join(failed)}")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adafuse_lab", *args]


def decode_step(work: Path, slots, log=print) -> None:
    plan = work / "plan.jsonl"
    if not plan.is_file():
        raise UsageError(f"no {plan}: run the plan step first")
    from .figures import check_plans
    check_plans([plan])  # a damaged plan is one error line here, not a failed worker per slot
    jobs = [(f"decode_{s if s is not None else 'cpu'}", cli("figures", "--decode", str(plan), "--work", str(work)))
            for s in slots]
    spread(jobs, slots, work / "logs", log, progress=lambda: plan_progress(plan, work / "runs"))


def plan_progress(plan: Path, runs_dir: Path) -> str:
    """"K of N runs finished (E of M examples)" for the runs of a plan file."""
    from .runs import finished_run, run_dir
    from .figures import read_plan
    configs = read_plan(plan)
    done = examples = 0
    for cfg in configs:
        path = run_dir(runs_dir, cfg)
        done += finished_run(path) is not None
        samples = path / "samples.jsonl"
        examples += sum(1 for _ in samples.open()) if samples.is_file() else 0
    return f"{time.strftime('%H:%M:%S')} {done} of {len(configs)} runs finished ({examples} examples decoded)"


def saved(work: Path, cfg) -> bool:
    """Whether the run of `cfg` under W/runs is finished."""
    from .runs import finished_run, run_dir
    return finished_run(run_dir(work / "runs", cfg)) is not None


def replan_due(work) -> bool:
    """Whether a new plan step may add runs: every run of W/plan.jsonl is saved, or one of its
    tune-half runs is (that task's chosen setting may now be known, and its report-half run can
    start while the rest of the plan decodes)."""
    from .figures import read_plan
    work = Path(work)
    # a tuning run: the tune half of dev, or all of dev when the table reports on test
    done = [(c.half == "tune" or (c.half is None and c.split == "dev"), saved(work, c))
            for c in read_plan(work / "plan.jsonl")]
    return all(d for _, d in done) or any(d and tuning for tuning, d in done)


def all_saved(work: Path, opts: dict, task: str) -> bool:
    """Whether every run `tune` needs for this task is saved, the chosen settings' included."""
    configs, chosen_known = tune_runs(work, opts, task)
    return chosen_known and all(saved(work, c) for c in configs)


def tune_step(work: Path, opts: dict, slots, log=print) -> dict:
    """Run `tune` for every task (finding the planned runs; decoding the winner on the report
    half); returns {task: chosen settings}. With opts["saved_only"], only the tasks whose runs
    are all saved are tuned, and nothing is decoded (e.g. on a CPU machine after a GPU lease)."""
    jobs, tasks = [], tasks_of(opts)
    for task in tasks:
        kw = run_kw(opts, task)
        if opts.get("saved_only") and not all_saved(work, opts, task):
            log(f"tune {task}: skipped, not every run it needs is saved (--saved-only)")
            continue
        argv = cli("tune", "--task", task, "--models", opts["models"], "--out", str(work), "--source", kw["source"],
                   "--split", split_of(opts),
                   "--batch-size", str(kw["batch_size"]), "--max-new-tokens", str(kw["max_new_tokens"]),
                   "--n-boot", str(opts["n_boot"]), *[a for k, v in opts["grid"].items()
                                                      for a in ("--grid", f"{k}={','.join(map(_grid_value, v))}")])
        for flag, key in (("--limit", "limit"), ("--data-dir", "data_dir"), ("--dtype", "dtype")):
            if kw[key] is not None:
                argv += [flag, str(kw[key])]
        jobs.append((f"tune_{task}", argv))
    spread(jobs, slots, work / "logs", log)
    return chosen_settings(work, tasks)


def _grid_value(v) -> str:
    """One --grid value as tune.parse_grid reads it back (true, not Python's True; [0.6, 0.4] whole)."""
    return v if isinstance(v, str) else json.dumps(v)


def chosen_settings(work: Path, tasks) -> dict:
    """{task: the settings the tune step chose} for every task with a W/tune_<task>.json."""
    return {t: json.loads((work / f"tune_{t}.json").read_text())["chosen"] for t in tasks
            if (work / f"tune_{t}.json").is_file()}


def table_step(work: Path, opts: dict, log=print) -> dict:
    """Notebook 04 on the saved runs; returns its summary. A table made before every run and
    every tune file exists is partial: its empty cells are named, and nothing is decoded."""
    from .figures import build
    tasks = tasks_of(opts)
    tuned = chosen_settings(work, tasks)
    params = write_params(work, opts, tuned)
    build(str(params), work / "figures", work, only=[NOTEBOOK], log=log)
    summary = json.loads((work / NOTEBOOK / "summary.json").read_text())
    untuned = [t for t in tasks if t not in tuned]
    if summary["missing"] or untuned:
        log(f"partial table: {len(summary['missing'])} run(s) missing ({', '.join(summary['missing']) or 'none'}); "
            f"no tuned row for {', '.join(untuned) or 'no task'} (run the decode and tune steps)")
    return summary


# ---------------------------------------------------------------- command


def add_parser(sub) -> None:
    p = sub.add_parser("quality", help="one ensemble's quality table: tune on dev data, report on the other dev "
                                       "half or on the test split")
    a = p.add_argument
    a("--models", required=True, help="comma-separated member specs")
    a("--work", required=True, help="folder for runs/, plan.jsonl, tune_<task>.json, logs/ and the table")
    a("--tasks", help="comma-separated tasks (default: notebook 04's)")
    a("--methods", help="comma-separated table rows (default: notebook 04's: every baseline)")
    a("--split", default="dev", choices=["dev", "test"],
      help="report on: dev (tune on the first half of each dev split, report on the rest) or test "
           "(tune on all of dev)")
    a("--limit", type=int, help="first N examples of each task and split (with --split dev: then halved)")
    a("--limits", action="append", default=[], metavar="TASK=N|all", help="a task's own limit (repeatable)")
    a("--grid", action="append", default=[], metavar="KEY=V1,V2", help="tune grid (default: theta=0.5,0.7,0.9)")
    a("--source", default="auto", choices=["auto", "local", "hub", "sample"])
    a("--data-dir", help="local data folder (default: $ADAFUSE_DATA, then ../shared/data)")
    a("--batch-size", type=int, default=64)
    a("--max-new-tokens", type=int, default=256)
    a("--dtype", help="bfloat16, float16, float32 (float32 recommended for small members)")
    a("--n-boot", type=int, default=1000)
    a("--gpus", help="GPUs to use, one worker each, e.g. 0,1 (default: every visible GPU; one worker on CPU)")
    a("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    a("--saved-only", action="store_true",
      help="tune step: tune only the tasks whose runs are all saved, and decode nothing")
    p.set_defaults(func=cmd_quality)


def cmd_quality(args) -> dict:
    from .tune import parse_grid
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UsageError(f"--steps: unknown step(s) {', '.join(bad)}; choose from {', '.join(STEPS)}")
    for flag, value in (("--steps", args.steps), ("--tasks", args.tasks), ("--methods", args.methods)):
        if value is not None and not [v for v in value.split(",") if v.strip()]:
            raise UsageError(f"{flag} is empty; leave it out for the default or name at least one")
    opts = {"models": args.models, "tasks": args.tasks, "source": args.source, "data_dir": args.data_dir,
            "split": args.split,
            "limit": args.limit, "limits": parse_limits(args.limits), "dtype": args.dtype, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "n_boot": args.n_boot,
            "grid": parse_grid(args.grid or ["theta=0.5,0.7,0.9"]),
            "methods": [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
            "saved_only": args.saved_only}
    if args.n_boot < 1:
        raise UsageError(f"--n-boot must be >= 1, got {args.n_boot}")
    check(opts)
    from .runs import check_work_dir
    check_work_dir(args.work, "--work")
    if "decode" in steps and "plan" not in steps and not (Path(args.work) / "plan.jsonl").is_file():
        raise UsageError(f"--steps {args.steps}: the decode step reads {Path(args.work) / 'plan.jsonl'}, which does "
                         "not exist yet; add the plan step (--steps plan,decode)")
    if "decode" in steps and "plan" not in steps:  # the plan file the workers will read: every run valid
        from .figures import check_plans
        check_plans([Path(args.work) / "plan.jsonl"])
    if "plan" in steps or "table" in steps:
        import papermill  # noqa: F401  (the notebooks extra: refused here, before the work folder is made)
    if "table" in steps:
        from .figures import check_kernel
        check_kernel("python3")
    slots = workers(args.gpus)
    if args.gpus is not None:
        import torch
        if torch.cuda.device_count() == 0:
            raise UsageError(f"--gpus {args.gpus}: no CUDA GPU is visible on this machine; leave --gpus out to "
                             "decode on the CPU")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if "plan" in steps:
        report["plan"] = str(plan_step(work, opts))
    if "decode" in steps:
        decode_step(work, slots)
    if "tune" in steps:
        report["chosen"] = tune_step(work, opts, slots)
    if "table" in steps:
        summary = table_step(work, opts)
        report["table"] = str(work / NOTEBOOK / "table1.csv")
        from .tune import where
        print(f"reported on {where('report', args.split)}; AdaFuse (tuned) tuned on {where('tune', args.split)}")
        for row in summary["table"]:
            avg = row.get("Avg")
            print(f"{row['method']:<28} Avg {'n/a' if avg is None else f'{avg:.2f}'}")
    return report
