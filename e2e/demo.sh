#!/usr/bin/env bash
# The README's first command: bring the test bed up if needed, run
# `lazarus serve` in front of its private containerd, run a pod through it and
# show it. Run as root on Debian 12.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=e2e/lib.sh
. "$repo/e2e/lib.sh"

require_root
require_debian
require_cargo
step "test bed (containerd ${LAZARUS_CONTAINERD:-1.6}, runc, CRIU, CNI, registry)"
bash e2e/testbed/testbed.sh up ||
    die "the test bed did not come up: the [testbed] error above says what failed; logs are in /var/log/lazarus-testbed (docs/testing.md)"
# shellcheck disable=SC1091
. /run/lazarus-testbed/env

step "building lazarus (release)"
cargo build --release --quiet -p lazarus-daemon -p lazarus-runc -p lazarus-e2e --bin lazarus --bin lazarus-runc --bin lazarus-demo
# The test bed's containerd runs the runtime handler "lazarus" with this
# wrapper as its runc (BinaryName); it restores the containers lazarus planned.
install -D -m 0755 target/release/lazarus-runc "$LAZARUS_RUNC_WRAPPER.new"
mv -f "$LAZARUS_RUNC_WRAPPER.new" "$LAZARUS_RUNC_WRAPPER"

step "what lazarus finds on this machine: lazarus version"
target/release/lazarus version --upstream "unix://$CONTAINERD_SOCKET" ||
    die "lazarus version found a problem: the hint lines above say what to do"

socket=/run/lazarus-demo/cri.sock
log=/var/log/lazarus-demo/lazarus.log
mkdir -p "$(dirname "$log")"
config=/run/lazarus-demo/config.toml
mkdir -p "$(dirname "$config")"
# Restore plans go where the test bed's lazarus-runc looks for them.
printf 'restore_dir = "%s"\n' "$LAZARUS_RESTORE_DIR" >"$config"
step "lazarus serve --config $config --listen $socket --upstream unix://$CONTAINERD_SOCKET"
target/release/lazarus serve --config "$config" --listen "$socket" --upstream "unix://$CONTAINERD_SOCKET" \
    --state-dir /var/lib/lazarus-demo --run-dir /run/lazarus-demo/run >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$log"; die "lazarus did not start; its log is above (docs/troubleshooting.md explains its errors)"; }

step "a counter pod through lazarus: checkpointed on stop, removed, re-created from its checkpoint"
target/release/lazarus-demo --socket "$socket"

step "the checkpoints lazarus took when the pods were stopped"
target/release/lazarus checkpoints list demo/counter/counter --state-dir /var/lib/lazarus-demo
echo
target/release/lazarus checkpoints inspect demo/counter/counter --state-dir /var/lib/lazarus-demo | sed -n '1,6p'

kill -TERM $pid; wait $pid || die "lazarus exited with an error; see $log"
trap - EXIT
step "lazarus stopped on SIGTERM; its log ($log):"
sed 's/^/    /' "$log"
