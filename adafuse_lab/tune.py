"""python -m adafuse_lab tune: choose AdaFuse's settings on dev data, report them on held-out data.

    python -m adafuse_lab tune --task gsm8k --models qwen2.5-coder-0.5b,smollm2-135m \
        --grid theta=0.5,0.7,0.9 --grid B=1,3 --source local --out runs/tune_gsm8k [--split test]

Where it tunes and where it reports (`--split`, RunConfig.split and .half):

- `--split dev` (the default): the dev examples (after --limit) are cut in two; the first
  half tunes, the rest reports.
- `--split test`: every dev example (after --limit) tunes, and the test split (after the
  same --limit) reports, as a paper would.

Every point of the grid, and the paper's defaults first of all, is decoded on the tuning
examples; the point with the best paper metric there wins (ties go to the earlier point, so
the defaults win a tie). The winner and the defaults are then decoded on the report
examples and compared by paired bootstrap. Runs are ordinary run directories under
OUT/runs/, named as the notebooks name them, so they resume and can be read by notebook 04;
OUT/tune_<task>.json holds every score (each with its split and half), the choice and the
comparison.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from .runs import UsageError


def parse_grid(items: list[str]) -> dict:
    """["theta=0.5,0.7", "B=1,3"] -> {"theta": [0.5, 0.7], "B": [1, 3]} (values as JSON where they parse;
    list values such as weights=[0.6,0.4],[0.5,0.5] stay whole)."""
    grid = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        if key in grid:
            raise UsageError(f"--grid names {key!r} twice")
        try:  # the values as one JSON list: numbers, true/false, null and lists such as [0.6,0.4]
            parsed = json.loads(f"[{values}]")
        except ValueError:  # words among them (criterion=margin,entropy): one value per comma
            parsed = []
            for v in values.split(","):
                if not v.strip():
                    raise UsageError(f"--grid {item!r} has an empty value; give KEY=V1,V2,...")
                try:
                    parsed.append(json.loads(v))
                except ValueError:
                    parsed.append(v.strip())
        grid[key] = parsed
    return grid


def grid_points(grid: dict) -> list[dict]:
    """The defaults ({}) first, then every combination of the grid, each once."""
    from .runs import canonical_decode
    points = [{}]
    for combo in itertools.product(*grid.values()):
        point = canonical_decode(dict(zip(grid, combo)))  # a combination equal to the defaults is {}
        if point not in points:
            points.append(point)
    return points


def choose(scores: list[float]) -> int:
    """Index of the highest score; ties go to the earlier point, and NaN never wins."""
    def key(i):
        x = scores[i]
        return (float("-inf") if x != x else x, -i)
    return max(range(len(scores)), key=key)


STAGES = ("tune", "report")


def stage_data(stage: str, split: str = "dev") -> dict:
    """{"split", "half"} of the examples a stage ("tune" or "report") decodes: the two halves of
    dev when `split` is dev; all of dev to tune and all of `split` to report otherwise."""
    if stage not in STAGES:
        raise ValueError(f"stage must be tune or report, got {stage!r}")
    if split == "dev":
        return {"split": "dev", "half": stage}
    return {"split": "dev" if stage == "tune" else split, "half": None}


def where(stage: str, split: str = "dev") -> str:
    """"dev (tune half)", "test", ...: the examples of a stage, in words."""
    d = stage_data(stage, split)
    return d["split"] + (f" ({d['half']} half)" if d["half"] else "")


def tune_config(task: str, models, point: dict, stage: str, split: str = "dev", **run_kw):
    """The AdaFuse run with these settings on the examples of this stage (stage_data)."""
    from .runs import run_config
    return run_config(task, models, "adafuse", point, **stage_data(stage, split), **run_kw)


def tune_configs(task: str, models, grid: dict, split: str = "dev", **run_kw) -> list:
    """Every run tune() needs before it can choose: the grid on the tuning examples, the defaults on the
    report examples."""
    return ([tune_config(task, models, p, "tune", split, **run_kw) for p in grid_points(grid)]
            + [tune_config(task, models, {}, "report", split, **run_kw)])


def _score(task: str, run, point: dict, n_boot: int) -> dict:
    from .stats import headline_key, score_ci
    key = headline_key(task, run.results)
    return {"decode": point, "metric": key, **score_ci(task, run.records, key, n_boot),
            "split": run.config.get("split", "dev"), "half": run.config.get("half"), "run": str(run.path)}


def tune_rows(task: str, models, grid: dict, runs_dir, n_boot: int = 1000, launch: bool = True, log=print,
              split: str = "dev", **run_kw) -> list[dict] | None:
    """Every grid point's paper metric on the tuning examples (decoding missing runs when `launch`);
    None when a run is missing and may not be decoded."""
    from .runs import ensure_run
    rows = []
    for point in grid_points(grid):
        run = ensure_run(tune_config(task, models, point, "tune", split, **run_kw), runs_dir, launch=launch, log=log)
        if run is None:
            return None
        r = _score(task, run, point, n_boot)
        rows.append({"decode": point, "metric": r["metric"], "score": r["value"], "n": r["n"], "split": r["split"],
                     "half": r["half"], "run": r["run"]})
    return rows


def chosen_point(task: str, models, grid: dict, runs_dir, split: str = "dev", **run_kw) -> dict | None:
    """The settings tune() will choose, from the saved tuning runs alone; None until all are saved."""
    rows = tune_rows(task, models, grid, runs_dir, n_boot=1, launch=False, log=lambda *a: None, split=split,
                     **run_kw)
    return None if rows is None else rows[choose([r["score"] for r in rows])]["decode"]


def tune(task: str, models, grid: dict, out, n_boot: int = 1000, log=print, split: str = "dev", **run_kw) -> dict:
    """Decode the grid on the tuning examples, the winner and the defaults on the report examples
    (stage_data); write OUT/tune_<task>.json."""
    from .runs import ensure_run
    from .stats import paired_diff
    out = Path(out)

    def scored(point: dict):
        """The AdaFuse run with these settings on the report examples (decoded if missing), its paper metric
        and score."""
        run = ensure_run(tune_config(task, models, point, "report", split, **run_kw), out / "runs", log=log)
        return run, _score(task, run, point, n_boot)

    rows = tune_rows(task, models, grid, out / "runs", n_boot, log=log, split=split, **run_kw)
    best = choose([r["score"] for r in rows])
    chosen = rows[best]["decode"]
    (run_d, default), (run_t, tuned) = scored({}), scored(chosen)
    diff = paired_diff(task, run_t.records, run_d.records, tuned["metric"], n_boot)
    # "tune_half" and "report_half" keep their names from before --split: with --split test they are
    # all of dev and all of test (tuned_on / reported_on say so)
    result = {"task": task, "models": list(run_t.config["models"]), "grid": grid,
              "tuned_on": stage_data("tune", split), "reported_on": stage_data("report", split), "tune_half": rows,
              "chosen": chosen, "report_half": {"default": default, "tuned": tuned}, "tuned_minus_default": diff,
              "run_options": {"split": split, **run_kw}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tune_{task}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"chosen {chosen or 'the defaults'} on {where('tune', split)} ({rows[best]['metric']} "
        f"{rows[best]['score']:.2f}); on {where('report', split)}: tuned {tuned['value']:.2f}, "
        f"default {default['value']:.2f}, difference {diff['diff']:.2f} [{diff['low']:.2f}, {diff['high']:.2f}]")
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="choose AdaFuse's settings on dev data, report them on the other dev half "
                                    "or on the test split")
    a = p.add_argument
    a("--task", required=True)
    a("--models", required=True, help="comma-separated member specs")
    a("--grid", action="append", default=[], metavar="KEY=V1,V2", help="DecodeConfig field and its values (repeatable)")
    a("--out", required=True, help="folder for runs/ and tune_<task>.json")
    a("--split", default="dev", choices=["dev", "test"],
      help="report on: dev (tune on its first half, report on the rest) or test (tune on all of dev)")
    a("--limit", type=int, help="first N examples of each split (with --split dev: then halved)")
    a("--source", default="auto", choices=["auto", "local", "hub", "sample"])
    a("--data-dir")
    a("--batch-size", type=int, default=16)
    a("--max-new-tokens", type=int, default=256)
    a("--device")
    a("--dtype")
    a("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> dict:
    from .runs import check_work_dir, validate
    grid = parse_grid(args.grid)
    if not grid:
        raise UsageError("give at least one --grid KEY=V1,V2,...")
    if args.n_boot < 1:
        raise UsageError(f"--n-boot must be >= 1, got {args.n_boot}")
    run_kw = dict(limit=args.limit, source=args.source, data_dir=args.data_dir, batch_size=args.batch_size,
                  max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype)
    for cfg in tune_configs(args.task, args.models, grid, args.split, **run_kw):  # every grid point, before any run
        validate(cfg)
    check_work_dir(args.out, "--out")
    return tune(args.task, args.models, grid, args.out, n_boot=args.n_boot, split=args.split, **run_kw)
