#!/usr/bin/env bash
# Runs every check: formatting, clippy, the binaries' build, unit tests, interop-capture tests
# and the end-to-end suite (real frps/frpc processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace "$@"
