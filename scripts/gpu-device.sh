#!/usr/bin/env bash
# The GPU checks, for a session that has a GPU machine (see gpu/README.md). Two halves:
#   bash scripts/gpu-device.sh prepare   here: builds the #[ignore]d GPU tests and the bench
#                                        into .gpu/ (ignored through .git/info/exclude)
#   bash scripts/gpu-device.sh run       on the GPU machine, with .gpu carried: finds NVRTC
#                                        there, runs every GPU test, then `cadre-bench gpu`
# The GPU machine has the driver and the CUDA 13.0 toolkit but no Rust toolchain and no
# network, so the binary is built here and carried.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    mkdir -p .gpu
    bin=$(cargo test --release -p cadre-gpu --test device --no-run --message-format=json \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -1)
    cp "$bin" .gpu/gpu-device-tests
    cargo build --release -p cadre-bench
    cp target/release/cadre-bench .gpu/cadre-bench
    strip .gpu/cadre-bench .gpu/gpu-device-tests 2>/dev/null || true
    ls -la .gpu
    ;;
run)
    lib=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so.13' 2>/dev/null | head -1 || true)
    if [ -n "$lib" ]; then
        export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "NVRTC: $lib"
    else
        echo "NVRTC: libnvrtc.so.13 not found under /usr/local, /opt or /usr/lib"
    fi
    nvidia-smi -L || true
    status=0
    .gpu/gpu-device-tests --ignored --test-threads=1 --nocapture || status=$?
    .gpu/cadre-bench gpu || status=$?
    exit "$status"
    ;;
*)
    echo "usage: bash scripts/gpu-device.sh prepare|run" >&2
    exit 2
    ;;
esac
