#!/usr/bin/env bash
# lazarus end-to-end test bed: a private containerd (1.6 or 2.1), a loopback
# image registry, locally built test images and CRIU >= 4.1, on Debian 12.
#
# Usage (as root):
#   testbed.sh up [--containerd 1.6|2.1]   install, build and start everything
#   testbed.sh containerd-stop             SIGTERM our containerd, keep its state
#   testbed.sh containerd-start            start it again with the same config
#   testbed.sh status                      show what is running
#   testbed.sh down                        stop and remove everything but caches
#
# The flavour can also come from LAZARUS_CONTAINERD (default 1.6).
#
# Nothing here touches a containerd the machine runs on its own: ours has its
# own config, root, state, socket, runc root, CNI config and IPAM store. The
# e2e tests read the facts they need from $RUN_DIR/env (see write_env_file).
# shared/PLATFORM.md explains why the machine needs the settings used here.
set -euo pipefail

TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$TESTBED_DIR/$(basename "${BASH_SOURCE[0]}")"
TEMPLATES="$TESTBED_DIR/templates"

# Only system tools: a developer's PATH may put pyenv or other shims first.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

# --- Layout ------------------------------------------------------------------
CACHE_DIR=/var/cache/lazarus-testbed    # downloads and the CRIU build; kept by down
OPT_DIR=/opt/lazarus-testbed            # unpacked containerd 2.1; kept by down
LIB_DIR=/var/lib/lazarus-testbed        # persistent state; removed by down
RUN_DIR=/run/lazarus-testbed            # runtime state; removed by down
LOG_DIR=/var/log/lazarus-testbed        # logs; kept by down for post-mortems
ETC_DIR=$LIB_DIR/etc                    # generated configuration
LOCK_FILE=/run/lock/lazarus-testbed.lock

CONTAINERD_SOCKET=$RUN_DIR/containerd.sock
CONTAINERD_ROOT=$LIB_DIR/containerd
CONTAINERD_STATE=$RUN_DIR/containerd
CONTAINERD_OPT=$LIB_DIR/containerd-opt
CONTAINERD_PIDFILE=$RUN_DIR/containerd.pid
CONTAINERD_LOG=$LOG_DIR/containerd.log
# Which flavour the data in CONTAINERD_ROOT belongs to. Root and state are
# wiped when another flavour is started: 1.6 cannot read 2.x metadata.
CONTAINERD_FLAVOR_FILE=$LIB_DIR/containerd.flavor
CONTAINERD_START_TIMEOUT=30
CONTAINERD_STOP_TIMEOUT=30
RUNC_ROOT=$RUN_DIR/runc
# lazarus's runtime handler `lazarus`: containerd's runc shim runs this runc
# wrapper (options.BinaryName) instead of runc. The e2e harness installs the
# freshly built `lazarus-runc` here (install_runc_wrapper in e2e/src/lib.rs);
# until then pods of that handler fail. Kept by down, like CRIU.
RUNC_WRAPPER_DIR=/usr/local/lib/lazarus-testbed
RUNC_WRAPPER=$RUNC_WRAPPER_DIR/lazarus-runc
# Where lazarus leaves restore plans for the wrapper (LAZARUS_RESTORE_DIR of
# containerd, hence of its shims and the wrapper).
RESTORE_DIR=$LIB_DIR/restore
NRI_SOCKET=$RUN_DIR/nri.sock
CONTAINERD21_DIR=$OPT_DIR/containerd-2.1

REGISTRY=127.0.0.1:5000
REGISTRY_ROOT=$LIB_DIR/registry
REGISTRY_CONFIG=$ETC_DIR/registry.yml
REGISTRY_CONFIG_PATH=$ETC_DIR/certs.d   # containerd's hosts.toml directory
REGISTRY_PIDFILE=$RUN_DIR/registry.pid
REGISTRY_LOG=$LOG_DIR/registry.log
REGISTRY_START_TIMEOUT=30

CNI_BIN_DIR=/usr/lib/cni
CNI_CONF_DIR=$LIB_DIR/cni/net.d
CNI_IPAM_DIR=$LIB_DIR/cni/ipam
CNI_BRIDGE=lzr0
CNI_SUBNET=10.233.0.0/24

IMAGES_DIR=$LIB_DIR/images
PAUSE_IMAGE=$REGISTRY/lazarus/pause:testbed
WORKLOAD_IMAGE=$REGISTRY/lazarus/busybox:testbed

ENV_FILE=$RUN_DIR/env
WRAPPER_DIR=$RUN_DIR/bin

CRIU_VERSION=4.1.1
CRIU_TARBALL=criu_${CRIU_VERSION}.orig.tar.xz
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_MIN=4.1
CRIU_INSTALL=/usr/local/sbin/criu

# Environment of the daemons we start: nothing from the caller leaks in.
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# bookworm packages the test bed needs (the last line: CRIU build deps;
# prometheus for its promtool, which checks the scraped metrics in e2e/tests/metrics.rs;
# systemd for systemd-analyze and systemd-socket-activate, shellcheck for the
# node scripts: e2e/tests/install.rs, shim/tests/systemd.rs).
PACKAGES="containerd runc containernetworking-plugins iptables busybox-static
  docker-registry protobuf-compiler curl python3 ca-certificates openssl iproute2 patch prometheus
  util-linux xz-utils gcc make pkg-config
  systemd shellcheck python3-venv
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler python3-protobuf libnl-3-dev libnet1-dev
  libcap-dev libgnutls28-dev libbsd-dev libnftables-dev uuid-dev"

# --- Helpers -----------------------------------------------------------------
log() { printf '[testbed] %s\n' "$*" >&2; }
warn() { printf '[testbed] warning: %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,12p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
}

