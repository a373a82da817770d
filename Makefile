# Two commands for a newcomer:  `make demo`  and  `make test`.  Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
VENV50 := .venv-bpy50
PY     := $(VENV)/bin/python
PY50   := $(VENV50)/bin/python
PIP_FLAGS ?= --disable-pip-version-check --no-input

.PHONY: env test test-backend test-blender45 test-blender50 demo demo-quick bench extension validate clean

# The environments are rebuilt only when a requirements file changes (a stamp file records it).
$(VENV)/.stamp: requirements/backend.txt requirements/ray.txt requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -q -r requirements/dev.txt
	@touch $@

$(VENV50)/.stamp: requirements/blender50.txt
	@test -x $(PY50) || $(PYTHON) -m venv $(VENV50)
	$(PY50) -m pip install $(PIP_FLAGS) -q -r requirements/blender50.txt
	@touch $@

env: $(VENV)/.stamp $(VENV50)/.stamp

# Full suite: backend + Blender 4.5 LTS in the main environment, then the Blender-side tests on bpy 5.0.
test: env
	$(PY) -m pytest tests -q
	SPLAT_BACKEND_PYTHON=$(abspath $(PY)) $(PY50) -m pytest tests/blender -q

test-backend: $(VENV)/.stamp
	$(PY) -m pytest tests --ignore=tests/blender -q

test-blender45: $(VENV)/.stamp
	$(PY) -m pytest tests/blender -q

test-blender50: env
	SPLAT_BACKEND_PYTHON=$(abspath $(PY)) $(PY50) -m pytest tests/blender -q

# The main job end to end on the bundled sample (headless Blender + backend); writes demo_out/.
demo: $(VENV)/.stamp
	$(PY) scripts/demo.py --out demo_out

demo-quick: $(VENV)/.stamp
	$(PY) scripts/demo.py --out demo_out --quick

bench: $(VENV)/.stamp
	$(PY) benchmarks/mpm.py
	$(PY) benchmarks/render.py
	$(PY) benchmarks/estimate.py
	$(PY) benchmarks/blender_io.py
	$(PY) benchmarks/batch.py

# Build the installable extension zip with Blender's own extension CLI (shipped in the bpy wheel).
validate: $(VENV)/.stamp
	$(PY) scripts/extension.py validate

extension: $(VENV)/.stamp
	$(PY) scripts/extension.py build --output-dir dist

clean:
	rm -rf $(VENV) $(VENV50) dist demo_out .pytest_cache
