# llm_lab: `make lab` opens the course, `make test` runs everything CI runs.
# Windows without make: see README ("Without make").
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llm-lab-installed
FLAGS  ?=
# Open a browser only where there is a display (Linux desktop or macOS); otherwise print the URL.
BROWSER_FLAG := $(if $(or $(DISPLAY),$(WAYLAND_DISPLAY),$(filter Darwin,$(shell uname -s))),,--no-browser)
ROOT_FLAG    := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test docs install clean distclean

# Install the pinned environment once; re-run only when the pins or the package metadata change.
$(STAMP): requirements-lab.txt settings.ini setup.py
	@$(PYTHON) scripts/check_python.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-lab.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,kernels,hub,serve]"
	$(BIN)/python -m ipykernel install --sys-prefix --name llm-lab --display-name "llm_lab (Python 3)" >/dev/null
	@touch $(STAMP)
	@echo "llm_lab: environment ready in $(VENV) (Jupyter kernel 'llm-lab')"

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs $(BROWSER_FLAG) $(ROOT_FLAG)

test: $(STAMP)
	$(BIN)/python scripts/run_tests.py --flags "$(FLAGS)"

# `make docs NBS="index 01_neurons"` executes only those pages (the others keep an earlier build's copy, if any).
docs: $(STAMP)
	$(BIN)/python scripts/docs.py $(if $(NBS),--nbs "$(NBS)")

clean:
	rm -rf _docs _proc .pytest_cache .hypothesis nbs/nbdev.yml
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