# Serialise every state-changing subcommand. Daemons are started with fd 9
# closed so that they never keep holding the lock.
take_lock() {
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  flock -w 600 9 || die "another testbed.sh holds $LOCK_FILE for more than 600s"
}

# True when process $1 exists and is not a zombie (PID 1 here may not reap).
proc_alive() {
  local state
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  state=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Command line of process $1 with spaces between arguments.
proc_cmdline() {
  { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true
}

# PIDs of live processes whose command line contains the fixed string $1.
pids_matching() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    case "$(proc_cmdline "$pid")" in
      *"$1"*) proc_alive "$pid" && echo "$pid" ;;
    esac
  done
  return 0
}

# Direct children of process $1.
child_pids() {
  local stat
  for stat in /proc/[0-9]*/stat; do
    # Field 4 is the parent pid; the command name (field 2) may hold spaces.
    sed -n "s/^\([0-9]*\) (.*) . $1 .*/\1/p" "$stat" 2>/dev/null
  done
  return 0
}

# All descendants of process $1, children before grandchildren.
descendant_pids() {
  local child
  for child in $(child_pids "$1"); do
    echo "$child"
    descendant_pids "$child"
  done
}

# Send $2 to $1 and wait up to $3 seconds for it to go away. Returns 1 if it
# is still there.
kill_and_wait() {
  local pid=$1 sig=$2 timeout=$3 waited=0
  proc_alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  while proc_alive "$pid"; do
    [ "$waited" -ge $((timeout * 10)) ] && return 1
    sleep 0.1
    waited=$((waited + 1))
  done
  return 0
}

# Fill @NAME@ placeholders of template $1 into file $2 from NAME=VALUE args;
# only rewrites $2 when the content changes. Returns 0 if it changed.
render() {
  local template=$1 out=$2 kv key value tmp
  shift 2
  tmp=$(mktemp "$out.XXXXXX")
  cp "$template" "$tmp"
  for kv in "$@"; do
    key=${kv%%=*}
    value=${kv#*=}
    case "$value" in *'|'* | *'&'* | *\\*) die "cannot render $key=$value" ;; esac
    sed -i "s|@$key@|$value|g" "$tmp"
  done
  if grep -q '@[A-Z0-9_]*@' "$tmp"; then
    key=$(grep -o '@[A-Z0-9_]*@' "$tmp" | head -1)
    rm -f "$tmp"
    die "unfilled placeholder $key in $template"
  fi
  if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
    rm -f "$tmp"
    return 1
  fi
  chmod 644 "$tmp"
  mv "$tmp" "$out"
  return 0
}

version_ge() {
  dpkg --compare-versions "$1" ge "$2"
}

