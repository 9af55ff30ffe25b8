# The whole set-up on a fresh machine: `make up` runs the embedded stack, `make test` runs every test.
# .venv is rebuilt only when requirements.lock or pyproject.toml change, so both also work offline.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint typecheck clean lock tools system-deps

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/radstream up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps tools lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

system-deps:
	bash scripts/system-deps.sh

tools:
	bash deploy/tools/install.sh

lock:
	$(PYTHON) -m venv /tmp/radstream-lock && /tmp/radstream-lock/bin/pip install -q -r requirements.in
	( echo '# Exact versions that run. Regenerate with `make lock` after editing requirements.in.'; \
	  /tmp/radstream-lock/bin/pip freeze --exclude-editable ) > requirements.lock

clean:
	rm -rf $(VENV) .venv-tools .radstream .pytest_cache .mypy_cache .ruff_cache
