#!/usr/bin/env bash
# Installs what the tests need and runs all of them (the README's second command).
#
# Installs: promtool (Debian's `prometheus` package), which the metrics test runs as
# `promtool check metrics` on the node's /metrics output. Without it that check prints SKIP;
# CADRE_REQUIRE_PROMTOOL=1 (set by CI) turns the skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing promtool (Debian package prometheus)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null; } \
            || echo "promtool could not be installed; the metrics test will SKIP its check"
    else
        echo "promtool missing and apt-get unavailable (or not root); the metrics test will SKIP its check"
    fi
fi
# The extension tests start the example nodes as programs: build them as binaries first
# (`--all-targets` builds examples only as test harnesses).
cargo build --examples
cargo test --workspace --all-targets
cargo test --workspace --doc
