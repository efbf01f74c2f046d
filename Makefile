# Two entry points: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint lock

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Generation in float32: bf16 kernels differ from CPU to CPU, float32 ones agree (README, "Quick start").
demo: $(STAMP)
	$(VENV)/bin/regl bench --dataset mnist-10k --partition classes --classes-per-client 2 --clients 10 \
		--rounds 10 --arms none,diffusion --fill-supplement 0.2 --fill-lora-steps 100 --fill-prior-per-class 8 \
		--fill-sampler lcm --fill-steps 1 --fill-dtype float32

test: $(STAMP) lint
	$(PY) -m pytest -q

# Everything but the tests that start Ray, a SuperLink, uvicorn or a browser.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Re-resolve constraints.txt: every dependency, direct or not, at one exact version.
# Existing pins are kept unless LOCK_FLAGS=--upgrade.
lock: $(STAMP)
	$(PY) -m pip install -q pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q $(LOCK_FLAGS) --extra test --strip-extras \
		--allow-unsafe --no-emit-index-url --no-emit-find-links -o constraints.txt pyproject.toml
