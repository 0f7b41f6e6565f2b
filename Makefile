# kale: the two commands are `make run` and `make test` (see README.md).
PYTEST ?= /usr/bin/python3 -m pytest
JOBS ?= $(shell nproc)

.PHONY: all build build-asan build-release deps deps-test run test unit integration clean

all: build

deps:
	@sh scripts/deps.sh build

deps-test:
	@sh scripts/deps.sh test

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j$(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKALE_SANITIZE=ON >/dev/null
	cmake --build build-asan -j$(JOBS)

# -O3 finds warnings the other trees do not: built (not tested) by `make test`.
build-release: deps
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build-release -j$(JOBS)

run: build
	@sh scripts/deps.sh run
	sh scripts/run.sh

# Every unit and integration test, in the normal and in the ASan+UBSan tree.
test: deps-test
	$(MAKE) build build-asan build-release
	FUZZ_RUNS=20000 sh scripts/fuzz.sh
	sh scripts/test.sh build
	sh scripts/test.sh build-asan

clean:
	rm -rf build build-asan build-release
