# hybridmoe — the two commands that do all set-up on a fresh machine:
#   make train   install what is missing, build, run the main job on the embedded default
#   make test    the same set-up, then the whole test suite (ctest)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
OUT ?= out
CTEST_FLAGS ?=
ASAN_BUILD ?= build-asan

.PHONY: all deps configure build train test test-unit test-blas-kernel asan format-check bench clean

all: build

deps:
	@scripts/install_deps.sh --python

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

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

# A Debug build with AddressSanitizer and UndefinedBehaviorSanitizer in $(ASAN_BUILD), then the
# unit and multirank tests on it. UBSan findings abort (-fno-sanitize-recover); the options travel
# in the environment to every process a test starts (the multirank tests re-execute themselves as
# ranks). LeakSanitizer is on, with no suppressions: LibTorch, Gloo and OpenBLAS (not built with
# ASan) leave nothing it reports. The hmoe program is not built: no test of these labels runs it.
# From scratch on 2 shared cores: about 35 min to build (cold ccache), 22 min of tests.
SANITIZER_ENV = ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:check_initialization_order=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
asan: deps
	@cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DHMOE_SANITIZE=address,undefined \
	  -DHMOE_BUILD_TOOLS=OFF $(CMAKE_FLAGS)
	@$(SANITIZER_ENV) cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS) -L 'unit|multirank' \
	  $(CTEST_FLAGS)

# clang-format (the repo's .clang-format) over the project's own sources; lists the files whose
# formatting differs and fails if there is any. `clang-format -i FILE` fixes one.
CLANG_FORMAT ?= clang-format
FORMAT_DIRS = include src tools bench kernels tests python
format-check: deps
	@files=$$(find $(FORMAT_DIRS) -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.cpp' \
	    -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) | sort) && \
	  bad=$$(for f in $$files; do \
	    $(CLANG_FORMAT) --dry-run --Werror "$$f" >/dev/null 2>&1 || echo "  $$f"; done) && \
	  if [ -n "$$bad" ]; then \
	    echo "format-check: these files differ from .clang-format ($(CLANG_FORMAT) -i fixes them):"; \
	    echo "$$bad"; exit 1; fi && \
	  echo "format-check: $$(echo $$files | wc -w) files match .clang-format ($$($(CLANG_FORMAT) --version))"

bench: build
	$(BUILD)/hmoe bench layer

clean:
	rm -rf $(BUILD)
