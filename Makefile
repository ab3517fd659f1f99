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
	$(PY) -m backend image2mesh examples/spot_photo.png -o demo_output/spot_from_photo.glb --polar 70 --steps 30 --resolution 128 --overwrite
	@echo "demo meshes: demo_output/spot.glb (from the bundled views), demo_output/spot_from_photo.glb (one photo, bundled generator)"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.bench_reconstruct

clean:
	rm -rf $(VENV) demo_output .pytest_cache
