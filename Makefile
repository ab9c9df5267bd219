# Two entry points on a fresh machine:  make demo   |   make test
# Both create (or reuse) .venv and install mixkd into it, CPU torch first so pip never pulls
# the multi-GB CUDA build on a CPU machine. On a GPU machine use: make install TORCH_SPEC=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# Data of the demo: --data-dir / $GLUE_DIR when given, else ../shared/glue_data when that folder exists,
# else the hub (nyu-mll/glue) when it is reachable, else the SST-2 sample embedded in the package.
SHARED_GLUE := $(abspath ../shared/glue_data)
ifeq ($(origin GLUE_DIR),undefined)
ifneq ($(wildcard $(SHARED_GLUE)/SST-2/train.tsv),)
GLUE_DIR := $(SHARED_GLUE)
export GLUE_DIR
endif
endif
# The tests are offline and read the real GLUE files (../shared/glue_data unless GLUE_DIR says otherwise);
# they fail loudly when those are missing.
TEST_ENV = GLUE_DIR="$(or $(GLUE_DIR),$(SHARED_GLUE))" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PYTEST_ARGS ?=

.PHONY: install demo demo-runs lint test test-slow bench bench-sweep clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed

# The main job: the demo sweep (mixkd/platform/presets/demo.yaml): the packaged MiniLM teacher on 1,000 SST-2
# rows, ft vs MixKD students of 1-3 layers x 2 seeds on a local Ray instance, recorded in MLflow; then the
# claims scorecard, the best student within half the teacher's latency (exported) and the report.
# --resume starts it the first time and continues (or just re-prints) it afterwards.
SWEEP_ARGS ?=
demo: install
	$(BIN)/python experiments/glue_sweep.py --address auto --preset demo --storage-path runs/sweeps --resume $(SWEEP_ARGS)

# Single runs without Ray: fine-tune the teacher, distil one student per variant, print a table.
demo-runs: install
	PATH="$(abspath $(BIN)):$$PATH" bash experiments/demo.sh

# Lint: ruff (pycodestyle errors and warnings, pyflakes; [tool.ruff] in pyproject.toml). CI runs it before the tests.
lint: install
	$(BIN)/ruff check .

# The default suite leaves out the slow fault-injection tests (pyproject addopts: -m 'not slow').
test: install
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Fault injection (tests/test_faults.py): node loss, killed trial workers / teacher / sweep driver, NaN
# loss, kills mid-checkpoint, concurrent MLflow writers. About 8 minutes on 2 cores.
test-slow: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: install
	$(BIN)/python experiments/bench_step.py

bench-sweep: install
	$(BIN)/python experiments/bench_sweep.py

clean:
	rm -rf $(VENV) runs .pytest_cache
