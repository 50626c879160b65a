# codemix: `make test` and `make demo` work on a fresh machine (Debian + Python 3.11).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CODEMIX_DATA ?= $(abspath ../shared/data)
STAMP := $(VENV)/.installed

.PHONY: install test demo system-deps gpu-bundle clean

# The one install step: system toolchains, .venv, the project with test extras (CPU torch pinned here only).
install: system-deps $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

# rustc and go run generated programs in the MBPP sandbox (Debian's rustc: the sandbox user cannot run a
# rustup toolchain under /root); testify is the assert package of HumanEval-X's Go tests (the sandbox
# finds it under /usr/share/gocode, offline); chromium renders the report in a test.
system-deps:
	@missing=""; \
	command -v go >/dev/null || [ -x /usr/lib/go/bin/go ] || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/github.com/stretchr/testify/assert ] || missing="$$missing golang-github-stretchr-testify-dev"; \
	[ -x /usr/bin/rustc ] || missing="$$missing rustc"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: install
	$(VENV)/bin/codemix data fetch --from ../shared/data cogs_vf bigbench mbpp multipl_e c4 code humaneval_x adapt vuln
	$(VENV)/bin/codemix study run studies/demo.yaml

# The bundle benchmarks/gpu_check.sh carries to a GPU machine (.device/, git-ignored, < 64 MiB): wheels
# of the dependencies its image lacks and the data the check reads.
gpu-bundle: install
	$(PY) benchmarks/gpu_bundle.py

clean:
	rm -rf runs .pytest_cache
