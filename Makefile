# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision from PyPI is the CUDA build; its models are pure Python and work beside the CPU
# torch once its two missing op schemas are declared (see dynashape.testing.import_torchvision).
TEST_EXTRAS := torchvision==0.28.0

.PHONY: demo test lint setup clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[torch,test]' $(TEST_EXTRAS)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dynashape doctor

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
