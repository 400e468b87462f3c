# llmseg_ros — the two commands of the README:
#   make demo   # set up, then segment a procedural scene with the shipped tiny preset
#   make test   # set up, then run the test suite (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test interfaces tiny-weights clean

$(STAMP): requirements.txt requirements-ros.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-ros.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) interfaces

interfaces: $(STAMP)
	VENV=$(VENV) bash scripts/build_interfaces.sh

demo: setup
	$(PY) -m llmseg_model.demo --out outputs/demo

test: setup
	bash scripts/run_tests.sh

# Rebuild the shipped tiny preset from scratch (backbones, tokenizer, proposals, LLM-Seg training).
tiny-weights: setup
	bash scripts/build_tiny.sh

clean:
	rm -rf build install log outputs .pytest_cache
