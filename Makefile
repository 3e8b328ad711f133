# Both README commands install what they need into .venv first, so they work on a clean clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Everything the demo and the test suite exercise.
EXTRAS ?= dev,vla,train,ros2
export MUJOCO_GL ?= egl

.PHONY: demo test venv install bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	@# The labelling page's browser test drives Debian's chromium (Playwright, no browser download).
	@# As root with apt, install it when missing; otherwise that one test skips, saying why.
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) \
		|| echo "warning: could not install chromium; the labelling browser test will skip"
	touch $@

install: $(VENV)/.installed

# collect expert demos -> train BC -> evaluate; runs/demo/report.md ties the figures together
demo: install
	$(VENV)/bin/vla-gym demo --out runs/demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_env_throughput.py --json runs/bench/env_throughput.json

lint: install
	$(VENV)/bin/ruff check vla_gym tests benchmarks

clean:
	rm -rf runs .pytest_cache
