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

SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

build: build/.built

# Rebuilt only when a source changed. The log goes to build/fastnn-build.log; a failed
# build prints its end and stops make.
build/.built: $(VENV)/.installed $(SOURCES)
	@mkdir -p build; start=$$(date +%s); \
	if MAX_JOBS=$(JOBS) $(VPY) -m pip install --no-build-isolation --no-deps -e . \
	     > build/fastnn-build.log 2>&1; then \
	  echo "fastnn built in $$(( $$(date +%s) - start )) s (log: build/fastnn-build.log)"; \
	else tail -n 40 build/fastnn-build.log; echo "fastnn build failed (log: build/fastnn-build.log)"; exit 1; fi
	touch $@

demo: build
	FASTNN_DATA=$${FASTNN_DATA:-$(DATA)} $(VPY) -m fastnn.train $(ARGS)

# The kernel tests run twice more: on the CPU kernels' portable paths (what non-x86 CPUs
# run; ATEN_CPU_CAPABILITY=default turns off fastnn's AVX2 code as it does PyTorch's), and
# with the CPU kernels replaced by the CUDA kernels in the CPU emulator of tests/cuda_emu
# (FASTNN_EMULATE_CUDA=1), so the CUDA code is tested on machines without a GPU.
KERNEL_TESTS := tests/test_linear.py tests/test_relu.py tests/test_log_softmax.py tests/test_half.py \
                tests/test_losses.py tests/test_gradcheck.py tests/test_determinism.py

test: build
	$(VPY) -m pytest -q tests $(ARGS)
	@echo "The kernel tests again on the portable (non-AVX2) CPU paths:"
	ATEN_CPU_CAPABILITY=default $(VPY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)
	@echo "The kernel tests again on the CUDA kernels, run by the CPU emulator (tests/cuda_emu):"
	FASTNN_EMULATE_CUDA=1 $(VPY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)

bench: build
	FASTNN_DATA=$${FASTNN_DATA:-$(DATA)} $(VPY) -m benchmarks.run $(ARGS)

clean:
	rm -rf build *.egg-info fastnn/_C*.so
