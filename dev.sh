#!/usr/bin/env bash
# thaw's two commands, on a fresh Debian machine with Rust:
#   ./dev.sh run    build thaw and start it with the example functions deployed
#   ./dev.sh test   run the whole test suite, then fuzz every parser of
#                   outside bytes for a bounded time (THAW_FUZZ_SECONDS per
#                   target, default 30; fuzz/run.sh installs cargo-fuzz)
# Both install what is missing first (Debian packages, via apt-get; they say
# what they install). thaw needs root: sandboxes use namespaces, mounts and
# cgroups.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages thaw needs: libclang for the userfaultfd bindings, the
# system Python with pip for the python3 runtime (pip installs a function's
# requirements.txt, e.g. the numpy-pandas example's numpy and pandas, from the
# package index at deploy: docs/dependencies.md); for the tests also
# python3-venv (kubernetes-validate from PyPI) and systemd (systemd-analyze)
# to check deploy/; OpenJDK 17 (JDK: javac compiles Java functions at deploy)
# for the java17 runtime, gcc for the node20 runtime's OpenSSL reseeding
# addon; g++ builds libFuzzer for the fuzz stage; iproute2 and nftables for
# the veth pairs, NAT and filter of `network = "outbound"` sandboxes
# (docs/network.md).
PACKAGES=(libclang-dev clang g++ python3 python3-pip python3-venv systemd chromium chromium-driver openjdk-17-jdk-headless gcc iproute2 nftables)
# No python3-numpy/python3-pandas: functions get them from their
# requirements.txt, and the tests that run the host's python3 directly
# install the same pins once per machine with pip into
# /var/tmp/thaw-test-pydeps (test-support/numpy_pandas.rs).
# The node20 runtime runs the machine's /usr/bin/node, which must be Node.js 20
# or later (Debian 12's nodejs package is 18: it is not installed from here).
NODE_MAJOR_MIN=20

stage_start=$(date +%s)
stage() {
    local now
    now=$(date +%s)
    printf '\n== %s (previous stage took %ss)\n' "$1" "$((now - stage_start))"
    stage_start=$now
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "thaw needs root (namespaces, mounts, cgroups, ptrace): run this as root" >&2
        exit 1
    fi
}

setup() {
    stage "setup: checking Debian packages"
    local missing=()
    for p in "${PACKAGES[@]}" "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "all present: ${PACKAGES[*]} $*"
    fi
    check_node
}

# Says whether the node20 runtime can run here; it is optional (Python and
# Java work without it), so a missing or old node only warns.
check_node() {
    local v major
    if ! v=$(/usr/bin/node --version 2>/dev/null); then
        echo "note: /usr/bin/node is missing: the node20 runtime and its tests need Node.js >= $NODE_MAJOR_MIN (install it from nodejs.org or NodeSource)"
        return 0
    fi
    major=${v#v}
    major=${major%%.*}
    if [ "$major" -ge "$NODE_MAJOR_MIN" ] 2>/dev/null; then
        echo "node $v: ok for the node20 runtime"
    else
        echo "note: /usr/bin/node is $v: the node20 runtime needs >= $NODE_MAJOR_MIN (Debian's nodejs package is too old)"
    fi
    if [ ! -x /usr/bin/npm ]; then
        echo "note: /usr/bin/npm is missing: node20 functions with a package.json cannot install their dependencies"
    fi
}

case "${1:-}" in
run)
    need_root
    setup
    stage "build (release)"
    cargo build --release -p server
    stage "start"
    exec ./target/release/thaw serve --data-dir "${THAW_DATA_DIR:-.thaw}" \
        --deploy examples/hello --deploy examples/numpy-pandas "${@:2}"
    ;;
test)
    need_root
    setup
    stage "build"
    cargo build --workspace --all-targets
    stage "test"
    cargo test --workspace --all-targets
    stage "fuzz (every parser of outside bytes, ${THAW_FUZZ_SECONDS:-30}s per target; docs/fuzzing.md)"
    fuzz/run.sh "${THAW_FUZZ_SECONDS:-30}"
    stage "deploy files (systemd-analyze, kubernetes-validate)"
    deploy/check.sh target/debug/thaw
    stage "done"
    ;;
*)
    echo "usage: ./dev.sh run | ./dev.sh test" >&2
    exit 2
    ;;
esac
