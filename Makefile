# k8s-ai-operator — one entry point for building and testing.
#   make demo          the seed README's quick start on a local one-node cluster (KEEP=1 leaves it running)
#   make check         the fast inner loop: fmt, clippy, unit and in-process tests (no cluster, no apt)
#   make test          everything CI runs: deps, fmt, clippy, unit and end-to-end tests
#   make cluster-up    start the one-node test cluster where pods run (e2e/node.sh), idempotent
#   make cluster-down  stop it, leaving nothing behind
#   make crds          regenerate manifests/crds from the Rust types
#   make bench         benchmark the sidecar side by side with LiteLLM; writes docs/benchmarks.md
#   make fuzz          fuzz each target for FUZZ_SECONDS (default 300); `make test` runs a short smoke pass
#   make bench-ledger  the ledger at scale (5,000 ModelUsages); writes its section of docs/benchmarks.md
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Builds are slow on small machines: share one target dir across clones of this repo.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/k8s-ai-operator/target
export CARGO_TERM_COLOR ?= never
# Incremental state is large and of no use to a fresh clone's one build: keep the shared cache small.
export CARGO_INCREMENTAL ?= 0
KUBECONFIG_E2E := $(CURDIR)/e2e/.node/kubeconfig
KUBECTL := $(CURDIR)/e2e/.bin/kubectl

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install what the build and tests need (idempotent)
	scripts/install-deps.sh

.PHONY: fmt-check
fmt-check:
	cargo fmt --all -- --check

.PHONY: clippy
clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

.PHONY: deny
deny: ## cargo deny: licences, banned and duplicate crates, sources (deny.toml)
	cargo deny check licenses bans sources

.PHONY: deny-advisories
deny-advisories: ## cargo deny: RustSec advisories (needs github.com for the database)
	cargo deny check advisories

.PHONY: build
build: ## Build every binary (debug)
	cargo build --workspace --locked

.PHONY: crds
crds: ## Regenerate manifests/crds/crds.yaml
	cargo run -q --locked -p k8s-ai-operator -- crdgen > manifests/crds/crds.yaml

.PHONY: cluster-up
cluster-up: ## Start the one-node test cluster (kubelet, containerd, control plane); prints the KUBECONFIG
	e2e/node.sh up

.PHONY: cluster-down
cluster-down: ## Stop the one-node test cluster: no process, mount, cgroup or namespace is left
	e2e/node.sh down

.PHONY: controlplane-up
controlplane-up: ## Start the lighter control plane alone (API server + etcd, no node) the other suites use
	e2e/cluster.sh up

.PHONY: controlplane-down
controlplane-down: ## Stop the lighter control plane
	e2e/cluster.sh down

.PHONY: samples
samples: cluster-up ## Install the CRDs and apply the seed README's objects to the test cluster
	$(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) apply --server-side -k manifests/crds
	$(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) wait --for=condition=Established crd -l app.kubernetes.io/part-of=k8s-ai-operator
	$(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) create namespace ai-workloads --dry-run=client -o yaml | $(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) apply -f -
	$(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) apply -f manifests/samples/
	$(KUBECTL) --kubeconfig $(KUBECONFIG_E2E) get modelendpoints -n ai-workloads

.PHONY: demo
demo: deps ## The quick start end to end on a local one-node cluster where pods run; KEEP=1 leaves it running
	KEEP=$(KEEP) scripts/demo.sh

.PHONY: demo-down
demo-down: ## Stop what `make demo KEEP=1` left running
	scripts/demo.sh down

.PHONY: emulator
emulator: ## Run the Bedrock/STS emulator on 127.0.0.1:4566 (see e2e/README.md)
	cargo run --locked -q -p e2e --bin bedrock-emulator -- --listen 127.0.0.1:4566

.PHONY: fuzz
fuzz: ## Coverage-guided fuzzing: each target in fuzz/ for FUZZ_SECONDS (default 300); grows fuzz/corpus
	scripts/fuzz.sh run $(FUZZ_SECONDS)

.PHONY: bench-emulator
bench-emulator: ## Benchmark the emulator: Converse with SigV4 verification, one core
	e2e/bench/emulator.sh

.PHONY: bench-sidecar
bench-sidecar: ## Benchmark the sidecar against the emulator called directly and through nginx, and its RSS in a cluster
	e2e/bench/sidecar.sh

.PHONY: sidecar-symbol-order
sidecar-symbol-order: ## Profile the sidecar (valgrind) and rewrite sidecar/symbol-order.txt, its hot-code layout
	e2e/bench/sidecar-symbol-order.sh

.PHONY: bench-sidecar-tuning
bench-sidecar-tuning: ## What the sidecar's symbol order saves: a build without it, side by side
	e2e/bench/tuning.sh

.PHONY: bench-operator
bench-operator: ## Benchmark the webhook (AdmissionReviews/s, p99) and reconciling 1,000 ModelEndpoints
	e2e/bench/operator.sh

.PHONY: bench-ledger
bench-ledger: ## 5,000 ModelUsages across 100 endpoints: status lag, operator RSS, API writes/s
	e2e/bench/ledger.sh

.PHONY: bench
bench: ## Sidecar vs LiteLLM (and emulator floor) in one run; writes docs/benchmarks.md
	e2e/bench/compare.sh

.PHONY: check
check: ## The fast inner loop: fmt, clippy, unit and in-process tests; no cluster, no apt (scripts/check.sh)
	scripts/check.sh

.PHONY: test
test: deps ## Run everything: fmt, clippy, unit tests, end-to-end tests on the real control plane
	$(MAKE) fmt-check
	$(MAKE) clippy
	$(MAKE) deny
	e2e/cluster.sh up
	scripts/run-tests.sh; status=$$?; e2e/cluster.sh down; e2e/node.sh down; exit $$status
