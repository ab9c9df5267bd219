# Two entry points on a fresh machine:  make demo   |   make test
# Both create (or reuse) .venv and install mixkd into it, CPU torch first so pip never pulls
# the multi-GB CUDA build on a CPU machine. On a GPU machine use: make install TORCH_SPEC=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
GLUE_DIR ?= $(abspath ../shared/glue_data)
export GLUE_DIR
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed

# The main job on the offline default: packaged MiniLM teacher, SST-2 slice, every variant.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash experiments/demo.sh

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python experiments/bench_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
