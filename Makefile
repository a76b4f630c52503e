# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
# Every install goes through constraints.txt so pip takes the pinned torch from the local disk.
PYTHON ?= python3.11
VENV ?= .venv
PIP = $(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt
STAMP = $(VENV)/.t2i-installed

.PHONY: install demo test test-fast benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/t2i generate "a large red circle above a small blue square" --n 8 --seed 0 --out demo.png
	@echo "wrote demo.png"

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/lafite_shapes.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
