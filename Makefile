# gpuqueue: `make run` to use it, `make test` to check it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: install run test migrate lint bench clean

# What running needs (the diffusers backend, the embedded PostgreSQL): `make run` installs only
# this, saying so in one line; the dev tools come on top for test, lint and bench.
$(RUN_STAMP): pyproject.toml
	@echo "installing gpuqueue and what it runs on into $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[diffusers,embedded]'
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[diffusers,dev]'
	touch $@

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	@$(VENV)/bin/gpuqueue run

test: $(STAMP) node_modules/.package-lock.json
	$(PY) -m pytest -q

migrate: $(RUN_STAMP)
	@$(VENV)/bin/gpuqueue migrate

# The page's checker (TypeScript over web/static's JSDoc types) and the browser tests' axe-core,
# pinned in package-lock.json.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

lint: $(STAMP) node_modules/.package-lock.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy queueing web gpu_worker gpuqueue bench harness
	node_modules/.bin/tsc --project jsconfig.json

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
