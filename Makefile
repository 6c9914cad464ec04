# Two commands from a fresh clone (only Python 3.11 needed):
#   make run    - create .venv, install pinned deps, run the default pipeline
#   make test   - same install plus test tools, then ruff and the test suite
PYTHON ?= python3.11
VENV   ?= .venv
CORES  ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu)
BIN     = $(VENV)/bin

.PHONY: install run test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores $(CORES)   # default: this machine's cores

lint: install
	$(BIN)/ruff check ssae_steps tests bench docs
	$(BIN)/ruff format --check ssae_steps tests bench docs

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n 2 --dist loadgroup   # the tiny-pipeline tests share one worker

clean:
	rm -rf results/model results/corpora logs benchmarks .snakemake
