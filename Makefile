# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install cxrlab from this checkout first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test docs bench browser postgres clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cxrlab doctor
	$(BIN)/cxrlab demo --out runs/demo

# One pytest worker per core (pytest-xdist), each with one torch thread: the suite is mostly many
# small single-threaded steps, and two workers finish it in about half the time of one on 2 cores.
# The slowest tests are listed at the end, so a run shows where the suite's time goes.
# A plain `.venv/bin/python -m pytest` runs the same tests in one process.
test: install browser postgres docs
	$(BIN)/cxrlab doctor --require-java
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile --durations=15

# The manual (docs/, mkdocs.yml) as a site in site/; strict: a broken link or reference fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Browser tests use the system's chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium not found: browser tests will be skipped (install it: sudo apt-get install -y chromium)"; \
	  fi; }

# The shared-study test starts a real PostgreSQL server (Debian's); skipped with a reason without one.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql for the shared-study test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "postgresql not found: the shared-study test will be skipped (install it: sudo apt-get install -y postgresql)"; \
	  fi; }

bench: install
	$(BIN)/python bench/bench_prepare.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
