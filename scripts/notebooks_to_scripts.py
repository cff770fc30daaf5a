"""Turn the notebooks, with a parameter file's values injected, into plain Python scripts.

For a GPU machine without papermill/Jupyter: the scripts decode and save every run the
notebooks need into runs/notebooks/runs; back here, `python -m adafuse_lab figures
--params NAME` then finds those runs and only draws.

    python scripts/notebooks_to_scripts.py gpu OUTDIR
"""
import sys
from pathlib import Path

import nbformat
import papermill
from nbconvert import PythonExporter

from adafuse_lab.figures import load_params, notebook_dir, notebooks, parameters_for


def main(spec: str, out: str) -> None:
    nb_dir = notebook_dir()
    pfile = load_params(spec, nb_dir)
    work = Path("runs/notebooks").resolve()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in notebooks(nb_dir):
        paths = {"runs_dir": work / "runs", "out_dir": work / nb.stem, "fig_dir": work / "figures"}
        params = parameters_for(nb, pfile, paths)
        tmp = out_dir / f"{nb.stem}.ipynb"
        papermill.execute_notebook(str(nb), str(tmp), parameters=params, prepare_only=True, kernel_name="python3")
        source, _ = PythonExporter().from_notebook_node(nbformat.read(tmp, 4))
        (out_dir / f"{nb.stem}.py").write_text(source)
        tmp.unlink()
        print(out_dir / f"{nb.stem}.py")


if __name__ == "__main__":
    main(*sys.argv[1:3])
