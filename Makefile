# Two commands set everything up on a fresh machine with Python 3.11 and pip:
#   make demo   - creates .venv, installs recsys, starts the embedded PostgreSQL, runs the nightly job on a sample
#   make test   - creates .venv if missing and runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
DEMO_DIR ?= $(abspath .demo)

.PHONY: install demo test test-fast lint test-tools bench-load clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,peers,ray]'
	-$(BIN)/python -c "import nltk; nltk.download('stopwords', quiet=True, raise_on_error=True)" >/dev/null 2>&1 \
	  || echo "note: NLTK stopwords not downloadable here (offline); recsys falls back to an equivalent list"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	RECSYS_HOME=$${RECSYS_HOME:-$(DEMO_DIR)/home} $(BIN)/recsys demo --workdir $(DEMO_DIR)

TEST_ENV = NLTK_DATA=$${NLTK_DATA:-$(SHARED)/nltk_data} RECSYS_SHARED_DATA=$${RECSYS_SHARED_DATA:-$(SHARED)/data}
LINT_PATHS = recsys tests benchmarks alembic setup.py

# make test: style first (ruff check and ruff format --check), then every test (-rs: the reason
# of each skipped test is printed, e.g. the browser check of the report without chromium)
test: lint test-tools
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs

# System tools some tests use: headless Chromium (the report's browser test) and docker-compose
# (parses docker-compose.yml). Installed with apt when missing and run as root; anything else
# only prints a note, and those tests then skip and say why.
TEST_TOOLS_MISSING = $$( { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || echo chromium; } ; \
	  { command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || echo docker-compose; } )
test-tools:
	-@missing="$(TEST_TOOLS_MISSING)"; [ -z "$$missing" ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1; } || \
	  echo "note: could not install $$missing (needs root and apt-get); the tests that use them will skip"

# make test-fast: the same without the slow and subprocess markers
test-fast: lint
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow and not subprocess"

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

# docker-compose parses docker-compose.yml in the tests. Root on Debian gets the Debian package
# when no compose is installed; anywhere else (or offline) the compose test skips and says why.
clean:
	rm -rf $(VENV) .demo .pytest_cache
