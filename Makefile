# Two entry points (README): `make dev` runs the whole system locally, `make test` runs every test.
SHELL := /bin/bash
export AWS_REGION ?= us-east-1
export AWS_ACCESS_KEY_ID ?= test
export AWS_SECRET_ACCESS_KEY ?= test
export CARGO_TERM_COLOR ?= never

.PHONY: dev test tools lint fmt unit build release sam-build fuzz bench bench-quick bench-peers load soak token diagram profile bench-first-request

## Run the whole system locally: emulator + resources of template.yaml + HTTP API on :3000 + SQS pollers.
dev: tools
	cargo run -p local --bin local -- dev $(ARGS)

## Everything CI checks: lint, unit tests, emulator tests, the API fuzz, a 60 s soak with faults.
test: tools lint
	cargo test --workspace --no-fail-fast
	$(MAKE) fuzz
	$(MAKE) soak SOAK_SEED=1206

## Fuzzes the HTTP API (schemathesis, driven by openapi.yaml) against a real `local dev`:
## 0 server errors, 0 responses that break the spec. FUZZ_EXAMPLES cases per operation.
fuzz: tools
	bash scripts/fuzz-api.sh

## Tools the tests and the local stack use, installed when missing: moto server, waitress (the
## emulator's HTTP server) and cfn-lint (PyPI),
## Debian's chromium and chromedriver (the dashboard's browser test; apt-get, as root or through sudo).
tools:
	@python3 -c 'import moto.server, flask, jsonpath_ng, waitress' 2>/dev/null || python3 -m pip install --quiet 'moto[server]' waitress
	@command -v cfn-lint >/dev/null 2>&1 || python3 -m pip install --quiet cfn-lint
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || bash scripts/apt-install.sh chromium chromium-driver

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cfn-lint template.yaml

fmt:
	cargo fmt --all

build:
	cargo build --workspace

## Release binaries as Lambda runs them (bootstrap per function), via cargo-lambda.
release:
	cargo lambda build --release --arm64

## SAM build (SAM CLI 1.156+ and cargo-lambda; CARGO_LAMBDA_COMPILER=cargo when zig is absent).
sam-build:
	sam build

## Benchmarks of the budgets in docs/ARCHITECTURE.md (release builds, emulator, `local dev --release`): writes BENCHMARKS.md + .png.
## The harness's stdout is the functions' EMF lines; its progress goes to stderr.
bench: tools
	cargo build --release --workspace --bins
	$${CARGO_TARGET_DIR:-target}/release/bench >/dev/null

## Under two minutes on a warm build (CI runs it after `make test`; the cold release build comes
## first there); fails only when a ratio budget is broken by 2x or could not be measured, never on time.
bench-quick: tools
	cargo build --release --workspace --bins
	$${CARGO_TARGET_DIR:-target}/release/bench --quick --out $${CARGO_TARGET_DIR:-target}/bench-quick >/dev/null

## Our own CPU cost, every AWS call answered from memory (no emulator): the agents worker's
## batches and agents-api's warm query, sampled by perf for PROFILE_SECONDS (default 10) into
## target/profile/flamegraph.svg (inferno); prints CPU per event and requests per second.
## Installs linux-perf (apt-get) and inferno (cargo install) when missing.
profile:
	@command -v perf >/dev/null || bash scripts/apt-install.sh linux-perf
	@command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
	RUSTFLAGS="-C force-frame-pointers=yes" cargo build --profile profiling -p bench --bin bench
	mkdir -p $${CARGO_TARGET_DIR:-target}/profile
	perf record -F 999 -g -o $${CARGO_TARGET_DIR:-target}/profile/perf.data $${CARGO_TARGET_DIR:-target}/profiling/bench --cpu --seconds $(or $(PROFILE_SECONDS),10) >/dev/null
	perf script -i $${CARGO_TARGET_DIR:-target}/profile/perf.data 2>/dev/null | inferno-collapse-perf > $${CARGO_TARGET_DIR:-target}/profile/stacks.folded
	inferno-flamegraph --title "bench --cpu: agents worker + agents-api, AWS answered from memory" < $${CARGO_TARGET_DIR:-target}/profile/stacks.folded > $${CARGO_TARGET_DIR:-target}/profile/flamegraph.svg
	@echo "wrote $${CARGO_TARGET_DIR:-target}/profile/flamegraph.svg"

## Ours against what most teams would write instead: agents-api's state query and the agents worker
## as Python Lambdas (bench/python: boto3 + Powertools, run by awslambdaric; pip installs them into
## a venv under target/ when missing) under the same runner and emulator, in one run: init, warm
## query p50/p99, batch of 10, peak RSS, CPU per event, beside lambda-perf's published cold starts.
## Writes its section of BENCHMARKS.md (which `make bench` keeps); PEERS_PYTHON= another interpreter.
bench-peers: tools
	cargo build --release --workspace --bins
	bash bench/python/install.sh >/dev/null
	$${CARGO_TARGET_DIR:-target}/release/bench --peers >/dev/null

