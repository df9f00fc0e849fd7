# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The AdapterHub environment: adapters 1.3.0 pins transformers ~=4.57.6, the main one runs 5.x.
AH_VENV  := .venv-adapterhub
AH_BIN   := $(AH_VENV)/bin
AH_STAMP := $(AH_VENV)/.installed-stamp

.PHONY: install chromium demo test lint typecheck unit numerics adapterhub bench clean

# torch is installed first, pinned to the CPU wheel that lies on this machine's disk, and the
# constraints file keeps the resolver from ever replacing it with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -c constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

# The same CPU torch first, then transformers 4.57 + adapters + the project, all pinned.
$(AH_STAMP): pyproject.toml constraints-adapterhub.txt
	$(PYTHON) -m venv $(AH_VENV)
	$(AH_BIN)/pip install --quiet --upgrade pip
	$(AH_BIN)/pip install --quiet torch==2.13.0
	$(AH_BIN)/pip install --quiet -c constraints-adapterhub.txt transformers adapters pytest -e .
	touch $(AH_STAMP)

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

# tests/adapterhub in the AdapterHub environment (the main run skips them: no adapters there).
adapterhub: $(AH_STAMP)
	PATH="$(CURDIR)/$(AH_BIN):$$PATH" $(AH_BIN)/pytest -q -p no:cacheprovider tests/adapterhub

test: lint typecheck unit numerics adapterhub

bench: $(STAMP)
	$(BIN)/python benchmarks/ls_10k.py
	$(BIN)/python benchmarks/push_1gb.py
	$(BIN)/python benchmarks/svd_merge_vs_peft.py --memory
	$(BIN)/python benchmarks/export_1gb.py
	$(BIN)/python benchmarks/server_load.py
	$(BIN)/python benchmarks/ui_pages.py
	$(BIN)/python benchmarks/ties_vs_peft.py --modules q_proj,gate_proj --threads 2
	$(BIN)/python benchmarks/search_vs_lorahub.py --rows 5,8
	$(BIN)/python benchmarks/similarity_vs_dense.py --rounds 1
	$(BIN)/python benchmarks/eval_vs_lm_eval.py --config tiny
	$(BIN)/python benchmarks/cost_vs_peft_tgb.py --config tiny --repeats 3

clean:
	rm -rf $(VENV) $(AH_VENV) .demo .mypy_cache .ruff_cache .pytest_cache
