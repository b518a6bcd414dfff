#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against a real `local dev` (every function as its real
# binary, its own moto server), driven by the spec the API itself serves at GET /openapi.json,
# with schemathesis's checks that the spec and the API agree both ways: no 5xx; responses,
# status codes, content types and headers as documented; every schema-valid request accepted
# (positive_data_acceptance) and every schema-invalid one refused (negative_data_rejection);
# a missing required header refused; created resources available at once
# (ensure_resource_availability, use_after_free); no route that ignores authentication
# (ignored_auth). scripts/schemathesis.toml turns off the few checks (and, for one operation,
# the two) whose expectation API Gateway itself answers otherwise, each with its reason;
# scripts/fuzz_hooks.py gives each positive case its own Idempotency-Key and signs
# POST /agents/match with SigV4. Every request carries a dev JWT with
# every role (scopes agents, supervisors, traders, operators), minted by `local token` with the
# key pair `local dev` verifies with.
#
#   scripts/fuzz-api.sh                  # FUZZ_EXAMPLES (default 15) cases per operation
#   FUZZ_EXAMPLES=100 scripts/fuzz-api.sh
#
# Starts `local dev` on a free port with a free emulator port (local dev starts moto there and
# stops it on exit) and stops everything it started, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${FUZZ_EXAMPLES:-15}"
workers="${FUZZ_WORKERS:-2}"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" \
    AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet 'schemathesis>=4.32,<5'

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
emulator_port="$(free_port)"
base="http://127.0.0.1:$port"
work="$(mktemp -d)"
log="$work/local-dev.log"

# Build first (outside the clock below), so `local dev --no-build` starts at once.
cargo build -q -p local --bin local
bins=$(python3 - <<'PY'
import re
print(" ".join(sorted(set(re.findall(r"^\s+Binary:\s*(\S+)", open("template.yaml").read(), re.M)))))
PY
)
# shellcheck disable=SC2046
cargo build -q $(printf -- '--bin %s ' $bins)
token="$(cargo run -q -p local --bin local -- token --role 'agent supervisor trader operator' \
    --accounts acc-fuzz --ttl 7200)"

started=$SECONDS
# Own process group, so stopping it stops the runner, its functions and its emulator.
AWS_ENDPOINT_URL="http://127.0.0.1:$emulator_port" LOCAL_RETRY_DELAY_SECONDS=0 LOCAL_WORKSPACE_ROOT="$PWD" \
    setsid env -u PORT cargo run -q -p local --bin local -- dev --no-build --port "$port" --stack fuzz \
    >"$log" 2>&1 &
runner=$!
stop() {
    if kill -0 "$runner" 2>/dev/null; then
        kill -TERM -- "-$runner" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$runner" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$runner" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT INT TERM

# The status of GET $1 (000 when nothing answers); python, so curl is not needed.
status_of() {
    python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}
for _ in $(seq 600); do
    if [ "$(status_of "$base/health")" = 200 ]; then break; fi
    if ! kill -0 "$runner" 2>/dev/null; then echo "local dev exited:"; tail -40 "$log"; exit 1; fi
    sleep 0.2
done
if [ "$(status_of "$base/health")" != 200 ]; then
    echo "local dev did not become healthy:"; tail -40 "$log"; exit 1
fi
echo "local dev healthy on $base in $((SECONDS - started)) s; fuzzing ($examples examples per operation)"

status=0
# From the scratch directory: schemathesis keeps a cache (.schemathesis/) where it runs.
# Which checks run, and the exceptions: scripts/schemathesis.toml.
(cd "$work" && PYTHONPATH="$OLDPWD/scripts" SCHEMATHESIS_HOOKS=fuzz_hooks \
    schemathesis --no-color --config-file "$OLDPWD/scripts/schemathesis.toml" \
    run "$base/openapi.json" \
    --url "$base" \
    --header "Authorization: Bearer $token" \
    --max-examples "$examples" \
    --workers "$workers" \
    --request-timeout 15 \
    --generation-deterministic \
    --suppress-health-check all) \
    || status=$?
echo "fuzz: schemathesis exited $status after $((SECONDS - started)) s; responses by status:"
sed -n 's/^\[gateway\] .*" \([0-9]\{3\}\) .*/\1/p' "$log" | sort | uniq -c | tr '\n' ' '
echo
# A function that panicked answered through the gateway's 502 (caught above) or, for a
# worker fed by what the fuzzer sent, only in its log: either way a bug.
if grep -n "panicked at" "$log"; then
    echo "fuzz: a function panicked (above)"
    status=1
fi
if [ "$status" != 0 ]; then
    echo "--- last lines of local dev ---"
    grep -v '^REPORT\|^\[gateway\]' "$log" | tail -40 || true
fi
exit "$status"
