# kanband: two commands on a fresh machine.
#   make run   create .venv, install, start the daemon in the foreground (your real XDG board, example
#              profiles); extra kanband arguments in ARGS, e.g. ARGS="--state-dir $(mktemp -d) --socket /tmp/k.sock"
#   make test  create .venv, install, run the whole test suite (installs Chromium for the web
#              board's browser tests, and zsh and fish for the completion tests, when they are
#              missing and we may: root, or passwordless sudo for Chromium)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench docs clean check-config compile shells browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# Byte-compile up front: the kanban client must start fast even where
# PYTHONDONTWRITEBYTECODE keeps Python from caching .pyc files itself.
compile: $(STAMP)
	@$(BIN)/python -m compileall -q client daemon

ARGS ?=

run: compile
	$(BIN)/kanband --config examples/config.yaml $(ARGS)

# The completion tests load the scripts in real zsh and fish (bash is always there).
# As root with apt, they are installed; otherwise this prints the one command to run.
shells:
	@if command -v zsh >/dev/null && command -v fish >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q zsh fish >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q zsh fish >/dev/null; }; \
	else echo "the shell completion tests need zsh and fish: sudo apt-get install -y zsh fish"; fi

# The browser tests drive Debian's Chromium through Playwright; Playwright never downloads a browser.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test: the web board's browser tests need Chromium at $(CHROMIUM); install your system's chromium package" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "make test: installing chromium (apt-get) for the browser tests" >&2; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		echo "make test: installing chromium (sudo apt-get) for the browser tests" >&2; \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make test: the web board's browser tests need Chromium; run:  sudo apt-get install -y chromium" >&2; exit 1; \
	fi

test: compile shells browser
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: compile
	$(BIN)/python bench/run_all.py

docs: $(STAMP)
	$(BIN)/python -m client.protocol > docs/protocol.md
	$(BIN)/python -m daemon.config > docs/config.md
	$(BIN)/python -m tests.unit.test_docs

check-config: $(STAMP)
	$(BIN)/kanband --check-config --config examples/config.yaml

clean:
	rm -rf $(VENV) build *.egg-info
