# rolegate: `make test` runs everything CI runs. The local stack (devstack/) builds what the
# tests, the demo and the benchmark need into ~/.cache/rolegate/ once (first build slow):
# `python -m devstack build|up|status` by hand, or the targets below.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv lint helm-lint test test-fast cluster node image backend-image llama demo crd gateway bench clean

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing rolegate[dev]"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench demo

# The pinned Kubernetes binaries, compiled once (~7 min) into ~/.cache/rolegate/.
cluster: venv
	$(PY) -m devstack build k8s

# helm lint --strict of the chart with each of its ci/*-values.yaml (the pinned helm).
helm-lint: cluster
	helm/lint.sh

# The real node's binaries (kubelet, kube-proxy, containerd, runc shim, CNI plugins, crictl)
# and its pause image, compiled once into ~/.cache/rolegate/.
node: venv
	$(PY) -m devstack build node

# The one OCI image of operator and gateway (Debian root filesystem by mmdebstrap, no base
# image pulled), built once per source change into ~/.cache/rolegate/; prints its path.
image: venv
	$(PY) -m devstack build image

# The vLLM-compatible test backend image (`vllm serve` answered by llama.cpp on a tiny model;
# the image's Debian base and the llama.cpp wheel are reused), built once per input change.
backend-image: venv
	$(PY) -m devstack.image.backend

# llama.cpp's OpenAI-compatible server, compiled once (3-5 min) into ~/.cache/rolegate/.
llama: venv
	$(PY) -m devstack build llama

# Everything on this machine, from nothing: control plane, operator, gateway, llama.cpp
# server, LightRAG's roles, chat and a live rebind. KEEP=1 leaves it running until Ctrl-C.
demo: venv
	$(PY) -m demo $(if $(KEEP),--keep)

# The whole suite: lint, then unit, integration (real kube-apiserver) and e2e tests.
test: venv cluster node image llama lint helm-lint
	$(PY) -m pytest

# Without the Kubernetes control plane or the image: unit tests and the gateway's own
# integration tests.
test-fast: venv
	$(PY) -m pytest -m "not cluster and not image"

# Regenerate the CRD from the pydantic model (tests/unit/test_crd.py fails until you do).
crd: venv
	$(VENV)/bin/rolegate-operator crd > crds/llmroles.rolegate.dev.yaml
	$(VENV)/bin/rolegate-operator crd --helm > helm/rolegate/templates/crds/llmroles.rolegate.dev.yaml

# Serve examples/lightrag/ standalone on 127.0.0.1:8080 (export OPENAI_CREDS_API_KEY first).
gateway: venv
	$(VENV)/bin/rolegate-gateway --manifests examples/lightrag/ --env-secrets

# Benchmark against a direct call, LiteLLM, TensorZero, Portkey and nginx (several minutes;
# the peers are installed under ~/.cache/rolegate/ the first time); writes
# bench/results/<date>.{json,md,png}.
bench: venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
