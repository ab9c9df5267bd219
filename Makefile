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

.PHONY: install demo demo-runs test test-slow bench bench-sweep clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed

# The main job on the offline default: the smoke sweep (packaged MiniLM teacher, SST-2 slice,
# 3 Optuna trials with ASHA on a local Ray instance, recorded in MLflow). --resume starts it the
# first time and continues (or just re-prints) it afterwards.
SWEEP_ARGS ?=
demo: install
	$(BIN)/python experiments/glue_sweep.py --address auto --preset smoke --storage-path runs/sweeps --resume $(SWEEP_ARGS)

# Single runs without Ray: fine-tune the teacher, distil one student per variant, print a table.
demo-runs: install
	PATH="$(abspath $(BIN)):$$PATH" bash experiments/demo.sh

# The default suite leaves out the slow fault-injection tests (pyproject addopts: -m 'not slow').
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Fault injection (tests/test_faults.py): node loss, killed trial workers / teacher / sweep driver, NaN
# loss, kills mid-checkpoint, concurrent MLflow writers. About 8 minutes on 2 cores.
test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: install
	$(BIN)/python experiments/bench_step.py

bench-sweep: install
	$(BIN)/python experiments/bench_sweep.py

clean:
	rm -rf $(VENV) runs .pytest_cache
