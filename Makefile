# One Makefile for setup, guests, tests, benchmarks.
#   make run          set up, build the guests, run the tour (docs/tour.md)
#   make demo         set up, build the guests, run demo.sh (the raw emu run commands)
#   make test         set up, build the guests, run the whole suite
#   make conformance  the full differential matrix against QEMU's page walker
#   make bench        speed figures as ratios against plain Unicorn
#   make fuzz         the property tests run FUZZ_SCALE times longer, seed recorded
#   make soak         SOAK_SECONDS of machines under memory pressure, then the books
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE := emu/hw/_native.so

.PHONY: all setup guests native bytecode run demo test lint conformance bench fuzz soak clean

FUZZ_SCALE   ?= 20
FUZZ_SEED    ?= $(shell date +%s)
SOAK_SECONDS ?= 300

all: setup guests native bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

guests:
	$(MAKE) -C guest

native: $(NATIVE)

# Byte-compile the package once: environments with PYTHONDONTWRITEBYTECODE=1 would
# otherwise recompile every module at every start of `emu` (half its start-up time).
bytecode: setup
	$(PY) -m compileall -q emu bench

$(NATIVE): emu/hw/native.c
	$(CC) -O2 -shared -fPIC -Wall -Werror -o $@ $<

run: all
	@$(VENV)/bin/emu scenario run --all

demo: all
	@./demo.sh

# The property tests run with a fixed seed here (the same command gives the same run);
# make fuzz explores other seeds, longer.
TEST_SEED ?= 0
# The suite runs on every core (pytest-xdist): one worker process per core, each test file
# kept whole on one worker (--dist loadscope: a module's shared machines and fixtures are
# made once). The longest modules go first (tests/conftest.py, LONGEST_FIRST; xdist's own
# order, by number of tests, is turned off) so both workers end together. TEST_WORKERS=0 runs
# it in this one process.
TEST_WORKERS ?= auto

test: all
	$(VENV)/bin/ruff check emu tests bench fuzz
	$(PY) -m pytest -q --hypothesis-seed=$(TEST_SEED) -n $(TEST_WORKERS) --dist loadscope \
		--no-loadscope-reorder

conformance: all
	$(PY) -m pytest -q -m conformance tests/hw

bench: all
	$(PY) -m bench

# Every property test marked `fuzz`, with FUZZ_SCALE times its examples. The seed is
# printed first: `make fuzz FUZZ_SEED=...` replays a run exactly.
fuzz: all
	@echo "make fuzz: seed $(FUZZ_SEED), scale $(FUZZ_SCALE) (replay: make fuzz FUZZ_SEED=$(FUZZ_SEED) FUZZ_SCALE=$(FUZZ_SCALE))"
	EMU_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q -m fuzz -p no:cacheprovider \
		--hypothesis-seed=$(FUZZ_SEED) --hypothesis-show-statistics tests

soak: all
	$(PY) -m fuzz.soak --seconds $(SOAK_SECONDS)

clean:
	$(MAKE) -C guest clean
	rm -f $(NATIVE)
	rm -rf $(VENV) *.egg-info
	find emu bench fuzz tests -name __pycache__ -type d -prune -exec rm -rf {} +
