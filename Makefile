# hybridmoe — the two commands that do all set-up on a fresh machine:
#   make train   install what is missing, build, run the main job on the embedded default
#   make test    the same set-up, then the whole test suite (ctest)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
OUT ?= out
CTEST_FLAGS ?=

.PHONY: all deps configure build train test test-unit test-blas-kernel bench clean

all: build

deps:
	@scripts/install_deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

train: build
	$(BUILD)/hmoe train --out $(OUT) --overwrite

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

# The one-process tests only (seconds each).
test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L unit $(CTEST_FLAGS)

# The unit and multirank tests again under a second OpenBLAS kernel (Haswell on an AVX-512 CPU,
# Sandybridge on an AVX2 one; scripts/second_blas_kernel.sh), so that a test which only passes with
# one kernel's rounding fails on any machine. OPENBLAS_VERBOSE=2 makes OpenBLAS name the kernel.
test-blas-kernel: build
	@kernel=$$(scripts/second_blas_kernel.sh) && \
	  echo "test-blas-kernel: OPENBLAS_CORETYPE=$$kernel ($$(OPENBLAS_CORETYPE=$$kernel \
	    OPENBLAS_VERBOSE=2 $(BUILD)/tests/test_router --gtest_list_tests 2>&1 | grep -m1 Core))" && \
	  cd $(BUILD) && OPENBLAS_CORETYPE=$$kernel ctest --output-on-failure -j $(JOBS) \
	    -L 'unit|multirank' $(CTEST_FLAGS)

bench: build
	$(BUILD)/hmoe bench layer

clean:
	rm -rf $(BUILD)
