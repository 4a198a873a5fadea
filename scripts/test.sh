#!/usr/bin/env bash
# Installs what the tests need and runs all of them (the README's second command).
#
# Installs:
# - promtool (Debian's `prometheus` package), which the metrics test runs as
#   `promtool check metrics` on the node's /metrics output. Without it that check prints SKIP;
#   CADRE_REQUIRE_PROMTOOL=1 (set by CI) turns the skip into a failure.
# - NVRTC, the pinned `nvidia-cuda-nvrtc` 13.0 wheel from PyPI (matching driver 580 / CUDA 13.0),
#   unpacked under target/ and put on LD_LIBRARY_PATH, for the gpu crate's kernel-compile
#   tests. Without it they print SKIP; CADRE_REQUIRE_NVRTC=1 (set by CI) makes that a failure.
# The gpu crate's fake-libcuda tests build a library with `cc`; CADRE_REQUIRE_CC=1 (set by CI)
# makes a missing compiler a failure instead of a SKIP.
# The cgroup tests need a writable cgroup tree (root, v1 or v2 mounted); where there is none they
# print SKIP. CADRE_REQUIRE_CGROUPS=1 (set by CI, whose clean runs have shown them running)
# makes that a failure, and then so does a cgroup the tests leave behind. Nothing to install:
# the kernel has them or not.
# The cluster's partition tests make a network namespace and a veth pair (iproute2, root), cut
# it off with blackhole routes, and drop some packets with `iptables` (Debian's `iptables`
# package, installed here: one way only, or 10% at random each way); where they cannot, they
# print SKIP. CADRE_REQUIRE_NETNS=1 makes that a failure (not set by CI until a CI run has shown
# the namespaces working there).
# The full-disk tests mount a small tmpfs (root, CAP_SYS_ADMIN); where they cannot they print
# SKIP. CADRE_REQUIRE_TMPFS=1 (set by CI, root as for cgroups) makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# install_deb COMMAND PACKAGE WHAT-SKIPS: installs Debian's PACKAGE where COMMAND is missing
# (root with apt-get), else says which tests will print SKIP.
install_deb() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing $1 (Debian package $2)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "$2" >/dev/null; } \
            || echo "$1 could not be installed; $3 will SKIP"
    else
        echo "$1 missing and apt-get unavailable (or not root); $3 will SKIP"
    fi
}
install_deb promtool prometheus "the metrics test's check"
install_deb iptables iptables "the packet-loss tests"
NVRTC_VERSION=13.0.88
NVRTC_DIR="$PWD/target/nvrtc-$NVRTC_VERSION"
NVRTC_LIB="$NVRTC_DIR/nvidia/cu13/lib"
if [ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing pip (Debian package python3-pip)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends python3-pip >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends python3-pip >/dev/null; } \
            || echo "pip could not be installed"
    fi
    echo "installing NVRTC $NVRTC_VERSION (PyPI wheel nvidia-cuda-nvrtc) under target/"
    python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "$NVRTC_DIR" \
        "nvidia-cuda-nvrtc==$NVRTC_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" \
        || true
    # The wheel also carries an alternative build of each library, which nothing here loads.
    rm -f "$NVRTC_LIB"/*.alt.so*
    [ -e "$NVRTC_LIB/libnvrtc.so.13" ] || echo "NVRTC could not be installed; the kernel-compile tests will SKIP"
fi
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The extension tests start the example nodes as programs: build them as binaries first
# (`--all-targets` builds examples only as test harnesses).
cargo build --examples
# The cgroups the tests make (a node's parent, its jobs' groups, a test's own) must all be gone
# when they end: left behind, they pile up on the machine run after run (a killed node's parent
# once did, a few dozen per run). Those that exist before the run are not the tests'.
cadre_cgroups() { find /sys/fs/cgroup -maxdepth 5 -type d -name 'cadre-*' 2>/dev/null | sort; }
cgroups_before="$(cadre_cgroups)"
# The wire's seeded fuzz of frames and handshakes: 50,000 iterations per case here (about two
# seconds), 4,000 when a test is run alone.
export CADRE_WIRE_FUZZ_ITERS="${CADRE_WIRE_FUZZ_ITERS:-50000}"
cargo test --workspace --all-targets
cargo test --workspace --doc
cgroups_left="$(comm -13 <(printf '%s\n' "$cgroups_before") <(cadre_cgroups) | sed '/^$/d')"
if [ -n "$cgroups_left" ]; then
    echo "cgroups the tests left behind:"
    printf '%s\n' "$cgroups_left"
    if [ "${CADRE_REQUIRE_CGROUPS:-}" = 1 ]; then
        exit 1
    fi
fi
