# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
# Every install goes through constraints.txt so pip takes the pinned torch from the local disk.
PYTHON ?= python3.11
VENV ?= .venv
PIP = $(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt
STAMP = $(VENV)/.t2i-installed
# `t2i data laion` runs img2dataset as a separate command: it pins webdataset<0.3, t2i needs 1.x. Its own
# venv, never with torch; tests/test_data_laion.py finds it here (or where T2I_IMG2DATASET points).
IMG2DATASET_VENV ?= .venv-img2dataset
IMG2DATASET_VERSION = 1.47.0
IMG2DATASET_STAMP = $(IMG2DATASET_VENV)/.img2dataset-installed

.PHONY: install img2dataset browser demo test test-fast benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

$(IMG2DATASET_STAMP):
	test -x $(IMG2DATASET_VENV)/bin/python || $(PYTHON) -m venv $(IMG2DATASET_VENV)
	$(IMG2DATASET_VENV)/bin/pip install --disable-pip-version-check -q img2dataset==$(IMG2DATASET_VERSION)
	@if $(IMG2DATASET_VENV)/bin/pip show -q torch 2>/dev/null; then \
		echo "img2dataset pulled in torch; remove $(IMG2DATASET_VENV) and pin its dependencies"; exit 1; fi
	touch $(IMG2DATASET_STAMP)

img2dataset: $(IMG2DATASET_STAMP)

# The browser tests of `t2i serve` (tests/test_serve_browser.py) drive Debian's chromium through playwright; as root
# (CI) it is installed here from Debian's packages, otherwise those tests say how to install it and skip.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; fi

DEMO_OUT ?= demo.png

# `t2i generate` says what it wrote; nothing more to echo.
demo: $(STAMP)
	$(VENV)/bin/t2i generate "a large red circle above a small blue square" --n 8 --seed 0 --out $(DEMO_OUT)

test: $(STAMP) $(IMG2DATASET_STAMP) browser
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP) $(IMG2DATASET_STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/lafite_shapes.py

clean:
	rm -rf $(VENV) $(IMG2DATASET_VENV) build *.egg-info src/*.egg-info .pytest_cache
