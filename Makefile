# make test   set up .venv if missing (torch, the build, the test tools), build, run pytest
# make bench  the benchmark: fused op vs the stock path on every device and backend here
#
# TORCH picks the torch to install: the default is the CUDA build (installs from this machine's
# disk; with it the CUDA kernel compiles and links even without a GPU).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1
MAX_JOBS ?= 2
BENCH_ARGS ?=
# GPU architectures for the CUDA kernel (Ampere and Hopper, PTX for newer): override as needed.
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX

# Every C++/CUDA file under csrc/ (the build reads them all), and what make lint formats.
CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
SOURCES := $(CSRC) setup.py pyproject.toml
CXX_LINT := $(CSRC) $(wildcard bench/*.cpp)

.PHONY: test bench bench-pytest build lint clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" ninja numpy setuptools wheel
	touch $@

# --no-build-isolation: build against the torch above, never a second one fetched by pip.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --quiet --no-build-isolation -e ".[test,bench,dev]"
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest

bench: build
	$(PY) bench/run.py $(BENCH_ARGS)

bench-pytest: build
	$(PY) -m pytest bench/test_benchmarks.py --benchmark-columns=median,iqr,ops

lint: build
	$(PY) -m ruff check simplecnn_kernels tests bench setup.py
	$(PY) -m ruff format --check simplecnn_kernels tests bench setup.py
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_LINT)

clean:
	rm -rf build simplecnn_kernels/_C*.so *.egg-info $(VENV)/.built