# Base URL of the Debian mirror the machine already uses for bookworm.
debian_mirror() {
  local mirror=${LAZARUS_DEBIAN_MIRROR:-}
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    # deb822: the URIs of the stanza whose Suites holds plain "bookworm".
    mirror=$(awk '
      /^[[:space:]]*$/ { if (suite && uri) { print uri; exit } suite = 0; uri = "" ; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      END { if (suite && uri) print uri }' /etc/apt/sources.list.d/debian.sources | head -1)
  fi
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 ~ / bookworm / {
      for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}

# Run apt-get with a private configuration named $1 (its sources.list must be
# in $CACHE_DIR/apt-$1/sources.list); the machine's own lists stay untouched.
private_apt() {
  local name=$1 base="$CACHE_DIR/apt-$1"
  shift
  mkdir -p "$base/lists/partial" "$base/archives/partial" "$base/parts"
  apt-get \
    -o Dir::Etc::SourceList="$base/sources.list" \
    -o Dir::Etc::SourceParts="$base/parts" \
    -o Dir::State::Lists="$base/lists" \
    -o Dir::Cache="$base" \
    -o Dir::Cache::archives="$base/archives" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o APT::Sandbox::User=root \
    -o Acquire::Languages=none \
    "$@"
}

# --- Packages ----------------------------------------------------------------
install_packages() {
  local pkg missing="" policy_created=0
  for pkg in $PACKAGES; do
    if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ]; then
      missing="$missing $pkg"
    fi
  done
  if [ -z "$missing" ]; then
    log "packages: all installed"
    return 0
  fi
  log "packages: installing$missing"
  # containerd and docker-registry ship services. Without systemd the
  # registry's init script would start a second registry on :5000 (and a
  # failure there fails the install), so forbid service starts while we
  # install, unless the machine already has a policy of its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# Temporary: lazarus testbed.sh installs packages.\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local registry_before=""
  registry_before=$(cat /run/docker-registry.pid 2>/dev/null || true)
  local rc=0
  # shellcheck disable=SC2086 # $missing is a word list on purpose
  {
    apt-get -o DPkg::Lock::Timeout=600 -q update &&
      apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends \
        install $missing
  } >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  if [ "$policy_created" -eq 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc); see $LOG_DIR/apt.log"
  # If a policy of the machine let the package start its registry anyway,
  # stop that one: it would hold our port. Never touch one that ran before.
  local registry_after=""
  registry_after=$(cat /run/docker-registry.pid 2>/dev/null || true)
  if [ -n "$registry_after" ] && [ "$registry_after" != "$registry_before" ] &&
    proc_alive "$registry_after"; then
    log "packages: stopping the docker-registry service the package started"
    start-stop-daemon --stop --pidfile /run/docker-registry.pid --retry 10 >/dev/null || true
  fi
}

# --- CRIU --------------------------------------------------------------------
criu_version_of() {
  "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -1
}

fetch_criu_tarball() {
  local dir="$CACHE_DIR/criu" tarball="$CACHE_DIR/criu/$CRIU_TARBALL"
  mkdir -p "$dir"
  if [ -f "$tarball" ] && echo "$CRIU_SHA256  $tarball" | sha256sum -c --status; then
    return 0
  fi
  rm -f "$tarball"
  log "criu: downloading $CRIU_TARBALL (Debian trixie source)"
  mkdir -p "$CACHE_DIR/apt-trixie-src"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) trixie main" \
    >"$CACHE_DIR/apt-trixie-src/sources.list"
  private_apt trixie-src -q update >>"$LOG_DIR/apt.log" 2>&1 ||
    die "apt-get update for trixie sources failed; see $LOG_DIR/apt.log"
  # The mirror answers 404 for the .dsc and .debian.tar.xz, so this exits 100
  # even though the orig tarball, the only file we need, arrives.
  (cd "$dir" && private_apt trixie-src -q source --download-only criu) \
    >>"$LOG_DIR/apt.log" 2>&1 || true
  [ -f "$tarball" ] ||
    die "apt-get source did not deliver $CRIU_TARBALL (trixie may have moved on); see $LOG_DIR/apt.log"
  echo "$CRIU_SHA256  $tarball" | sha256sum -c --status ||
    die "$tarball has the wrong sha256 (expected $CRIU_SHA256)"
}

# Our CRIU build: Debian's 4.1.1 source plus the patches in patches/ (see
# patches/README.md). A stamp records which source and patches the installed
# binary was built from, so a changed patch set rebuilds it.
criu_stamp() {
  {
    echo "$CRIU_SHA256"
    cat "$TESTBED_DIR"/patches/criu-"$CRIU_VERSION"-*.patch 2>/dev/null
  } | sha256sum | cut -d' ' -f1
}

ensure_criu() {
  local version stamp_file=/usr/local/share/lazarus-testbed/criu.stamp want
  want=$(criu_stamp)
  if [ -x "$CRIU_INSTALL" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ]; then
    CRIU_BIN=$CRIU_INSTALL
    log "criu: $CRIU_BIN is $(criu_version_of "$CRIU_BIN") (patched build)"
    check_criu
    return 0
  fi
  fetch_criu_tarball
  local build="$CACHE_DIR/criu/build" src="$CACHE_DIR/criu/build/criu-$CRIU_VERSION" patch
  # Always from a fresh unpack, so patches apply to pristine sources.
  rm -rf "$build"
  mkdir -p "$build"
  tar -C "$build" -xJf "$CACHE_DIR/criu/$CRIU_TARBALL"
  [ -d "$src" ] || die "$CRIU_TARBALL did not unpack into $src"
  for patch in "$TESTBED_DIR"/patches/criu-"$CRIU_VERSION"-*.patch; do
    [ -f "$patch" ] || continue
    log "criu: applying $(basename "$patch")"
    patch -d "$src" -p1 --quiet <"$patch" || die "applying $patch to CRIU $CRIU_VERSION failed"
  done
  log "criu: building $CRIU_VERSION in $src (log: $LOG_DIR/criu-build.log)"
  make -C "$src" -j"$(nproc)" criu >>"$LOG_DIR/criu-build.log" 2>&1 ||
    die "building CRIU failed; see $LOG_DIR/criu-build.log"
  install -m 0755 "$src/criu/criu" "$CRIU_INSTALL"
  CRIU_BIN=$CRIU_INSTALL
  version=$(criu_version_of "$CRIU_BIN")
  version_ge "${version:-0}" "$CRIU_MIN" || die "$CRIU_BIN reports version '${version}'"
  mkdir -p "$(dirname "$stamp_file")"
  echo "$want" >"$stamp_file"
  log "criu: installed $CRIU_BIN ($version, patched)"
  check_criu
}

check_criu() {
  local out
  # Without CAP_SYS_RESOURCE criu also prints an harmless RLIMIT_NOFILE line.
  out=$("$CRIU_BIN" check 2>&1 || true)
  if ! printf '%s\n' "$out" | grep -q 'Looks good'; then
    printf '%s\n' "$out" >&2
    die "'$CRIU_BIN check' did not say 'Looks good'"
  fi
}

# --- containerd binaries -----------------------------------------------------
ensure_containerd21() {
  if [ -x "$CONTAINERD21_DIR/usr/bin/containerd" ] &&
    "$CONTAINERD21_DIR/usr/bin/containerd" --version >/dev/null 2>&1; then
    return 0
  fi
  local debs="$CACHE_DIR/debs" deb="${LAZARUS_CONTAINERD21_DEB:-}" f
  mkdir -p "$debs" "$CACHE_DIR/apt-sid"
  if [ -z "$deb" ]; then
    # A cached download; the glob sorts, so the last one is the newest.
    for f in "$debs"/containerd_2.1.*_amd64.deb; do
      [ -f "$f" ] && deb=$f
    done
  fi
  if [ -z "$deb" ]; then
    log "containerd 2.1: downloading the .deb from Debian sid"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64] $(debian_mirror) sid main" \
      >"$CACHE_DIR/apt-sid/sources.list"
    private_apt sid -q update >>"$LOG_DIR/apt.log" 2>&1 ||
      die "apt-get update for sid failed; see $LOG_DIR/apt.log"
    (cd "$debs" && private_apt sid -q download containerd) >>"$LOG_DIR/apt.log" 2>&1 ||
      die "apt-get download containerd (sid) failed; see $LOG_DIR/apt.log"
    for f in "$debs"/containerd_*_amd64.deb; do
      [ -f "$f" ] && deb=$f
    done
    [ -n "$deb" ] || die "apt-get download containerd left no .deb in $debs"
  fi
  local version
  version=$(dpkg-deb -f "$deb" Version)
  case "$version" in
    2.1.*) ;;
    *) die "$deb is containerd $version, not 2.1; set LAZARUS_CONTAINERD21_DEB to a 2.1 .deb" ;;
  esac
  log "containerd 2.1: unpacking $version into $CONTAINERD21_DIR"
  rm -rf "$CONTAINERD21_DIR.new"
  mkdir -p "$CONTAINERD21_DIR.new"
  dpkg -x "$deb" "$CONTAINERD21_DIR.new"
  echo "$version" >"$CONTAINERD21_DIR.new/DEB_VERSION"
  rm -rf "$CONTAINERD21_DIR"
  mv "$CONTAINERD21_DIR.new" "$CONTAINERD21_DIR"
  "$CONTAINERD21_DIR/usr/bin/containerd" --version >/dev/null ||
    die "$CONTAINERD21_DIR/usr/bin/containerd does not run on this machine"
}

