# strata: the two commands of README.md are `make run` and `make test`; both
# install what they need first (scripts/install-deps.sh, as root).
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps build run test unit asan asan-ci bench soak deb clean fuzz fuzz-soak fuzz-coverage

all: build

deps:
	bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Serve the demo device (a sparse image under var/) over NBD.
run: build
	bash scripts/run-demo.sh

# Unit tests (GoogleTest) and integration tests (real NBD clients).
test: build
	cd $(BUILD) && ctest --output-on-failure

unit: build
	$(BUILD)/unit_tests

# The same tests under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/);
# any sanitizer finding (a leak at exit too) fails. asan-ci: the unit tests and
# the integration tests that drive the parsers and the NBD server (CI runs it).
asan: deps
	JOBS=$(JOBS) bash scripts/asan.sh all

asan-ci: deps
	JOBS=$(JOBS) bash scripts/asan.sh ci

# Randomized online operations (snapshot, merge, flatten, dirty sync) under
# concurrent I/O with random seeds for MINUTES minutes (tests/stress/).
MINUTES ?= 10
soak: build
	bash scripts/soak.sh $(MINUTES)

# libFuzzer harnesses (src/**/*_fuzz.cc) into build-fuzz/fuzz/ (clang, ASan + UBSan);
# `make fuzz-soak MINUTES=N` runs each N minutes (new inputs: build-fuzz/corpus/).
fuzz: deps
	bash scripts/fuzz.sh build

fuzz-soak: deps
	bash scripts/fuzz.sh soak $(MINUTES)

# Line and function coverage of the code each harness targets, over its corpus.
fuzz-coverage: deps
	bash scripts/fuzz.sh coverage

bench: build
	bash bench/run.sh

# The Debian package (debian/, debhelper), built from source: build/deb/strata_*.deb.
deb: deps
	bash scripts/make-deb.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-fuzz-cov
