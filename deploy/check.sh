#!/usr/bin/env bash
# Validates the files in deploy/: the systemd unit with systemd-analyze
# (against a copy pointing at the built binary) and the Kubernetes manifests
# with kubernetes-validate (from PyPI, in a virtualenv under target/).
# Usage: deploy/check.sh [path/to/thaw]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/thaw}
bin=$(realpath "$bin")
[ -x "$bin" ] || { echo "deploy/check.sh: build thaw first ($bin missing)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "systemd-analyze verify deploy/systemd/thaw.service (ExecStart -> $bin)"
sed "s|/usr/local/bin/thaw|$bin|" deploy/systemd/thaw.service > "$work/thaw.service"
# verify prints problems and exits non-zero on errors; warnings about the
# unit's environment (no systemd running in CI) are filtered out.
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$work/thaw.service" 2>&1 || true)
echo "$out" | grep -v -E "^$|Failed to (connect|setup)|System has not been booted|Transport endpoint|Cannot (connect|create)|Operation not permitted|Skipping" | tee "$work/verify.out" || true
if [ -s "$work/verify.out" ]; then
    echo "systemd-analyze found problems" >&2
    exit 1
fi
echo "ok"

venv=target/venv-deploy-check
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate into $venv (PyPI)"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
fi
"$venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml
