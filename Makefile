# Both README commands install what they need into .venv first, so they work on a clean clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export MUJOCO_GL ?= egl

.PHONY: demo test venv install bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/vla-gym rollout --env vla_gym/TabletopMultiTask-v0 --policy expert \
		--episodes 10 --seed 0 --video runs/demo/rollout.mp4 --json runs/demo/summary.json

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_env_throughput.py --json runs/bench/env_throughput.json

lint: install
	$(VENV)/bin/ruff check vla_gym tests benchmarks

clean:
	rm -rf runs .pytest_cache
