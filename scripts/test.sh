#!/usr/bin/env bash
# Runs every check: formatting, clippy, the binaries' build, unit tests, interop-capture tests
# and the end-to-end suite (real frps/frpc processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace "$@"
# The end-to-end suite once more under each data-plane engine (the run above used "auto").
for engine in epoll io_uring; do
  echo "== end-to-end suite with [dataplane] engine = \"$engine\""
  E2E_ENGINE=$engine cargo test -p e2e "$@"
done
