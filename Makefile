# `make test` and `make demo` build .venv on first use: a fresh clone needs nothing else.
PY := .venv/bin/python
PIP_QUIET := -q --disable-pip-version-check

.PHONY: test demo bench clean

$(PY): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import specnorm, fastai, torchaudio, soundfile" || { rm -rf .venv; exit 1; }
	touch $(PY)

test: $(PY)
	MPLBACKEND=Agg $(PY) -m pytest -q

demo: $(PY)
	MPLBACKEND=Agg $(PY) -m specnorm demo

bench: $(PY)
	$(PY) -m benchmarks.run

clean:
	rm -rf .venv build *.egg-info .pytest_cache
