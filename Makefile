# Figures and notebooks. `make figures` re-executes every notebook through papermill
# with notebooks/params/$(PARAMS).yaml and writes PNG + PDF figures to $(FIGDIR).
# The notebooks are the source (edit them in JupyterLab); each is paired with a
# py:percent script through jupytext.
PYTHON ?= python
PARAMS ?= full
FIGDIR ?= figures
WORK   ?= runs/notebooks

.PHONY: figures figures-smoke sync-notebooks check-notebooks test-notebooks test-browser

figures:  ## the full run (GPU): every notebook, figures into figures/
	$(PYTHON) -m adafuse_lab figures --params $(PARAMS) --out $(FIGDIR) --work $(WORK)

figures-smoke:  ## every notebook with its cpu preset (what CI runs); nothing lands in figures/
	$(PYTHON) -m adafuse_lab figures --params smoke --out $(WORK)/smoke/figures --work $(WORK)/smoke

sync-notebooks:  ## bring each notebook and its py:percent script in step (the newer one wins)
	jupytext --sync notebooks/[0-9][0-9]_*.ipynb

check-notebooks:  ## pairs in sync and notebooks free of outputs
	$(PYTHON) -m pytest -q tests/test_notebooks.py -k "paired or outputs or presets or parameters"
	nbstripout --keep-id --verify notebooks/[0-9][0-9]_*.ipynb

test-notebooks:  ## analysis, plot and notebook tests (about 5 minutes on 2 CPU cores)
	$(PYTHON) -m pytest tests/test_analysis.py tests/test_plots.py tests/test_notebooks.py -q

test-browser:  ## notebook 00 in JupyterLab in headless Chromium (needs chromium, chromium-driver)
	$(PYTHON) -m pytest tests/test_browser.py -q
