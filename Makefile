# The two commands of the README live here: `make up` (the main job) and `make test`.
# Both do all set-up on a fresh machine first.
#
# The virtual environment is built from the system interpreter (/usr/bin/python3.11)
# rather than a per-user one, so that processes running as other users (isolated
# notebook servers) can execute it.
PYTHON_SYS ?= $(shell command -v /usr/bin/python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.beamside-installed

.PHONY: setup up test bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/setup.sh
	PYTHON_SYS=$(PYTHON_SYS) VENV=$(VENV) bash .ci/setup.sh
	touch $@

up: setup
	$(VENV)/bin/beamside up

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m benchmarks
