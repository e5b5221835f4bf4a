# hybridmoe — the two commands that do all set-up on a fresh machine:
#   make train   install what is missing, build, run the main job on the embedded default
#   make test    the same set-up, then the whole test suite (ctest)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
OUT ?= out
CTEST_FLAGS ?=

.PHONY: all deps configure build train test bench clean

all: build

deps:
	@scripts/install_deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

train: build
	$(BUILD)/hmoe train --out $(OUT)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

bench: build
	$(BUILD)/hmoe bench layer

clean:
	rm -rf $(BUILD)
