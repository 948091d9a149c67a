# The two commands the README opens with. Both set themselves up from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

# The editable install links each source file (strict mode, which mypy can follow):
# reinstall when pyproject.toml changes or a package folder gains or loses a file.
$(STAMP): pyproject.toml sdk cli store ingest query
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stride up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .stride .pytest_cache .mypy_cache .ruff_cache
