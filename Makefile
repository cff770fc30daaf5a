# Figures and notebooks. `make figures` re-executes every notebook through papermill
# with notebooks/params/$(PARAMS).yaml and writes PNG + PDF figures to $(FIGDIR).
PYTHON ?= python
PARAMS ?= full
FIGDIR ?= figures
WORK   ?= runs/notebooks

.PHONY: figures figures-smoke notebooks check-notebooks test-notebooks

figures:  ## the full run (GPU): every notebook, figures into figures/
	$(PYTHON) -m adafuse_lab figures --params $(PARAMS) --out $(FIGDIR) --work $(WORK)

figures-smoke:  ## every notebook on CPU with tiny members (what CI runs); nothing lands in figures/
	$(PYTHON) -m adafuse_lab figures --params smoke --out $(WORK)/smoke/figures --work $(WORK)/smoke

notebooks:  ## regenerate notebooks/NN_*.ipynb from notebooks/build_notebooks.py
	$(PYTHON) notebooks/build_notebooks.py

check-notebooks:  ## generated notebooks up to date and free of outputs
	$(PYTHON) notebooks/build_notebooks.py --check
	nbstripout --verify notebooks/[0-9][0-9]_*.ipynb

test-notebooks:  ## analysis, plot and notebook tests (about 5 minutes on 2 CPU cores)
	$(PYTHON) -m pytest tests/test_analysis.py tests/test_plots.py tests/test_notebooks.py -q
