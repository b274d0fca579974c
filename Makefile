# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision from PyPI is the CUDA build; its models are pure Python and work beside the CPU
# torch once its two missing op schemas are declared (see dynashape.testing.import_torchvision).
# The third-party zoo (benchmarks/zoo_thirdparty.py, tests/test_zoo_thirdparty.py) builds its models
# from these libraries' configs; scipy is what transformers' Mask2Former/MaskFormer import. All pinned
# exactly, in the same pip call as torch==2.13.0, so none of them can pull another torch.
# tests/test_triton.py talks to a real tritonserver through tritonclient; the server binary (with
# its Python backend) comes from the nvidia-pytriton wheel, installed without its Python packages
# (they pin numpy < 2; only the binary is used), in a second pip call.
TEST_EXTRAS := torchvision==0.28.0 transformers==5.23.0 segmentation-models-pytorch==0.6.0 ultralytics==8.4.190 \
	'tritonclient[http,grpc]==2.73.0' \
	timm==1.0.31 scipy==1.16.3 hypothesis==6.170.15

.PHONY: demo test test-slow test-all lint setup clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[torch,test]' $(TEST_EXTRAS)
	$(PY) -m pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dynashape doctor

# `make test`: everything but the tests marked `slow` (model zoos, torchvision models, exports
# through torch.export; see pyproject.toml); `make test-slow`: those; .ci/run runs both.
test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
