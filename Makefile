# pipesynth developer entry points. PYTHON may point at a virtualenv's interpreter.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install test test-slow bench lint demo clean

# torch 2.13.0 first: its CPU build is what the range in setup.cfg should resolve to,
# and a bare `torch` requirement would pull the newest release with CUDA packages.
install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[torch,dev,hf]'

test:
	$(PYTHON) -m pytest -q

test-slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	@set -e; ls benchmarks/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }; \
	for f in benchmarks/*.py; do echo "== $$f"; $(PYTHON) $$f; done

lint:
	$(PYTHON) -m ruff check ir synth backends tests benchmarks examples

demo:
	$(PYTHON) -m ir --out out/demo --force

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache .hypothesis
