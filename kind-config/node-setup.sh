#!/usr/bin/env bash
# Runs inside a kind node (kind-config/run.sh: docker exec NODE bash
# /opt/lazarus/kind-config/node-setup.sh), from the read-only stage mounted at
# /opt/lazarus (kind-config/cluster.yaml):
#   1. CRIU >= 4.1 from the stage, with the shared libraries the node lacks;
#   2. lazarus with systemd/install.sh, as on any node (socket, service, config);
#   3. kubelet pointed at lazarus (kubeadm-flags.env / config.yaml), restarted.
set -euo pipefail

SRC=${LAZARUS_STAGE_IN_NODE:-/opt/lazarus}
ENDPOINT=unix:///run/lazarus/cri.sock
CRIU_DIR=/usr/local/lib/lazarus-criu

log() { printf '[%s] %s\n' "$(hostname)" "$*"; }
die() { printf '[%s] error: %s\n' "$(hostname)" "$*" >&2; exit 1; }

[ -d "$SRC/bin" ] || die "$SRC/bin is missing: is the stage mounted (kind-config/cluster.yaml extraMounts)?"

# Binaries built on the host must run here (glibc of the node image).
"$SRC/bin/lazarus" --version >/dev/null 2>&1 ||
  die "$SRC/bin/lazarus does not run in this node: $("$SRC/bin/lazarus" --version 2>&1 | head -1)
(build lazarus on a machine whose glibc is not newer than the node image's; see docs/kind.md)"

# --- 1. CRIU ---------------------------------------------------------------------
mkdir -p "$CRIU_DIR"
install -m 0755 "$SRC/criu/criu" "$CRIU_DIR/criu"
known=$(ldconfig -p | awk 'NR > 1 { print $1 }')
for lib in "$SRC"/criu/lib/*; do
  [ -e "$lib" ] || continue
  name=$(basename "$lib")
  # Only sonames the node does not have: programs CRIU runs (iptables-restore)
  # inherit LD_LIBRARY_PATH and must keep finding the node's own libraries.
  if ! grep -qxF "$name" <<<"$known"; then
    cp -L "$lib" "$CRIU_DIR/$name"
    log "criu: added $name (not in this node)"
  fi
done
cat >/usr/local/sbin/criu.tmp <<EOF
#!/bin/sh
# CRIU built on the host (kind-config/run.sh); $CRIU_DIR also holds the
# shared libraries this node image lacks.
LD_LIBRARY_PATH=$CRIU_DIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
exec $CRIU_DIR/criu "\$@"
EOF
chmod 0755 /usr/local/sbin/criu.tmp
mv -f /usr/local/sbin/criu.tmp /usr/local/sbin/criu
version=$(criu --version 2>&1 | sed -n 's/^Version: *//p' | head -1)
[ -n "$version" ] || die "criu does not run in this node: $(criu --version 2>&1 | head -3)"
log "criu: $version"
if criu check >/tmp/criu-check.log 2>&1; then
  log "criu check: $(tail -1 /tmp/criu-check.log)"
else
  log "criu check reported problems (checkpoints may fail):"
  sed 's/^/    /' /tmp/criu-check.log | tail -15
fi

# --- 2. lazarus ------------------------------------------------------------------
# --no-kubelet: kind's /etc/default/kubelet sets KUBELET_EXTRA_ARGS, which would
# override the drop-in; kubelet is switched below instead.
bash "$SRC/systemd/install.sh" --bin-dir "$SRC/bin" --no-kubelet
crictl --runtime-endpoint "$ENDPOINT" version >/dev/null ||
  die "lazarus does not answer on $ENDPOINT (journalctl -u lazarus)"
log "lazarus answers on $ENDPOINT"

# --- 3. kubelet → lazarus ----------------------------------------------------------
switched=0
flags=/var/lib/kubelet/kubeadm-flags.env
config=/var/lib/kubelet/config.yaml
if grep -q -- '--container-runtime-endpoint=' "$flags" 2>/dev/null; then
  sed -i "s#--container-runtime-endpoint=[^ \"]*#--container-runtime-endpoint=$ENDPOINT#" "$flags"
  switched=1
fi
if grep -q '^containerRuntimeEndpoint:' "$config" 2>/dev/null; then
  sed -i "s#^containerRuntimeEndpoint:.*#containerRuntimeEndpoint: $ENDPOINT#" "$config"
  switched=1
fi
if [ "$switched" -eq 0 ]; then
  printf 'containerRuntimeEndpoint: %s\n' "$ENDPOINT" >>"$config"
fi
systemctl restart kubelet
for _ in $(seq 1 60); do
  if systemctl is-active --quiet kubelet && crictl --runtime-endpoint "$ENDPOINT" ps >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
systemctl is-active --quiet kubelet || die "kubelet is not running after the switch (journalctl -u kubelet)"
cmdline=$(tr '\0' ' ' <"/proc/$(pidof kubelet)/cmdline")
log "kubelet restarted: ${cmdline:0:200}…"
log "kubelet's runtime endpoint: $(grep -ho -- "$ENDPOINT" "$flags" "$config" 2>/dev/null | head -1)"
