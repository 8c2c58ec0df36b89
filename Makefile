# Two entry points: `make demo` runs the main job on its embedded default, `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python pipeline/generate.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python bench/bench_shard_job.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_sage.py
	$(BIN)/python bench/bench_detect.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info demo_out
