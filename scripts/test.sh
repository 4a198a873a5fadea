#!/usr/bin/env bash
# Installs what the tests need and runs all of them (the README's second command).
# Today the tests need nothing beyond the Rust toolchain; later issues add their installs here
# (and an environment variable that CI sets turns a test's SKIP into a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
