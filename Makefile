# fastnn: the two set-up commands for a fresh machine.
#   make demo   create .venv, install torch, build fastnn, train the MNIST classifier
#   make test   create .venv, install torch, build fastnn, run the test suite
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
JOBS    ?= $(shell nproc)
DATA    ?= $(abspath ../shared/data)
ARGS    ?=

.PHONY: demo test build bench clean

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.txt
	touch $@

build: $(VENV)/.installed
	MAX_JOBS=$(JOBS) $(VPY) -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3

demo: build
	FASTNN_DATA=$${FASTNN_DATA:-$(DATA)} $(VPY) -m fastnn.train $(ARGS)

test: build
	$(VPY) -m pytest -q tests $(ARGS)

bench: build
	FASTNN_DATA=$${FASTNN_DATA:-$(DATA)} $(VPY) -m benchmarks.run $(ARGS)

clean:
	rm -rf build *.egg-info fastnn/_C*.so
