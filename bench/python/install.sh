#!/usr/bin/env bash
# Makes the venv of the Python peer baseline (bench/python/requirements.txt) when it is missing
# or incomplete, then prints the path of its interpreter (the only line on stdout).
#
#   bash bench/python/install.sh [VENV_DIR]
#
# VENV_DIR defaults to ${CARGO_TARGET_DIR:-target}/bench-python/venv-<major.minor> (relative
# paths are from the repository root). The interpreter that makes the venv is $PEERS_PYTHON, else
# python3. Exits non-zero, saying why on stderr, when the venv cannot be made or pip fails: the
# peer benchmark and its test never run without the baseline's real dependencies.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PEERS_PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "install.sh: no $python (set PEERS_PYTHON)" >&2; exit 1; }
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
venv="${1:-$target/bench-python/venv-$version}"
requirements="$here/requirements.txt"
stamp="$venv/.requirements"
# One installer at a time per venv (a test and `make bench-peers` may start together).
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp" \
  && "$venv/bin/python" -c 'import awslambdaric, aws_lambda_powertools, boto3' 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
echo "install.sh: installing $requirements into $venv ($python, Python $version)" >&2
"$python" -m venv --clear "$venv" >&2 || { echo "install.sh: python -m venv failed" >&2; exit 1; }
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2 \
  || { echo "install.sh: pip install -r $requirements failed" >&2; exit 1; }
"$venv/bin/python" -c 'import awslambdaric, aws_lambda_powertools, boto3' >&2
cp "$requirements" "$stamp"
echo "$venv/bin/python"
