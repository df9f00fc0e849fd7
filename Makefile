# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit bench clean

# torch is installed first, pinned to the CPU wheel that lies on this machine's disk, and the
# constraints file keeps the resolver from ever replacing it with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -c constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n 2 -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/ls_10k.py
	$(BIN)/python benchmarks/push_1gb.py
	$(BIN)/python benchmarks/svd_merge_vs_peft.py --memory
	$(BIN)/python benchmarks/export_1gb.py
	$(BIN)/python benchmarks/server_load.py

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
