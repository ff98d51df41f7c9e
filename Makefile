# `make test` and `make demo` build .venv on first use: a fresh clone needs nothing else.
PY := .venv/bin/python
PIP_QUIET := -q --disable-pip-version-check
# A stamp inside the project: touching .venv/bin/python would follow its symlink to the base interpreter.
STAMP := .venv/.installed

.PHONY: test test-fast lint format demo bench clean

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import specnorm, fastai, torchaudio, soundfile" || { rm -rf .venv; exit 1; }
	touch $(STAMP)

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q

test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check specnorm tests benchmarks
	$(PY) -m ruff format --check specnorm tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format specnorm tests benchmarks
	$(PY) -m ruff check --fix specnorm tests benchmarks

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m specnorm demo

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf .venv build *.egg-info .pytest_cache
