#!/usr/bin/env bash
# lazarus in a kind cluster: builds lazarus, creates the cluster
# (kind-config/cluster.yaml), installs lazarus into its node, and runs the
# restore scenario: a counter (kind-config/counter.yaml) is checkpointed, its
# pod deleted, and the re-created pod must go on counting where it was.
#
# Usage: kind-config/run.sh [--keep]
#   --keep   leave the cluster running afterwards (kind delete cluster --name lazarus)
#
# Where Docker (a working engine), kind or kubectl is missing, it prints
# "skipped: …" and exits 0. Environment: DOCKER, KIND, KUBECTL (the commands),
# LAZARUS_CRIU (a CRIU >= 4.1 binary; default: criu on PATH),
# LAZARUS_KIND_STAGE (default /tmp/lazarus-kind/stage, as in cluster.yaml),
# LAZARUS_KIND_IMAGE (--image for kind create cluster). See docs/kind.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DOCKER=${DOCKER:-docker}
KIND=${KIND:-kind}
KUBECTL=${KUBECTL:-kubectl}
CLUSTER=lazarus
STAGE=${LAZARUS_KIND_STAGE:-/tmp/lazarus-kind/stage}
NAMESPACE=lazarus-kind
WORKLOAD_IMAGE=busybox:1.36
KEEP=0

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'run.sh: unknown argument %s\n\n' "$1" >&2; usage 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# --- What is needed ----------------------------------------------------------
missing=()
if ! command -v "$DOCKER" >/dev/null 2>&1; then
  missing+=("docker (no '$DOCKER' command)")
elif ! info=$("$DOCKER" info 2>&1); then
  reason=$(grep -m1 -iE 'cannot|error|denied' <<<"$info" || true)
  missing+=("a Docker engine ('$DOCKER info' fails${reason:+: $reason})")
fi
command -v "$KIND" >/dev/null 2>&1 || missing+=("kind (no '$KIND' command)")
command -v "$KUBECTL" >/dev/null 2>&1 || missing+=("kubectl (no '$KUBECTL' command)")
if [ ${#missing[@]} -gt 0 ]; then
  list=""
  for item in "${missing[@]}"; do list="${list:+$list; }$item"; done
  printf 'skipped: kind scenario not run, missing: %s\n' "$list"
  exit 0
fi

CRIU=${LAZARUS_CRIU:-$(command -v criu || true)}
{ [ -n "$CRIU" ] && [ -x "$CRIU" ]; } ||
  die "no CRIU: install CRIU >= 4.1 or set LAZARUS_CRIU (e.g. /usr/local/sbin/criu from e2e/testbed/testbed.sh up)"
criu_version=$("$CRIU" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -1)
case "$criu_version" in
  [4-9].[1-9]* | [4-9].[1-9][0-9]* | [5-9].* | [1-9][0-9].*) ;;
  *) die "$CRIU is version '${criu_version:-unknown}'; lazarus needs CRIU >= 4.1 (docs/troubleshooting.md)" ;;
esac
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || die "cargo not found (Rust >= 1.88)"
command -v cargo >/dev/null 2>&1 || PATH=$HOME/.cargo/bin:$PATH

kc() { "$KUBECTL" --context "kind-$CLUSTER" "$@"; }

if "$KIND" get clusters 2>/dev/null | grep -qxF "$CLUSTER"; then
  die "a kind cluster named '$CLUSTER' exists already; delete it first: $KIND delete cluster --name $CLUSTER"
fi

# --- Diagnostics and cleanup -----------------------------------------------------
created=0
result=1
finish() {
  local node
  if [ "$result" -ne 0 ] && [ "$created" -eq 1 ]; then
    step "diagnostics"
    kc -n "$NAMESPACE" get pods -o wide 2>&1 || true
    kc -n "$NAMESPACE" describe pod counter-0 2>&1 | tail -25 || true
    for node in $("$KIND" get nodes --name "$CLUSTER" 2>/dev/null); do
      printf -- '--- %s: journalctl -u lazarus (last 40)\n' "$node"
      "$DOCKER" exec "$node" journalctl -u lazarus --no-pager -n 40 2>&1 || true
      printf -- '--- %s: journalctl -u kubelet (last 15)\n' "$node"
      "$DOCKER" exec "$node" journalctl -u kubelet --no-pager -n 15 2>&1 || true
    done
  fi
  if [ "$created" -eq 1 ] && [ "$KEEP" -eq 0 ]; then
    step "deleting the cluster (--keep leaves it)"
    "$KIND" delete cluster --name "$CLUSTER" || true
  elif [ "$created" -eq 1 ]; then
    printf '\ncluster kept: kubectl --context kind-%s …; %s delete cluster --name %s\n' "$CLUSTER" "$KIND" "$CLUSTER"
  fi
}
trap finish EXIT

# --- Build and stage ---------------------------------------------------------------
step "building lazarus (release)"
(cd "$REPO" && cargo build --release -p lazarus-daemon -p lazarus-runc)

