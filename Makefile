# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned for CI: this pair is served from the machine's disk (a CUDA build that runs on CPU).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo bench venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,serve]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/pssnet demo

# The speed benchmarks (about 7 minutes on 2 CPU cores); compare_samplers.py is run by hand (about 35 minutes).
bench: venv
	$(PY) benchmarks/resources.py --json bench-resources.json
	$(PY) benchmarks/space_map.py --json bench-space-map.json
	$(PY) benchmarks/step.py --json bench-step.json
	$(PY) benchmarks/switch.py --json bench-switch.json
	$(PY) benchmarks/latency.py --json bench-latency.json

clean:
	rm -rf $(VENV) runs .pytest_cache
