# Streaming completions reference apps. `make` alone lists the targets.
VENV ?= .venv
PYTHON ?= python3
PORT ?= 8000
DEMO_PORT ?= 8001
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
REDIS := /usr/bin/redis-server
NGINX := /usr/sbin/nginx
BENCH_STAMP := $(VENV)/.installed-bench
# A copied view on openai 2 (httpx, not httpx2): tests/test_copy_from_readme.py runs it.
OPENAI2_VENV := .venv-openai2
OPENAI2_STAMP := $(OPENAI2_VENV)/.installed
EXPRESS := bench/express
CHAT_UI := chat_ui
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run run-django dev-flask dev-django demo-upstream test check screenshot bench chat-ui

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the apps with their test and dev tools

# System packages the tests drive for real, from Debian, in one apt-get run: Chromium
# for the browser tests (Playwright cannot download its own here), Redis for the rate
# limit's shared mode, nginx to test the README's proxy block as written.
$(CHROMIUM) $(REDIS) $(NGINX) &:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium redis-server nginx

run: $(STAMP) chat-ui ## Serve the Flask app under gunicorn+gevent on http://127.0.0.1:8000 (PORT=...)
	$(BIN)/gunicorn -c gunicorn.conf.py -b 127.0.0.1:$(PORT) "flask_app:create_app()"

run-django: $(STAMP) chat-ui ## Serve the Django project under gunicorn+gevent on http://127.0.0.1:8000 (PORT=...)
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/gunicorn -c gunicorn.conf.py -b 127.0.0.1:$(PORT) django_project.wsgi

dev-flask: $(STAMP) ## Flask's development server (flask run) on port 8000 (PORT=...)
	$(BIN)/flask --app flask_app run --port $(PORT)

dev-django: $(STAMP) ## Django's development server (runserver) on port 8000 (PORT=...)
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

demo-upstream: $(STAMP) ## The offline demo model as an OpenAI API on http://127.0.0.1:8001/v1 (DEMO_PORT=...)
	$(BIN)/python -m shared.demo_server --port $(DEMO_PORT)

$(OPENAI2_STAMP): tests/openai2/requirements.txt
	$(PYTHON) -m venv $(OPENAI2_VENV)
	$(OPENAI2_VENV)/bin/python -m pip install --quiet -r tests/openai2/requirements.txt
	touch $(OPENAI2_STAMP)

# The Vercel AI SDK's chat client at three versions, and the Node 22 the newest needs,
# for tests/test_use_chat_client.py.
tests/ai_sdk/node_modules: tests/ai_sdk/package.json tests/ai_sdk/package-lock.json
	cd tests/ai_sdk && npm ci --no-audit --no-fund
	touch $@

# What the tests drive, set up side by side: mostly downloads and unpacking.
TEST_DEPS := $(STAMP) $(CHROMIUM) $(REDIS) $(NGINX) $(OPENAI2_STAMP) \
	tests/ai_sdk/node_modules chat-ui

# Most of the suite waits on servers, clients and the clock: two sessions side by side,
# each taking whole files (its servers start at most once in each), halve the time.
TEST_WORKERS ?= 2

test: ## Run the whole test suite (starts every server mode once per session; TEST_WORKERS=1 for one)
	$(MAKE) -j4 $(TEST_DEPS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The useChat example page (GET /use-chat): React and the AI SDK from npm, bundled by
# esbuild. The SDK declares Node >= 22 but only runs in the browser here: the build
# needs nothing but esbuild, so Node 20 does (--loglevel=error: npm's EBADENGINE
# warnings say otherwise). No install scripts: esbuild's binary comes as a package.
$(CHAT_UI)/node_modules: $(CHAT_UI)/package.json $(CHAT_UI)/package-lock.json
	cd $(CHAT_UI) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(CHAT_UI)/dist/app.js: $(CHAT_UI)/node_modules $(CHAT_UI)/build.mjs $(CHAT_UI)/index.html \
		$(wildcard $(CHAT_UI)/src/*)
	cd $(CHAT_UI) && node build.mjs

chat-ui: $(CHAT_UI)/dist/app.js ## Build the useChat example page into chat_ui/dist

# examples/ import the core as the copy beside them, `streaming`: type-checked apart,
# without the repo's config, whose IN_THIS_REPO is the other branch of that import.
check: $(STAMP) ## Lint, format check and type check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	MYPYPATH=shared $(BIN)/mypy --config-file= --python-version 3.11 --strict \
		--ignore-missing-imports --always-false IN_THIS_REPO examples/

screenshot: $(STAMP) $(CHROMIUM) ## Retake docs/screenshot.png: the demo page mid-stream
	$(BIN)/python docs/screenshot.py

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

$(EXPRESS)/node_modules: $(EXPRESS)/package.json
	cd $(EXPRESS) && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
		else npm install --no-audit --no-fund; fi
	touch $@

# The -redis targets log resumable answers to a redis-server the bench starts itself.
bench: $(STAMP) $(BENCH_STAMP) $(EXPRESS)/node_modules $(REDIS) ## Compare CPU, latency, capacity and memory with other servers, and resumable mode's costs (BENCH_ARGS="--quick", "--phases capacity --targets flask-gevent --runs 1")
	$(BIN)/python -m bench.run $(BENCH_ARGS)
