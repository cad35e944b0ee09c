# The two commands: `make run` and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
MUTATE_STAMP := $(VENV)/.installed-mutate
MUTATE_JOBS ?= 2

.PHONY: run test lint typecheck unit clean chromium mutate

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(MUTATE_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install -q -e '.[test,mutate]'
	touch $@

run: $(STAMP)
	$(BIN)/broker up $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check broker tests
	$(BIN)/ruff format --check broker tests

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

# The HTML report is checked in a real browser: Debian's chromium, installed once if absent.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: the browser test will be skipped (install Debian's chromium)"; fi; }

test: lint typecheck chromium $(TEST_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Mutation testing of the pure core, the verifier and the usage accounting, against the fast
# unit tests only ([tool.mutmut] in pyproject.toml). A fresh run every time; not part of
# `make test`: about 4 min on 2 quiet cores, 20-30 min on 2 busy ones. See README, "Mutation testing".
mutate: $(MUTATE_STAMP)
	rm -rf mutants
	@start=$$(date +%s); $(BIN)/mutmut run --max-children $(MUTATE_JOBS); rc=$$?; \
	  echo; echo "mutmut run: exit $$rc after $$(( $$(date +%s) - start )) s"; \
	  echo "mutants by status:"; $(BIN)/mutmut results --all true | sed 's/^.*: //' | sort | uniq -c; \
	  echo "surviving mutants (read one with: $(BIN)/mutmut show NAME):"; $(BIN)/mutmut results; \
	  exit $$rc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache mutants