# Sets CONTAINERD_BIN, CTR_BIN, SHIM_BIN, CONTAINERD_CONFIG and
# CONTAINERD_ENV_PATH for flavour $1.
select_flavor() {
  FLAVOR=$1
  case "$FLAVOR" in
    1.6)
      CONTAINERD_BIN=/usr/bin/containerd
      CTR_BIN=/usr/bin/ctr
      SHIM_BIN=/usr/bin/containerd-shim-runc-v2
      CONTAINERD_ENV_PATH=$DAEMON_PATH
      ;;
    2.1)
      CONTAINERD_BIN=$CONTAINERD21_DIR/usr/bin/containerd
      CTR_BIN=$CONTAINERD21_DIR/usr/bin/ctr
      SHIM_BIN=$CONTAINERD21_DIR/usr/bin/containerd-shim-runc-v2
      # The shim is looked up in PATH first: put 2.1's before /usr/bin's 1.6.
      CONTAINERD_ENV_PATH=$CONTAINERD21_DIR/usr/bin:$DAEMON_PATH
      ;;
    *) die "unknown containerd flavour '$FLAVOR' (use 1.6 or 2.1)" ;;
  esac
  CONTAINERD_CONFIG=$ETC_DIR/containerd-$FLAVOR.toml
}

# --- containerd configuration --------------------------------------------------
write_cni_config() {
  mkdir -p "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  render "$TEMPLATES/cni-lzr0.conflist.in" "$CNI_CONF_DIR/10-lazarus-testbed.conflist" \
    CNI_BRIDGE="$CNI_BRIDGE" CNI_SUBNET="$CNI_SUBNET" CNI_IPAM_DIR="$CNI_IPAM_DIR" || true
}

write_registry_hosts() {
  mkdir -p "$REGISTRY_CONFIG_PATH/$REGISTRY"
  render "$TEMPLATES/hosts.toml.in" "$REGISTRY_CONFIG_PATH/$REGISTRY/hosts.toml" \
    REGISTRY="$REGISTRY" || true
}

# Renders the config of the selected flavour; returns 0 when it changed.
write_containerd_config() {
  mkdir -p "$ETC_DIR"
  render "$TEMPLATES/containerd-$FLAVOR.toml.in" "$CONTAINERD_CONFIG" \
    CONTAINERD_ROOT="$CONTAINERD_ROOT" CONTAINERD_STATE="$CONTAINERD_STATE" \
    CONTAINERD_SOCKET="$CONTAINERD_SOCKET" CONTAINERD_OPT="$CONTAINERD_OPT" \
    PAUSE_IMAGE="$PAUSE_IMAGE" RUNC_ROOT="$RUNC_ROOT" SHIM_BIN="$SHIM_BIN" \
    NRI_SOCKET="$NRI_SOCKET" CNI_BIN_DIR="$CNI_BIN_DIR" CNI_CONF_DIR="$CNI_CONF_DIR" \
    REGISTRY_CONFIG_PATH="$REGISTRY_CONFIG_PATH" RUNC_WRAPPER="$RUNC_WRAPPER"
}

# The environment containerd runs with, one NAME=VALUE per line. Its shims,
# and through them the runc wrapper, inherit it: LAZARUS_RUNC is the real runc
# the wrapper calls, LAZARUS_RESTORE_DIR where it finds restore plans.
containerd_environment() {
  local runc
  runc=$(command -v runc) || die "runc is not installed"
  printf '%s\n' "PATH=$CONTAINERD_ENV_PATH" HOME=/root LANG=C.UTF-8 \
    "LAZARUS_RESTORE_DIR=$RESTORE_DIR" "LAZARUS_RUNC=$runc"
}

# True when the running containerd $1 has exactly the environment we start
# it with (a test bed brought up by an older testbed.sh may lack some).
containerd_environment_matches() {
  local want have
  want=$(containerd_environment | sort)
  have=$({ tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | sort) || return 1
  [ "$want" = "$have" ]
}

# --- containerd process --------------------------------------------------------
# PID of the running test-bed containerd (any flavour), or nothing. Found
# through the pidfile, else through its unique --config argument.
containerd_pid() {
  local pid
  pid=$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)
  if proc_alive "$pid" && case "$(proc_cmdline "$pid")" in *" --config $ETC_DIR/containerd-"*) true ;; *) false ;; esac; then
    echo "$pid"
    return 0
  fi
  pids_matching " --config $ETC_DIR/containerd-" | head -1
}

# Flavour of the running containerd $1, from its config file name.
flavor_of_pid() {
  proc_cmdline "$1" | sed -n "s|.* --config $ETC_DIR/containerd-\([0-9.]*\)\.toml.*|\1|p"
}

# Closes the descriptors above 2 a daemon would inherit from whoever ran
# testbed.sh: under `flock /tmp/lazarus-testbed.lock …` that is the lock, and
# a containerd holding it blocks every other user of the test bed until it
# stops. (255 is bash's own close-on-exec script descriptor.)
close_inherited_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then
      eval "exec $fd>&-" 2>/dev/null || true
    fi
  done
}

containerd_answers() {
  timeout 5 "$CTR_BIN" --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1
}

