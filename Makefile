# One way to do each thing: `make run` starts a dev node, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ANVIL_VERSION := 1.7.1
SOLC_VERSION := 0.8.30
SOLCJS := .tools/node_modules/.bin/solcjs
CAST := .tools/node_modules/.bin/cast
ARGS ?=

.PHONY: run test lint bench install clean

# py-libp2p builds fastecdsa from source: it needs gcc and GMP's headers (Debian's libgmp-dev).
$(STAMP): pyproject.toml
	@test -f /usr/include/gmp.h || test -f /usr/include/$$(gcc -print-multiarch)/gmp.h || { \
		echo "installing libgmp-dev (py-libp2p builds fastecdsa against it)"; \
		SUDO=$$(test "$$(id -u)" -eq 0 || command -v sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q libgmp-dev; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ogpu-node run --dev $(ARGS)

# pytest exits 5 when a selection (ARGS) collects no test: that is not a failure; every other non-zero is.
test: $(STAMP) $(SOLCJS) $(CAST)
	$(BIN)/python -m pytest -q $(ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" || exit $$rc; }

# Test tools from npm: solc-js compiles against the generated interfaces; Foundry's cast checks that
# its users see revert reasons unchanged.
$(SOLCJS):
	mkdir -p .tools
	cd .tools && npm install --silent --no-audit --no-fund solc@$(SOLC_VERSION)

$(CAST): $(SOLCJS)
	cd .tools && npm install --silent --no-audit --no-fund @foundry-rs/cast@$(ANVIL_VERSION)

lint: $(STAMP)
	$(BIN)/ruff check ogpu_node tests benchmarks
	$(BIN)/lint-imports

.bench/node_modules/.bin/anvil:
	mkdir -p .bench
	cd .bench && npm install --silent --no-audit --no-fund @foundry-rs/anvil@$(ANVIL_VERSION)

bench: $(STAMP) .bench/node_modules/.bin/anvil
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .bench .tools .pytest_cache
