# Everything a fresh machine with only Python needs. `make demo` trains and uses a model on built-in
# data; `make test` runs the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first so that nothing later pulls the multi-GB CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint bench clean

$(BIN)/vidcli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev,torch]"
	touch $@

install: $(BIN)/vidcli

demo: install
	$(BIN)/vidcli data synth
	$(BIN)/vidcli train recipes/quickstart.yaml
	$(BIN)/vidcli eval runs/quickstart/$$(ls runs/quickstart | sort -n | tail -1)
	$(BIN)/vidcli confusion runs/quickstart/$$(ls runs/quickstart | sort -n | tail -1)
	$(BIN)/vidcli precision-recall runs/quickstart/$$(ls runs/quickstart | sort -n | tail -1)
	$(BIN)/vidcli export-onnx runs/quickstart/$$(ls runs/quickstart | sort -n | tail -1)
	$(BIN)/vidcli predict data/synth/test --top-k 3

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check vidcli tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
