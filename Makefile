# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install chromium demo test lint typecheck unit numerics bench clean

# torch is installed first, pinned to the CPU wheel that lies on this machine's disk, and the
# constraints file keeps the resolver from ever replacing it with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -c constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) chromium

# The web page's tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser); CI runs as root, so a fresh machine gets the package here.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) chromium
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n 2 -q

# The numerics tests again on ATen's portable (non-SIMD) kernels: other summation orders and
# roundings than this CPU's AVX2/AVX-512 ones, as another CI machine would have (a few tens of
# seconds). They assert bounds, so they must pass on both.
numerics: $(STAMP)
	ATEN_CPU_CAPABILITY=default PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n 2 -q -m numerics

test: lint typecheck unit numerics

bench: $(STAMP)
	$(BIN)/python benchmarks/ls_10k.py
	$(BIN)/python benchmarks/push_1gb.py
	$(BIN)/python benchmarks/svd_merge_vs_peft.py --memory
	$(BIN)/python benchmarks/export_1gb.py
	$(BIN)/python benchmarks/server_load.py
	$(BIN)/python benchmarks/ui_pages.py

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
