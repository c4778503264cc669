#!/usr/bin/env bash
# Validates the files in deploy/: the systemd unit with systemd-analyze
# (against a copy pointing at the built binary) and the Kubernetes manifests
# with kubernetes-validate (from PyPI, in a virtualenv under target/), and
# that every environment variable the manifests name is one `thaw serve`
# reads (server/tests/deploy_manifests.rs checks more: the ConfigMap's
# thaw.toml, the keys taken from the ConfigMap and Secret).
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

echo "environment variables of deploy/kubernetes/ against thaw serve --help"
help=$("$bin" serve --help)
names=$(sed -nE 's/^[[:space:]]*(#[[:space:]]*)?(- name:[[:space:]]*|key:[[:space:]]*)?([A-Z][A-Z0-9]*_[A-Z0-9_]+)[[:space:]]*(:.*)?$/\3/p' \
    deploy/kubernetes/*.yaml | sort -u)
[ -n "$names" ] || { echo "no environment variables found in deploy/kubernetes/" >&2; exit 1; }
bad=0
for name in $names; do
    if ! grep -qw -- "$name" <<<"$help"; then
        echo "deploy/kubernetes/ names $name, which thaw serve --help does not mention" >&2
        bad=1
    fi
done
[ "$bad" = 0 ] || exit 1
echo "ok: $(echo $names)"