start_containerd() {
  [ -x "$CONTAINERD_BIN" ] || die "$CONTAINERD_BIN missing; run '$SELF up --containerd $FLAVOR'"
  [ -f "$CONTAINERD_CONFIG" ] || die "$CONTAINERD_CONFIG missing; run '$SELF up --containerd $FLAVOR'"
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$RUNC_ROOT" \
    "$CNI_IPAM_DIR" "$RUNC_WRAPPER_DIR"
  mkdir -p "$RESTORE_DIR"
  chmod 0700 "$RESTORE_DIR"
  local environment
  environment=$(containerd_environment)
  echo "$FLAVOR" >"$CONTAINERD_FLAVOR_FILE"
  rm -f "$CONTAINERD_SOCKET" "$CONTAINERD_SOCKET.ttrpc"
  printf '=== %s testbed.sh: starting containerd %s: %s --config %s\n' \
    "$(date -Is)" "$FLAVOR" "$CONTAINERD_BIN" "$CONTAINERD_CONFIG" >>"$CONTAINERD_LOG"
  # A new session with no inherited environment, no stdin and no lock fd.
  # Without job control the subshell is no group leader, so setsid execs in
  # place and $! is containerd's own PID.
  # shellcheck disable=SC2086 # $environment is NAME=VALUE words without spaces
  (cd / && close_inherited_fds && exec env -i $environment \
    setsid "$CONTAINERD_BIN" --config "$CONTAINERD_CONFIG") \
    </dev/null >>"$CONTAINERD_LOG" 2>&1 9>&- &
  local pid=$! waited=0
  echo "$pid" >"$CONTAINERD_PIDFILE"
  until containerd_answers; do
    if ! proc_alive "$pid"; then
      tail -n 20 "$CONTAINERD_LOG" >&2 || true
      die "containerd $FLAVOR exited during startup; see $CONTAINERD_LOG"
    fi
    if [ "$waited" -ge $((CONTAINERD_START_TIMEOUT * 5)) ]; then
      die "containerd did not answer on $CONTAINERD_SOCKET within ${CONTAINERD_START_TIMEOUT}s; see $CONTAINERD_LOG"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  check_cri_plugins
  log "containerd $FLAVOR: running, pid $pid, socket $CONTAINERD_SOCKET"
}

# The CRI plugins must have loaded; anything else is a broken test bed.
check_cri_plugins() {
  local plugins bad
  plugins=$(timeout 10 "$CTR_BIN" --address "$CONTAINERD_SOCKET" plugins ls) ||
    die "'ctr plugins ls' failed against $CONTAINERD_SOCKET"
  printf '%s\n' "$plugins" | grep -q '[[:space:]]cri[[:space:]].*ok[[:space:]]*$' ||
    die "containerd's CRI plugin is not loaded; see $CONTAINERD_LOG"
  bad=$(printf '%s\n' "$plugins" | awk '($1 ~ /cri/ || $2 ~ /cri/ || $2 == "podsandbox") && $NF != "ok"')
  [ -z "$bad" ] || die "CRI plugins failed to load: $bad; see $CONTAINERD_LOG"
}

stop_containerd() {
  local pid
  pid=$(containerd_pid)
  [ -n "$pid" ] || return 0
  log "containerd: stopping pid $pid"
  if ! kill_and_wait "$pid" TERM "$CONTAINERD_STOP_TIMEOUT"; then
    warn "containerd $pid ignored SIGTERM for ${CONTAINERD_STOP_TIMEOUT}s; killing it"
    kill_and_wait "$pid" KILL 10 || die "containerd $pid does not die"
  fi
  rm -f "$CONTAINERD_PIDFILE"
}

