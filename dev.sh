#!/usr/bin/env bash
# thaw's two commands, on a fresh Debian machine with Rust:
#   ./dev.sh run    build thaw and start it with the example functions deployed
#   ./dev.sh test   run the whole test suite, then fuzz every parser of
#                   outside bytes for a bounded time (THAW_FUZZ_SECONDS per
#                   target, default 30; fuzz/run.sh installs cargo-fuzz)
#   ./dev.sh s3     start (or find running) a local Garage, the S3-compatible
#                   store of docs/cluster.md, and print the exports that point
#                   thaw at it: eval "$(./dev.sh s3)"
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
# (docs/network.md); postgresql (and util-linux's runuser) for
# server/tests/postgres.rs, which starts its own server on a test host in a
# network namespace (issue 19's database client).
PACKAGES=(libclang-dev clang g++ python3 python3-pip python3-venv systemd chromium chromium-driver openjdk-17-jdk-headless gcc iproute2 nftables postgresql util-linux)
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

# Garage, the S3-compatible object store of docs/cluster.md, built once with
# cargo (about 15 minutes on 2 cores) and kept in ~/.cargo/bin.
GARAGE_VERSION=2.5.0
garage_bin() {
    if [ -n "${THAW_GARAGE:-}" ]; then
        echo "$THAW_GARAGE"
    elif command -v garage >/dev/null 2>&1; then
        command -v garage
    else
        echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage"
    fi
}

install_garage() {
    local bin
    bin=$(garage_bin)
    if [ -x "$bin" ]; then
        return 0
    fi
    echo "installing garage $GARAGE_VERSION with cargo (once; ~15 minutes on 2 cores)" >&2
    nice -n 19 cargo install garage --locked --version "$GARAGE_VERSION" >&2
}

# Starts a single-node Garage on 127.0.0.1 with its config and data in
# $THAW_DATA_DIR/garage (default .thaw/garage), a bucket and a key, unless
# it runs already; prints the export lines. Ports: THAW_GARAGE_PORT (S3,
# default 3900) and the next one (RPC).
start_s3() {
    install_garage
    local bin dir s3_port rpc_port cfg
    bin=$(garage_bin)
    dir="$(realpath -m "${THAW_DATA_DIR:-.thaw}")/garage"
    s3_port=${THAW_GARAGE_PORT:-3900}
    rpc_port=$((s3_port + 1))
    cfg="$dir/garage.toml"
    mkdir -p "$dir/meta" "$dir/data"
    chmod 700 "$dir"
    if [ ! -f "$cfg" ]; then
        (
            umask 077
            cat >"$cfg" <<EOF
# Written by ./dev.sh s3: a single-node Garage for development.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
            # The S3 key thaw uses: Garage imports a chosen key id (GK and
            # 24 hex digits) and secret (64 hex digits).
            printf 'GK%s\n%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
                "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$dir/credentials"
            # The store key thaw encrypts every object with.
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/store.key"
        )
    fi
    local g=("$bin" -c "$cfg")
    if [ -f "$dir/garage.pid" ] && kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
        echo "garage already running (pid $(cat "$dir/garage.pid"))" >&2
    else
        nohup "${g[@]}" server >"$dir/garage.log" 2>&1 &
        echo $! >"$dir/garage.pid"
        echo "garage started (pid $!), log in $dir/garage.log" >&2
    fi
    local i
    for i in $(seq 1 150); do
        if "${g[@]}" status >/dev/null 2>&1; then break; fi
        if [ "$i" = 150 ]; then
            echo "garage did not answer; see $dir/garage.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    if "${g[@]}" status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
        local node
        node=$("${g[@]}" node id -q | cut -d@ -f1)
        "${g[@]}" layout assign -z dc1 -c 1G "$node" >&2
        "${g[@]}" layout apply --version 1 >&2
    fi
    local key_id secret
    key_id=$(sed -n 1p "$dir/credentials")
    secret=$(sed -n 2p "$dir/credentials")
    if ! "${g[@]}" bucket info thaw >/dev/null 2>&1; then
        "${g[@]}" bucket create thaw >&2
    fi
    if ! "${g[@]}" key info "$key_id" >/dev/null 2>&1; then
        "${g[@]}" key import --yes -n thaw "$key_id" "$secret" >&2
    fi
    "${g[@]}" bucket allow --read --write --owner thaw --key "$key_id" >/dev/null
    cat <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
export AWS_ALLOW_HTTP=true
export THAW_STORE_URL=s3://thaw/dev
export THAW_STORE_KEY_FILE=$dir/store.key
export THAW_STORE_WRITER=true
EOF
}

case "${1:-}" in
s3)
    start_s3
    ;;
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
    stage "garage (the S3 store of the shared-store tests; built once, kept in ~/.cargo/bin)"
    install_garage
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
    echo "usage: ./dev.sh run | ./dev.sh test | ./dev.sh s3" >&2
    exit 2
    ;;
esac