step "staging binaries, CRIU $criu_version and units in $STAGE"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/criu/lib" "$STAGE/systemd" "$STAGE/kind-config"
install -m 0755 "$REPO/target/release/lazarus" "$REPO/target/release/lazarus-runc" "$STAGE/bin/"
install -m 0755 "$CRIU" "$STAGE/criu/criu"
# CRIU's shared libraries as the host resolves them; node-setup.sh adds to the
# node only those it lacks.
ldd "$CRIU" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) continue ;;
  esac
  cp -L "$lib" "$STAGE/criu/lib/"
done
cp "$REPO"/systemd/* "$STAGE/systemd/"
cp "$HERE/node-setup.sh" "$STAGE/kind-config/"

config=$HERE/cluster.yaml
if [ "$STAGE" != /tmp/lazarus-kind/stage ]; then
  config=$STAGE/../cluster.yaml
  sed "s#/tmp/lazarus-kind/stage#$STAGE#" "$HERE/cluster.yaml" >"$config"
fi

# --- Cluster -----------------------------------------------------------------------
step "creating the kind cluster '$CLUSTER'"
created=1
"$KIND" create cluster --config "$config" --wait 180s ${LAZARUS_KIND_IMAGE:+--image "$LAZARUS_KIND_IMAGE"}

for node in $("$KIND" get nodes --name "$CLUSTER"); do
  step "installing lazarus in node $node"
  "$DOCKER" exec "$node" bash /opt/lazarus/kind-config/node-setup.sh
done
kc wait --for=condition=Ready node --all --timeout=180s

step "workload image $WORKLOAD_IMAGE"
if "$DOCKER" image inspect "$WORKLOAD_IMAGE" >/dev/null 2>&1 || "$DOCKER" pull "$WORKLOAD_IMAGE"; then
  "$KIND" load docker-image "$WORKLOAD_IMAGE" --name "$CLUSTER"
else
  echo "could not pull $WORKLOAD_IMAGE with docker; the node will pull it itself"
fi

# --- Scenario ------------------------------------------------------------------------
step "counter StatefulSet in namespace $NAMESPACE"
kc create namespace "$NAMESPACE"
kc -n "$NAMESPACE" apply -f "$HERE/counter.yaml"
kc -n "$NAMESPACE" rollout status statefulset/counter --timeout=180s
node=$(kc -n "$NAMESPACE" get pod counter-0 -o jsonpath='{.spec.nodeName}')
uid_before=$(kc -n "$NAMESPACE" get pod counter-0 -o jsonpath='{.metadata.uid}')
key="$NAMESPACE/counter-0/counter"

step "waiting for a periodic checkpoint of $key (interval 30s)"
checkpoints=""
for _ in $(seq 1 90); do
  checkpoints=$("$DOCKER" exec "$node" lazarus checkpoints list "$key" 2>/dev/null | tail -n +2 || true)
  [ -n "$checkpoints" ] && break
  sleep 2
done
[ -n "$checkpoints" ] || die "no checkpoint of $key after 180 s"
printf '%s\n' "$checkpoints"

count_before=$(kc -n "$NAMESPACE" logs counter-0 | awk '/^count / { n = $2 } END { print n + 0 }')
step "deleting pod counter-0 at count $count_before (checkpoint-on-stop takes one more)"
kc -n "$NAMESPACE" delete pod counter-0 --wait=true --timeout=120s

step "waiting for the StatefulSet to re-create counter-0"
for _ in $(seq 1 90); do
  uid_now=$(kc -n "$NAMESPACE" get pod counter-0 -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  [ -n "$uid_now" ] && [ "$uid_now" != "$uid_before" ] && break
  sleep 2
done
kc -n "$NAMESPACE" wait --for=condition=Ready pod/counter-0 --timeout=180s
sleep 3
logs=$(kc -n "$NAMESPACE" logs counter-0)
first=$(awk '/^count / { print $2; exit }' <<<"$logs")
last=$(awk '/^count / { n = $2 } END { print n + 0 }' <<<"$logs")
after=$("$DOCKER" exec "$node" lazarus checkpoints list "$key" 2>/dev/null | tail -n +2 || true)
restore_log=$("$DOCKER" exec "$node" journalctl -u lazarus --no-pager 2>/dev/null | grep -i 'restor' | tail -5 || true)

step "summary"
printf 'node:                 %s\n' "$node"
printf 'counter before:       %s (pod %s)\n' "$count_before" "$uid_before"
printf 'new pod:              %s\n' "$uid_now"
printf 'new pod first count:  %s, now %s\n' "${first:-none}" "$last"
printf 'checkpoints of %s:\n%s\n' "$key" "$after"
printf 'lazarus log (restore lines):\n%s\n' "${restore_log:-  (none)}"
if [ -z "$first" ] || [ "$first" -le 1 ]; then
  die "the new pod started from the beginning (first count ${first:-none}): it was not restored"
fi
if [ "$first" -gt "$count_before" ]; then
  echo "restored from the checkpoint taken before stop: the counter went on from $count_before to $first"
else
  echo "restored from an earlier (periodic) checkpoint: first count $first <= $count_before"
fi
echo "kind scenario: passed"
result=0