# Remove every task and container through containerd itself, so that runc
# and the shims clean up after themselves (CNI teardown is skipped: the
# IPAM store is wiped with the rest).
remove_workloads_via_ctr() {
  local ctr="" ns id
  for ctr in "${CTR_BIN:-}" /usr/bin/ctr "$CONTAINERD21_DIR/usr/bin/ctr"; do
    [ -n "$ctr" ] && [ -x "$ctr" ] && break
  done
  [ -n "$ctr" ] && [ -x "$ctr" ] || return 0
  timeout 5 "$ctr" --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1 || return 0
  for ns in $(timeout 10 "$ctr" --address "$CONTAINERD_SOCKET" namespaces ls -q 2>/dev/null); do
    for id in $(timeout 10 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" tasks ls -q 2>/dev/null); do
      timeout 10 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(timeout 10 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" tasks ls -q 2>/dev/null); do
      timeout 15 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(timeout 10 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" containers ls -q 2>/dev/null); do
      timeout 15 "$ctr" --address "$CONTAINERD_SOCKET" -n "$ns" containers rm "$id" >/dev/null 2>&1 || true
    done
  done
}

# Whatever survived: kill the processes under our shims and the shims (found
# by our socket in their command line), then runc's state in our runc root.
kill_leftover_workloads() {
  local shim pid ns id
  for shim in $(pids_matching "-address $CONTAINERD_SOCKET"); do
    for pid in $(descendant_pids "$shim"); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    log "killing leftover shim $shim"
    kill_and_wait "$shim" KILL 5 || warn "shim $shim does not die"
  done
  if [ -d "$RUNC_ROOT" ] && command -v runc >/dev/null; then
    for ns in "$RUNC_ROOT"/*; do
      [ -d "$ns" ] || continue
      for id in $(runc --root "$ns" list -q 2>/dev/null); do
        runc --root "$ns" kill "$id" KILL >/dev/null 2>&1 || true
        runc --root "$ns" delete -f "$id" >/dev/null 2>&1 || true
      done
    done
  fi
}

# Unmount everything below our directories (rootfs overlays, /dev/shm of
# pods, network namespaces), deepest first.
our_mounts() {
  awk -v run="$RUN_DIR" -v lib="$LIB_DIR" '
    index($5, run "/") == 1 || $5 == run || index($5, lib "/") == 1 || $5 == lib { print $5 }' \
    /proc/self/mountinfo | sort -r
}

unmount_all() {
  local mp left
  while read -r mp; do
    [ -n "$mp" ] || continue
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || warn "cannot unmount $mp"
  done <<EOF
$(our_mounts)
EOF
  left=$(our_mounts)
  [ -z "$left" ] || die "still mounted, refusing to delete: $left"
}

# Stop containerd and remove all of its containers, mounts and data.
reset_containerd() {
  remove_workloads_via_ctr
  stop_containerd
  kill_leftover_workloads
  unmount_all
  rm -rf --one-file-system "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$RUNC_ROOT" \
    "$CNI_IPAM_DIR" "$CONTAINERD_OPT" "$CONTAINERD_FLAVOR_FILE" "$NRI_SOCKET" "$RESTORE_DIR"
}

# Bring the selected flavour up, reusing a running one when it matches.
ensure_containerd() {
  local pid running_flavor data_flavor changed=0
  write_cni_config
  write_registry_hosts
  write_containerd_config && changed=1
  "$CONTAINERD_BIN" --config "$CONTAINERD_CONFIG" config dump >/dev/null 2>"$RUN_DIR/config-check.err" ||
    die "containerd rejects $CONTAINERD_CONFIG: $(cat "$RUN_DIR/config-check.err")"
  rm -f "$RUN_DIR/config-check.err"
  pid=$(containerd_pid)
  running_flavor=""
  [ -n "$pid" ] && running_flavor=$(flavor_of_pid "$pid")
  data_flavor=$(cat "$CONTAINERD_FLAVOR_FILE" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$running_flavor" = "$FLAVOR" ]; then
    if [ "$changed" -eq 0 ] && containerd_environment_matches "$pid" && containerd_answers; then
      log "containerd $FLAVOR: already running (pid $pid)"
      check_cri_plugins
      return 0
    fi
    log "containerd $FLAVOR: configuration or environment changed, or not answering; restarting"
    stop_containerd
  elif [ -n "$pid" ] || { [ -n "$data_flavor" ] && [ "$data_flavor" != "$FLAVOR" ]; }; then
    log "containerd: switching from ${running_flavor:-$data_flavor} to $FLAVOR (its containers and data are removed)"
    reset_containerd
  fi
  start_containerd
}

# --- Registry ------------------------------------------------------------------
registry_pid() {
  local pid
  pid=$(cat "$REGISTRY_PIDFILE" 2>/dev/null || true)
  if proc_alive "$pid" && case "$(proc_cmdline "$pid")" in *"serve $REGISTRY_CONFIG"*) true ;; *) false ;; esac; then
    echo "$pid"
    return 0
  fi
  pids_matching "serve $REGISTRY_CONFIG" | head -1
}

registry_answers() {
  curl -fsS --noproxy '*' --max-time 3 -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null
}

stop_registry() {
  local pid
  pid=$(registry_pid)
  [ -n "$pid" ] || return 0
  log "registry: stopping pid $pid"
  kill_and_wait "$pid" TERM 10 || kill_and_wait "$pid" KILL 5 || die "registry $pid does not die"
  rm -f "$REGISTRY_PIDFILE"
}

ensure_registry() {
  local pid changed=0 waited=0
  mkdir -p "$ETC_DIR" "$REGISTRY_ROOT" "$LOG_DIR" "$RUN_DIR"
  render "$TEMPLATES/registry.yml.in" "$REGISTRY_CONFIG" \
    REGISTRY="$REGISTRY" REGISTRY_ROOT="$REGISTRY_ROOT" && changed=1
  pid=$(registry_pid)
  if [ -n "$pid" ]; then
    if [ "$changed" -eq 0 ] && registry_answers; then
      log "registry: already running (pid $pid)"
      return 0
    fi
    stop_registry
  fi
  if registry_answers; then
    die "something else answers on http://$REGISTRY/ (not our registry); stop it first"
  fi
  printf '=== %s testbed.sh: starting docker-registry\n' "$(date -Is)" >>"$REGISTRY_LOG"
  (cd / && close_inherited_fds && exec env -i PATH="$DAEMON_PATH" HOME=/root \
    setsid /usr/bin/docker-registry serve "$REGISTRY_CONFIG") \
    </dev/null >>"$REGISTRY_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$REGISTRY_PIDFILE"
  until registry_answers; do
    if ! proc_alive "$pid"; then
      tail -n 20 "$REGISTRY_LOG" >&2 || true
      die "docker-registry exited during startup; see $REGISTRY_LOG"
    fi
    if [ "$waited" -ge $((REGISTRY_START_TIMEOUT * 5)) ]; then
      die "registry did not answer on http://$REGISTRY/v2/ within ${REGISTRY_START_TIMEOUT}s; see $REGISTRY_LOG"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  log "registry: running, pid $pid, http://$REGISTRY"
}

# --- Images --------------------------------------------------------------------
build_and_publish_images() {
  local out name ref digest tar
  mkdir -p "$IMAGES_DIR"
  out=$(/usr/bin/python3 "$TESTBED_DIR/build-images.py" --busybox /bin/busybox \
    --out "$IMAGES_DIR" --registry "$REGISTRY" --push) ||
    die "building or pushing the test images failed"
  while read -r name ref digest tar; do
    log "image: $ref $digest"
    case "$name" in
      pause) PAUSE_IMAGE_DIGEST=$digest PAUSE_IMAGE_TAR=$tar ;;
      busybox) WORKLOAD_IMAGE_DIGEST=$digest WORKLOAD_IMAGE_TAR=$tar ;;
    esac
  done <<EOF
$out
EOF
  # Sandboxes must never depend on a pull: import the pause image.
  timeout 120 "$CTR_BIN" --address "$CONTAINERD_SOCKET" -n k8s.io images import \
    "$PAUSE_IMAGE_TAR" >/dev/null ||
    die "ctr images import $PAUSE_IMAGE_TAR failed"
  # The listing is read whole: with pipefail, `ctr … | grep -q` fails whenever
  # grep's early exit leaves ctr writing into a closed pipe (SIGPIPE).
  local images
  images=$(timeout 10 "$CTR_BIN" --address "$CONTAINERD_SOCKET" -n k8s.io images ls -q) ||
    die "ctr images ls failed"
  grep -qxF "$PAUSE_IMAGE" <<<"$images" || die "$PAUSE_IMAGE missing from containerd after import"
}

# --- Env file ------------------------------------------------------------------
write_wrappers() {
  mkdir -p "$WRAPPER_DIR"
  local cmd
  for cmd in containerd-stop containerd-start; do
    printf '#!/bin/sh\n# Generated by %s up.\nexec %s %s "$@"\n' "$SELF" "$SELF" "$cmd" \
      >"$WRAPPER_DIR/$cmd.tmp"
    chmod 755 "$WRAPPER_DIR/$cmd.tmp"
    mv "$WRAPPER_DIR/$cmd.tmp" "$WRAPPER_DIR/$cmd"
  done
}

# KEY=VALUE lines without quotes: values are checked to need none, so the
# file can be sourced by a shell and split on the first '=' by anything else.
write_env_file() {
  local version_line version deb_version tmp="$ENV_FILE.tmp" kv
  version_line=$("$CONTAINERD_BIN" --version)
  version=$(echo "$version_line" | awk '{print $3}')
  if [ "$FLAVOR" = 2.1 ]; then
    deb_version=$(cat "$CONTAINERD21_DIR/DEB_VERSION" 2>/dev/null || echo unknown)
  else
    deb_version=$(dpkg-query -W -f='${Version}' containerd)
  fi
  : >"$tmp"
  for kv in \
    "CONTAINERD_FLAVOR=$FLAVOR" \
    "CONTAINERD_VERSION=$version" \
    "CONTAINERD_DEB_VERSION=$deb_version" \
    "CONTAINERD_SOCKET=$CONTAINERD_SOCKET" \
    "CONTAINERD_BIN=$CONTAINERD_BIN" \
    "CONTAINERD_CONFIG=$CONTAINERD_CONFIG" \
    "CONTAINERD_ROOT=$CONTAINERD_ROOT" \
    "CONTAINERD_STATE=$CONTAINERD_STATE" \
    "CONTAINERD_PIDFILE=$CONTAINERD_PIDFILE" \
    "CONTAINERD_LOG=$CONTAINERD_LOG" \
    "CONTAINERD_STOP_CMD=$WRAPPER_DIR/containerd-stop" \
    "CONTAINERD_START_CMD=$WRAPPER_DIR/containerd-start" \
    "CTR_BIN=$CTR_BIN" \
    "SHIM_BIN=$SHIM_BIN" \
    "RUNC_BIN=$(command -v runc)" \
    "RUNC_ROOT=$RUNC_ROOT" \
    "LAZARUS_RUNC_WRAPPER=$RUNC_WRAPPER" \
    "LAZARUS_RESTORE_DIR=$RESTORE_DIR" \
    "CRIU_BIN=$CRIU_BIN" \
    "CRIU_VERSION=$(criu_version_of "$CRIU_BIN")" \
    "REGISTRY=$REGISTRY" \
    "REGISTRY_LOG=$REGISTRY_LOG" \
    "REGISTRY_ROOT=$REGISTRY_ROOT" \
    "PAUSE_IMAGE=$PAUSE_IMAGE" \
    "PAUSE_IMAGE_DIGEST=$PAUSE_IMAGE_DIGEST" \
    "PAUSE_IMAGE_TAR=$PAUSE_IMAGE_TAR" \
    "WORKLOAD_IMAGE=$WORKLOAD_IMAGE" \
    "WORKLOAD_IMAGE_DIGEST=$WORKLOAD_IMAGE_DIGEST" \
    "WORKLOAD_IMAGE_TAR=$WORKLOAD_IMAGE_TAR" \
    "CNI_BIN_DIR=$CNI_BIN_DIR" \
    "CNI_CONF_DIR=$CNI_CONF_DIR" \
    "CNI_BRIDGE=$CNI_BRIDGE" \
    "CNI_SUBNET=$CNI_SUBNET" \
    "GRPC_PYTHON=$GRPC_PYTHON_VENV/bin/python" \
    "TESTBED_SCRIPT=$SELF" \
    "TESTBED_LOG_DIR=$LOG_DIR"; do
    case "${kv#*=}" in
      '' | *[!A-Za-z0-9_./:@%+~,=-]*) die "env value needs quoting, refusing: $kv" ;;
    esac
    echo "$kv" >>"$tmp"
  done
  mv "$tmp" "$ENV_FILE"
}

# Python grpcio (gRPC's C core): a second, independent gRPC client stack for
# e2e/tests/grpc_python.rs, in a venv reused while the pins match.
GRPC_PYTHON_VENV=$OPT_DIR/grpc-python
GRPC_PYTHON_PINS="grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2"
ensure_python_grpc() {
  local stamp=$GRPC_PYTHON_VENV/lazarus-pins
  if [ -x "$GRPC_PYTHON_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$GRPC_PYTHON_PINS" ]; then
    log "python grpcio: $GRPC_PYTHON_VENV ($GRPC_PYTHON_PINS)"
    return 0
  fi
  log "python grpcio: installing $GRPC_PYTHON_PINS into $GRPC_PYTHON_VENV"
  rm -rf "$GRPC_PYTHON_VENV"
  python3 -m venv "$GRPC_PYTHON_VENV" || die "python3 -m venv $GRPC_PYTHON_VENV failed"
  # shellcheck disable=SC2086 # the pins are separate words
  "$GRPC_PYTHON_VENV/bin/pip" install --no-input --disable-pip-version-check --quiet $GRPC_PYTHON_PINS \
    || die "pip install $GRPC_PYTHON_PINS failed"
  "$GRPC_PYTHON_VENV/bin/python" -c 'import grpc, grpc_tools.protoc' || die "python grpcio does not import"
  echo "$GRPC_PYTHON_PINS" >"$stamp"
}

# --- Subcommands ---------------------------------------------------------------
cmd_up() {
  local flavor=${LAZARUS_CONTAINERD:-1.6} start
  while [ $# -gt 0 ]; do
    case "$1" in
      --containerd) [ $# -ge 2 ] || usage; flavor=$2; shift 2 ;;
      --containerd=*) flavor=${1#*=}; shift ;;
      *) usage ;;
    esac
  done
  start=$(date +%s)
  take_lock
  mkdir -p "$CACHE_DIR" "$LIB_DIR" "$RUN_DIR" "$LOG_DIR"
  select_flavor "$flavor"
  install_packages
  ensure_criu
  if [ "$FLAVOR" = 2.1 ]; then
    ensure_containerd21
  fi
  ensure_containerd
  ensure_registry
  build_and_publish_images
  ensure_python_grpc
  write_wrappers
  write_env_file
  log "up: containerd $FLAVOR ready in $(($(date +%s) - start))s; env file $ENV_FILE"
}

# The flavour that was last brought up; containerd-start/stop act on it.
select_current_flavor() {
  local flavor
  flavor=$(cat "$CONTAINERD_FLAVOR_FILE" 2>/dev/null || true)
  [ -n "$flavor" ] || die "the test bed is not set up; run '$SELF up' first"
  select_flavor "$flavor"
}

cmd_containerd_stop() {
  take_lock
  local pid
  pid=$(containerd_pid)
  if [ -z "$pid" ]; then
    log "containerd: not running"
    return 0
  fi
  stop_containerd
}

cmd_containerd_start() {
  take_lock
  select_current_flavor
  local pid
  pid=$(containerd_pid)
  if [ -n "$pid" ]; then
    if containerd_answers; then
      log "containerd $FLAVOR: already running (pid $pid)"
      return 0
    fi
    stop_containerd
  fi
  start_containerd
}

cmd_down() {
  take_lock
  CTR_BIN=""
  local flavor
  flavor=$(cat "$CONTAINERD_FLAVOR_FILE" 2>/dev/null || true)
  case "$flavor" in 1.6 | 2.1) select_flavor "$flavor" ;; esac
  reset_containerd
  stop_registry
  if command -v ip >/dev/null && ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    log "deleting bridge $CNI_BRIDGE"
    ip link delete "$CNI_BRIDGE" || warn "cannot delete bridge $CNI_BRIDGE"
  fi
  unmount_all
  rm -rf --one-file-system "$RUN_DIR" "$LIB_DIR"
  log "down: done (kept $CACHE_DIR, $OPT_DIR and $LOG_DIR)"
}

cmd_status() {
  local pid flavor ctr=""
  flavor=$(cat "$CONTAINERD_FLAVOR_FILE" 2>/dev/null || true)
  case "$flavor" in 1.6 | 2.1) select_flavor "$flavor"; ctr=$CTR_BIN ;; esac
  pid=$(containerd_pid)
  if [ -n "$pid" ]; then
    echo "containerd: running, flavour $(flavor_of_pid "$pid"), pid $pid, socket $CONTAINERD_SOCKET"
    if [ -n "$ctr" ] && [ -x "$ctr" ]; then
      timeout 5 "$ctr" --address "$CONTAINERD_SOCKET" version 2>&1 | sed 's/^/  /' || true
      echo "  k8s.io containers: $(timeout 5 "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io containers ls -q 2>/dev/null | wc -l)" \
        "tasks: $(timeout 5 "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io tasks ls -q 2>/dev/null | wc -l)"
      echo "  k8s.io images:"
      timeout 5 "$ctr" --address "$CONTAINERD_SOCKET" -n k8s.io images ls -q 2>/dev/null | sed 's/^/    /' || true
    fi
  else
    echo "containerd: not running${flavor:+ (data of flavour $flavor kept)}"
  fi
  echo "shims: $(pids_matching "-address $CONTAINERD_SOCKET" | wc -l)"
  pid=$(registry_pid)
  if [ -n "$pid" ]; then
    echo "registry: running, pid $pid, http://$REGISTRY ($(registry_answers && echo answering || echo NOT answering))"
  else
    echo "registry: not running"
  fi
  local criu
  criu=$(command -v criu || true)
  echo "criu: ${criu:-not installed}${criu:+ $(criu_version_of "$criu")}"
  if command -v ip >/dev/null && ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    echo "bridge $CNI_BRIDGE: $(ip -br addr show "$CNI_BRIDGE" | awk '{print $2, $3}')"
  else
    echo "bridge $CNI_BRIDGE: absent"
  fi
  if [ -f "$ENV_FILE" ]; then echo "env file: $ENV_FILE"; else echo "env file: absent"; fi
}

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1
  shift
  case "$cmd" in
    up) need_root; cmd_up "$@" ;;
    down) need_root; [ $# -eq 0 ] || usage; cmd_down ;;
    containerd-stop) need_root; [ $# -eq 0 ] || usage; cmd_containerd_stop ;;
    containerd-start) need_root; [ $# -eq 0 ] || usage; cmd_containerd_start ;;
    status) [ $# -eq 0 ] || usage; cmd_status ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
