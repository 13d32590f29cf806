#!/usr/bin/env bash
# Memory soak of frps (about a minute on 2 cores): emulated clients (tcpMux + TLS, one tcp
# proxy each) log in and leave for several rounds, then a burst of short tunneled connections.
# Asserts that fds come back to their baseline and RSS stays within its bounds; prints the RSS
# per round. Sized by SOAK_CLIENTS (2000), SOAK_ROUNDS (5), SOAK_BURST (20000).
#
#   scripts/soak.sh                 # the asserted soak (tests/tests/soak.rs)
#   scripts/soak.sh --figures ARGS  # figures only: target/release/soak ARGS (arguments in the
#                                   # doc comment of tests/src/bin/soak.rs; e.g. --clients 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--figures" ]]; then
  shift
  cargo build --release -p frps -p e2e --bin frps --bin soak
  exec target/release/soak "$@"
fi
cargo build --release -p frps --bin frps
cargo test --release -p e2e --test soak -- --ignored --nocapture "$@"
