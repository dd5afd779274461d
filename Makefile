# The two commands: `make demo` (install + run the demo job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench quality gen-quality zeroshot-quality

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The demo ends with the before/after report: open out/demo/report.html in a browser.
demo: $(STAMP)
	$(VENV)/bin/darkroom run jobs/demo.yaml --log-format plain; rc=$$?; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 3 ]; then exit $$rc; fi; \
	$(VENV)/bin/darkroom report out/demo && echo "before/after: open out/demo/report.html in a browser"

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# PSNR of darkroom's own models vs bicubic/Lanczos/non-local means on held-out images (docs/quality.md).
quality: $(STAMP)
	$(PY) benchmarks/quality.py

# Generators' samples scored by the digits classifier, class balance, nearest-training-image distances
# (docs/generation.md; DDPM over 1000 steps dominates: tens of minutes on one thread).
gen-quality: $(STAMP)
	$(PY) benchmarks/generation_quality.py

# Zero-shot inpainting / ×4 SR / colorization with the digits DDPM prior vs simple baselines on
# held-back digits (docs/zeroshot.md; ~3 CPU-minutes on one thread).
zeroshot-quality: $(STAMP)
	$(PY) benchmarks/zeroshot_quality.py

# Throughput of darkroom (tuned and default resources) vs a raw loop, a one-image loop and naive Ray Data,
# 5 rounds, every target checked in every round (~50 min on 2 cores: each round ~8 min, plus inputs and limits);
# prints a table, writes benchmarks/results/throughput-<date>.json. See docs/benchmarks.md.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/throughput.py --repeat 5

clean:
	rm -rf out .pytest_cache