## The first request after a cold start at Lambda's CPU share (cgroups: needs root): agents-api's
## GET /agents/{id}/state, plain and TLS, DynamoDB warm-up in init on and off, 128 to 1,769 MB;
## medians of ROUNDS (default 11) interleaved cold starts; prints the table, also written to
## target/first-request/FIRST_REQUEST.md. Not part of `make bench` or `make bench-quick`.
bench-first-request: tools
	cargo build --release --workspace --bins
	$${CARGO_TARGET_DIR:-target}/release/bench --first-request $(if $(ROUNDS),--rounds $(ROUNDS))

## Bursts through `local dev --release` on its own emulator (one process, then DynamoDB on a second):
## 120 commands from 16 and from 64 clients, 40 concurrent matches, command → applied; prints p50/p99,
## refusals and what was applied beside the targets of docs/ARCHITECTURE.md (target/load/LOAD.md);
## exits non-zero when a request is refused or an accepted command never applied.
load: tools
	cargo build --release --workspace --bins
	$${CARGO_TARGET_DIR:-target}/release/bench --load $(if $(CLIENTS),--clients $(CLIENTS))

## Randomized seeded traffic over every command route through `local dev` with faults injected (LOCAL_CHAOS), then a check of every guarantee; SOAK_SECONDS (default 60), SOAK_SEED, SOAK_CHAOS, RELEASE=1 for release binaries.
## Prints the report (also target/soak/SOAK.md, with the replay command); exits 1 on a violation, 2 when the run could not complete.
SOAK_CHAOS ?= kill:0.02,dup:0.05,reorder:0.2,delay:0.02,pause:0.02,putevents:0.02
soak: tools
	cargo build --workspace --bins $(if $(RELEASE),--release)
	$${CARGO_TARGET_DIR:-target}/$(if $(RELEASE),release,debug)/bench --soak --seconds $(or $(SOAK_SECONDS),60) --chaos '$(SOAK_CHAOS)' $(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(if $(RELEASE),--release)

## Prints a dev JWT that `make dev` accepts: `make token ROLE=trader ACCOUNTS="ACC-1 ACC-2"`.
## ROLE: agent, supervisor, trader, operator (scopes agents, supervisors, traders, operators),
## several at once with ROLE="supervisor operator"; SUB= subject, TTL= seconds (default 12 h).
## Only the token reaches stdout: curl -H "authorization: Bearer $$(make -s token ROLE=agent)".
token:
	@test -n "$(ROLE)" || { echo 'usage: make token ROLE=agent|supervisor|trader|operator [ACCOUNTS="ACC-1 ACC-2"] [SUB=...] [TTL=seconds]' >&2; exit 2; }
	@cargo run -q -p local --bin local -- token --role "$(ROLE)" $(if $(ACCOUNTS),--accounts "$(ACCOUNTS)") $(if $(SUB),--sub "$(SUB)") $(if $(TTL),--ttl "$(TTL)")

## Draws template.yaml's wiring (routes, functions, tables, bus, rules, queues, DLQs, alarms) as
## docs/wiring.dot and docs/wiring.svg (installs graphviz when `dot` is missing); commit both:
## the unit test diagram::tests::checked_in_diagram_is_current fails while they are stale.
diagram:
	@command -v dot >/dev/null || bash scripts/apt-install.sh graphviz
	cargo run -q -p local --bin local -- diagram > docs/wiring.dot.tmp || { rm -f docs/wiring.dot.tmp; exit 1; }
	mv docs/wiring.dot.tmp docs/wiring.dot
	dot -Tsvg docs/wiring.dot -o docs/wiring.svg

## Moves a DLQ's messages back to its source (`make redrive QUEUE=agents [LIMIT=10]`), through
## `POST /ops/dlq/$(QUEUE)/redrive` of a running `make dev` (with an operator's dev token);
## prints the report of what moved. Queue names: those `GET /ops/dlq` lists (agents,
## conversations, ..., event-delivery).
.PHONY: redrive
redrive:
	@test -n "$(QUEUE)" || { echo 'usage: make redrive QUEUE=<name> [LIMIT=n]'; exit 2; }
	@token="$$(cargo run -q -p local --bin local -- token --role operator --ttl 300)" && \
	  curl -sS --fail-with-body -X POST -H "authorization: Bearer $$token" \
	  "http://127.0.0.1:$${PORT:-3000}/ops/dlq/$(QUEUE)/redrive$(if $(LIMIT),?limit=$(LIMIT))"
	@echo
