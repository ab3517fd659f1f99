# Fresh machine: `make demo` sets up .venv and runs the main job; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: setup
	mkdir -p demo_output
	$(PY) -m backend reconstruct examples/spot_views -o demo_output/spot.glb --resolution 256 --overwrite
	@echo "demo mesh: demo_output/spot.glb"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.bench_reconstruct

clean:
	rm -rf $(VENV) demo_output .pytest_cache
