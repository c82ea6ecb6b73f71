# Every target installs what it needs into .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo docs clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check node operator tests
	$(BIN)/ruff format --check node operator tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python -m mutirao.demo

# Renders every docs/**/*.puml to an .svg beside it. Installs plantuml and graphviz (Debian
# packages) only when plantuml or dot is missing, so it works on a fresh machine.
DOCS_PUML = $(shell find docs -name '*.puml' 2>/dev/null | sort)

docs:
	@if ! command -v plantuml >/dev/null 2>&1 || ! command -v dot >/dev/null 2>&1; then \
		echo "docs: installing plantuml and graphviz with apt-get"; \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq plantuml graphviz; \
	fi
	$(if $(DOCS_PUML),plantuml -tsvg -failfast2 $(DOCS_PUML),@echo "docs: no .puml files under docs/")
	@for f in $(DOCS_PUML:.puml=.svg); do echo "docs: wrote $$f"; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
