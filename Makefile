# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install cxrlab from this checkout first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cxrlab doctor
	$(BIN)/cxrlab demo --out runs/demo

test: install
	$(BIN)/cxrlab doctor --require-java
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_prepare.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
