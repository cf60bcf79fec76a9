# crictld: `make run` brings the runtime up, `make test` runs every test. Both install what is
# missing first (hack/install-deps.sh), so they work on a fresh Debian bookworm machine as root.
SHELL := /bin/bash
PY := .venv/bin/python
SOCKET ?= /run/crictld/crictld.sock
STATE_DIR ?= /var/lib/crictld
PYTEST_ARGS ?=

.PHONY: deps run test unit integration lint protos check-protos pause registry clean

deps:
	bash hack/install-deps.sh

run: deps
	bash hack/default-cni.sh /etc/cni/net.d
	.venv/bin/crictld serve --socket $(SOCKET) --state-dir $(STATE_DIR) --containerd managed

test: deps lint
	$(PY) -m pytest -ra $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest -ra -m "not integration" $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest -ra -m integration $(PYTEST_ARGS)

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

protos: deps
	bash hack/gen-protos.sh

# The generated stubs must be exactly what the script produces from the pinned sources.
check-protos: deps
	d=$$(mktemp -d) && bash hack/gen-protos.sh $$d >/dev/null && diff -r crictl/gen $$d/crictl/gen && rm -rf $$d

registry: deps
	$(PY) -m tests.rig.registry --dir $${REGISTRY_DIR:-/tmp/crictld-registry} --port $${REGISTRY_PORT:-5000}

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build dist
