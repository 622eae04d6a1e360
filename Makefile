# Two commands for a fresh machine (see README.md):
#   make book   create .venv, install, generate the embedded default, execute every notebook
#               under the cpu profile, build the HTML into book/_build/html
#   make test   install the dev requirements into the same venv and run pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROFILE ?= cpu

export ADLIB_EMBEDDED := $(CURDIR)/data/embedded
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test venv install install-dev embedded execute clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

embedded: $(VENV)/.installed
	$(BIN)/python -c "from adlib.data.embedded import ensure_embedded; print('embedded default:', ensure_embedded())"

book: embedded
	$(BIN)/python -m adlib.book.builder --profile $(PROFILE)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf book/_build book/chapters book/_generated book/_static_vendor book/_toc.yml \
	       book/scoreboard.md book/status.md data/embedded build
