# One venv, created on demand, so `make test` works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench bench-replicate bench-cpu bench-scaling install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'ministack>=1.5,<2'  # see pyproject.toml: its botocore pin is too old
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	bash bench/demo.sh

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/replicate_bench.py
	$(BIN)/python bench/smallfiles.py --big-gib 16
	$(BIN)/python bench/versions.py
	$(BIN)/python bench/seal_bench.py
	$(BIN)/python bench/catalog_scale.py
	$(BIN)/python bench/cpu_per_gib.py
	PYTHONPATH=. $(BIN)/python bench/scaling.py
	$(BIN)/python bench/s3_requests.py

bench-scaling: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/scaling.py

bench-replicate: $(STAMP)
	$(BIN)/python bench/replicate_bench.py

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_per_gib.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
