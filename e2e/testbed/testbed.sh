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
#   testbed.sh verify-packages             prove PACKAGES complete (CRIU and the Rust
#                                          workspace built in a minbase root; host tools)
#   testbed.sh debian-image                build (or find cached) the Debian workload
#                                          image; `up` imports it
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
# The Debian workload image (e2e/tests/workloads.rs): Debian's own programs
# installed into the minbase root, packed by pack-rootfs.py, cached in
# DEBIAN_IMAGE_CACHE under a key of its package list, the minbase root's key
# and the build steps; imported (never pushed) into containerd by `up`.
DEBIAN_IMAGE_PACKAGES="python3-numpy redis-server postgresql-15 procps"
DEBIAN_IMAGE_NAME=localhost/lazarus/debian
DEBIAN_IMAGE_CACHE=$CACHE_DIR/images
# The non-root user of the image (runAsUser in the tests).
DEBIAN_IMAGE_USER=worker
DEBIAN_IMAGE_UID=1000

ENV_FILE=$RUN_DIR/env
WRAPPER_DIR=$RUN_DIR/bin

CRIU_VERSION=4.1.1
CRIU_TARBALL=criu_${CRIU_VERSION}.orig.tar.xz
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_MIN=4.1
CRIU_INSTALL=/usr/local/sbin/criu

# Environment of the daemons we start: nothing from the caller leaks in.
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The install list. CI proves it complete (`testbed.sh verify-packages`, see
# docs/testing.md): CRIU is built in a debootstrap minbase root that gets only
# CRIU_BUILD_PACKAGES, the Rust workspace is checked there with
# RUST_BUILD_PACKAGES added, and every command in HOST_COMMANDS must belong to
# a package of PACKAGES or of minbase.
# CRIU's build (libprotobuf-dev: its Makefile copies descriptor.proto from it).
CRIU_BUILD_PACKAGES="gcc make pkg-config patch xz-utils
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler python3-protobuf libnl-3-dev libnet1-dev
  libcap-dev libgnutls28-dev libbsd-dev libnftables-dev uuid-dev"
# What the built criu binary links against (its DT_NEEDED libraries' packages,
# checked after every build by criu_runtime_check): kept on the host.
CRIU_RUNTIME_PACKAGES="libc6 libbsd0 libgnutls30 libnftables1 libprotobuf-c1 libnl-3-200 libnet1 libuuid1"
# The Rust workspace's system needs: protoc (crates/proto/build.rs), a C compiler and
# libc headers (ring and zstd-sys build scripts; rustc links with cc).
RUST_BUILD_PACKAGES="protobuf-compiler gcc libc6-dev"

# bookworm packages the test bed needs (prometheus for its promtool, which checks the
# scraped metrics in e2e/tests/metrics.rs; systemd for systemd-analyze and
# systemd-socket-activate, shellcheck for the node scripts: e2e/tests/install.rs,
# crates/daemon/tests/systemd.rs; debootstrap for the minbase root CRIU is built in).
PACKAGES="containerd runc containernetworking-plugins iptables busybox-static
  docker-registry protobuf-compiler curl python3 ca-certificates openssl iproute2 patch prometheus
  util-linux xz-utils gcc make pkg-config
  systemd shellcheck python3-venv
  debootstrap $CRIU_BUILD_PACKAGES $CRIU_RUNTIME_PACKAGES $RUST_BUILD_PACKAGES"

# Commands the scripts and tests run on the host, checked by verify-packages to
# come from a package of PACKAGES or of minbase (not from a by-hand install).
HOST_COMMANDS="apt-get dpkg dpkg-query dpkg-deb debootstrap chroot mount umount flock setsid
  start-stop-daemon timeout sha256sum tar xz patch make gcc cc pkg-config protoc
  containerd ctr containerd-shim-runc-v2 runc iptables iptables-restore ip
  docker-registry busybox curl openssl python3 promtool systemd-analyze
  systemd-socket-activate shellcheck du find"
# Files (not on PATH) the test bed relies on, with the same check.
HOST_FILES="/usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback /usr/lib/cni/portmap
  /usr/share/keyrings/debian-archive-keyring.gpg"

# --- Helpers -----------------------------------------------------------------
log() { printf '[testbed] %s\n' "$*" >&2; }
warn() { printf '[testbed] warning: %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,16p' "$SELF" | sed 's/^# \{0,1\}//' >&2
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
# patches/README.md), built in the minbase root below from CRIU_BUILD_PACKAGES.
# A stamp records which source, patches and package lists the installed binary
# was built from, so a changed patch set or list rebuilds it.
criu_stamp() {
  {
    echo "$CRIU_SHA256"
    cat "$TESTBED_DIR"/patches/criu-"$CRIU_VERSION"-*.patch 2>/dev/null
    echo "built in a $MINBASE_SUITE minbase root with:"
    # shellcheck disable=SC2086 # word lists on purpose
    word_list $CRIU_BUILD_PACKAGES
    echo "runtime:"
    # shellcheck disable=SC2086
    word_list $CRIU_RUNTIME_PACKAGES
  } | sha256sum | cut -d' ' -f1
}

ensure_criu() {
  local version stamp_file=/usr/local/share/lazarus-testbed/criu.stamp want built=$CACHE_DIR/criu/built
  want=$(criu_stamp)
  if [ -x "$CRIU_INSTALL" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ]; then
    CRIU_BIN=$CRIU_INSTALL
    log "criu: $CRIU_BIN is $(criu_version_of "$CRIU_BIN") (patched build)"
    check_criu
    return 0
  fi
  # verify-packages leaves the binary it built; otherwise build it now.
  if ! [ -x "$built/criu" ] || [ "$(cat "$built/criu.stamp" 2>/dev/null)" != "$want" ]; then
    build_in_minbase criu
  fi
  install -m 0755 "$built/criu" "$CRIU_INSTALL.new"
  mv -f "$CRIU_INSTALL.new" "$CRIU_INSTALL"
  CRIU_BIN=$CRIU_INSTALL
  version=$(criu_version_of "$CRIU_BIN")
  version_ge "${version:-0}" "$CRIU_MIN" || die "$CRIU_BIN reports version '${version}'"
  mkdir -p "$(dirname "$stamp_file")"
  echo "$want" >"$stamp_file"
  log "criu: installed $CRIU_BIN ($version, patched, built in a minbase root)"
  check_criu
}

# --- The minbase root: CRIU's build, and the proof of the install list ---------
# A debootstrap --variant=minbase root, cached (it depends only on the suite, the
# mirror and debootstrap's version) and never written after it is made: every
# build runs in a fresh overlay on it that gets only the listed packages, so a
# package the host has by accident cannot make a build pass. Debian's .debs and
# package lists are cached beside it. One build at a time (MINBASE_LOCK).
MINBASE_SUITE=bookworm
MINBASE_DIR=$CACHE_DIR/minbase
MINBASE_LOCK=$MINBASE_DIR/lock
MINBASE_LOG=$LOG_DIR/minbase.log
MINBASE_ROOT=""
BUILD_DIR=""

# The words of $*, sorted and without duplicates, one a line.
word_list() {
  printf '%s\n' "$@" | sed '/^$/d' | sort -u
}

minbase_key() {
  {
    echo "$MINBASE_SUITE minbase"
    debian_mirror
    dpkg-query -W -f='${Version}\n' debootstrap
  } | sha256sum | cut -c1-16
}

# Sets MINBASE_ROOT to the cached root, made first if needed (the caller holds
# MINBASE_LOCK). $MINBASE_ROOT.packages lists the packages minbase has.
ensure_minbase_root() {
  local mirror start old
  command -v debootstrap >/dev/null ||
    die "debootstrap is not installed (it is in PACKAGES: '$SELF up' installs it)"
  MINBASE_ROOT=$MINBASE_DIR/root-$(minbase_key)
  if [ -f "$MINBASE_ROOT.ok" ] && [ -d "$MINBASE_ROOT" ]; then
    log "minbase: cached root $MINBASE_ROOT"
    return 0
  fi
  for old in "$MINBASE_DIR"/root-*; do
    [ -e "$old" ] || continue
    case "$old" in "$MINBASE_ROOT" | "$MINBASE_ROOT".*) ;; *) rm -rf --one-file-system "$old" ;; esac
  done
  rm -rf --one-file-system "$MINBASE_ROOT" "$MINBASE_ROOT.packages"
  mirror=$(debian_mirror)
  start=$(date +%s)
  log "minbase: debootstrap --variant=minbase $MINBASE_SUITE from $mirror (log: $MINBASE_LOG)"
  debootstrap --variant=minbase "$MINBASE_SUITE" "$MINBASE_ROOT" "$mirror" >>"$MINBASE_LOG" 2>&1 ||
    die "debootstrap --variant=minbase $MINBASE_SUITE failed; see $MINBASE_LOG"
  # shellcheck disable=SC2016 # dpkg-query's format, not the shell's
  chroot "$MINBASE_ROOT" dpkg-query -W -f='${Package}\n' | sort -u >"$MINBASE_ROOT.packages"
  touch "$MINBASE_ROOT.ok"
  log "minbase: root made in $(($(date +%s) - start))s ($(wc -l <"$MINBASE_ROOT.packages") packages)"
}

# Mount points at or below $1, deepest first.
mounts_below() {
  awk -v dir="$1" 'index($5, dir "/") == 1 || $5 == dir { print $5 }' /proc/self/mountinfo | sort -r
}

# Runs "$@" in the build root with a clean environment (NAME=VALUE words first
# add to it or override it).
in_root() {
  chroot "$BUILD_DIR/root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive "$@"
}

# A fresh overlay on the minbase root at $BUILD_DIR/root, with /proc (apt's
# maintainer scripts, rustc) and the apt caches mounted; build_root_down undoes
# it, also on any exit (trap).
build_root_up() {
  local root mirror
  mkdir -p "$MINBASE_DIR/apt-archives/partial" "$MINBASE_DIR/apt-lists/partial"
  BUILD_DIR=$(mktemp -d "$MINBASE_DIR/build.XXXXXX")
  trap 'build_root_down' EXIT
  trap 'exit 130' INT TERM HUP
  root=$BUILD_DIR/root
  mkdir -p "$BUILD_DIR/upper" "$BUILD_DIR/work" "$root"
  mount -t overlay overlay \
    -o "lowerdir=$MINBASE_ROOT,upperdir=$BUILD_DIR/upper,workdir=$BUILD_DIR/work" "$root" ||
    die "cannot mount an overlay on $MINBASE_ROOT"
  mount -t proc proc "$root/proc"
  mount --bind "$MINBASE_DIR/apt-archives" "$root/var/cache/apt/archives"
  mount --bind "$MINBASE_DIR/apt-lists" "$root/var/lib/apt/lists"
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  mirror=$(debian_mirror)
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$MINBASE_SUITE" "$mirror" "$MINBASE_SUITE" \
    >"$root/etc/apt/sources.list"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  in_root apt-get -o DPkg::Lock::Timeout=600 -q update >>"$MINBASE_LOG" 2>&1 ||
    die "apt-get update in the minbase root failed; see $MINBASE_LOG"
}

build_root_down() {
  [ -n "$BUILD_DIR" ] || return 0
  local mp
  while read -r mp; do
    [ -n "$mp" ] || continue
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || warn "cannot unmount $mp"
  done <<MOUNTS
$(mounts_below "$BUILD_DIR")
MOUNTS
  if [ -z "$(mounts_below "$BUILD_DIR")" ]; then
    rm -rf --one-file-system "$BUILD_DIR"
  else
    warn "still mounted below $BUILD_DIR; left in place"
  fi
  BUILD_DIR=""
  trap - EXIT INT TERM HUP
}

# Installs the packages of list $1 (a variable name) into the build root, as
# the host gets them (no recommends).
build_root_install() {
  local name=$1 list
  # shellcheck disable=SC2086 # a word list on purpose
  list=$(word_list ${!name})
  log "minbase: installing $name: $(echo "$list" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # a word list on purpose
  in_root apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends install $list \
    >>"$MINBASE_LOG" 2>&1 || die "installing $name into the minbase root failed; see $MINBASE_LOG"
}

# The packages owning path $2 (under any name a usr-merged system knows it
# by), one a line, asked with "$1 dpkg -S" ($1: "" for the host, in_root for
# the build root).
path_owners() {
  local runner=$1 p=$2 variant twin
  case "$p" in /usr/*) twin=${p#/usr} ;; *) twin=/usr$p ;; esac
  for variant in "$p" "$twin"; do
    $runner dpkg -S "$variant" 2>/dev/null |
      awk -F': ' '!/^diversion/ { n = split($1, a, ", "); for (i = 1; i <= n; i++) { sub(/:.*/, "", a[i]); print a[i] } }' ||
      true # dpkg -S fails for the names it does not know
  done | sort -u
}

# True when a word of list $1 is a line of list $2.
any_in() {
  local word
  for word in $1; do
    grep -qxF -- "$word" <<<"$2" && return 0
  done
  return 1
}

# Every library the built criu needs (DT_NEEDED) must come from a package in
# CRIU_RUNTIME_PACKAGES or minbase: those are what the host keeps to run it.
criu_runtime_check() {
  local bin=$1 libs lib path owners allowed missing=""
  # shellcheck disable=SC2086 # word lists on purpose
  allowed=$( { word_list $CRIU_RUNTIME_PACKAGES; cat "$MINBASE_ROOT.packages"; } | sort -u)
  libs=$(in_root readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
  [ -n "$libs" ] || die "readelf found no libraries in $bin (is it dynamic?)"
  for lib in $libs; do
    # "libx.so.1 => /lib/…/libx.so.1 (…)", or "/lib64/ld-linux-x86-64.so.2 (…)" for the loader.
    path=$(in_root ldd "$bin" | awk -v lib="$lib" '
      $1 == lib && $2 == "=>" { print $3; exit }
      substr($1, length($1) - length(lib)) == "/" lib { print $1; exit }')
    [ -n "$path" ] || { missing="$missing $lib (not found by ldd)"; continue; }
    owners=$(path_owners in_root "$(in_root readlink -f "$path")")
    [ -n "$owners" ] || owners=$(path_owners in_root "$path")
    any_in "$owners" "$allowed" || missing="$missing $lib (from ${owners:-no package})"
  done
  [ -z "$missing" ] ||
    die "criu needs libraries from packages not in CRIU_RUNTIME_PACKAGES:$missing; add them in $SELF"
  log "minbase: criu's libraries ($(echo "$libs" | tr '\n' ' ')) come from CRIU_RUNTIME_PACKAGES or minbase"
}

# The lines of CRIU's build log $1, after its line $2, that say what is missing.
criu_build_errors() {
  # (CRIU's Makefile asks git for a version and falls back without it.)
  tail -n "+$(($2 + 1))" "$1" |
    grep -E 'No rule to make target|fatal error|error:|not found|No such file|was not found' |
    grep -v 'git: No such file' | awk '!seen[$0]++' | tail -4 | sed 's/^/  /'
}

# Builds CRIU in a fresh overlay of the minbase root holding nothing but
# CRIU_BUILD_PACKAGES and leaves it, with its stamp, in $CACHE_DIR/criu/built.
# With "rust" as $1 (verify-packages) it then adds RUST_BUILD_PACKAGES and
# runs `cargo check` of the whole workspace there.
build_in_minbase() {
  local what=$1 root src built=$CACHE_DIR/criu/built start log_file=$LOG_DIR/criu-build.log patch lines
  fetch_criu_tarball
  mkdir -p "$MINBASE_DIR"
  exec 8>"$MINBASE_LOCK"
  flock -w 3600 8 || die "another build holds $MINBASE_LOCK for more than an hour"
  start=$(date +%s)
  ensure_minbase_root
  build_root_up
  root=$BUILD_DIR/root
  build_root_install CRIU_BUILD_PACKAGES
  src=/build/criu-$CRIU_VERSION
  mkdir -p "$root/build"
  tar -C "$root/build" -xJf "$CACHE_DIR/criu/$CRIU_TARBALL"
  [ -d "$root$src" ] || die "$CRIU_TARBALL did not unpack into $src"
  for patch in "$TESTBED_DIR"/patches/criu-"$CRIU_VERSION"-*.patch; do
    [ -f "$patch" ] || continue
    log "criu: applying $(basename "$patch")"
    patch -d "$root$src" -p1 --quiet <"$patch" || die "applying $patch to CRIU $CRIU_VERSION failed"
  done
  log "criu: building $CRIU_VERSION in the minbase root (log: $log_file)"
  printf '=== %s testbed.sh: make criu in a minbase root with CRIU_BUILD_PACKAGES\n' "$(date -Is)" >>"$log_file"
  lines=$(wc -l <"$log_file")
  if ! in_root make -C "$src" -j"$(nproc)" criu >>"$log_file" 2>&1; then
    printf '[testbed] error: building CRIU in a minbase root with only CRIU_BUILD_PACKAGES failed:\n' >&2
    criu_build_errors "$log_file" "$lines" >&2
    die "a build dependency is missing from CRIU_BUILD_PACKAGES in $SELF (this host may have it installed by hand, a fresh machine does not); see $log_file"
  fi
  criu_runtime_check "$src/criu/criu"
  mkdir -p "$built"
  install -m 0755 "$root$src/criu/criu" "$built/criu.new"
  mv -f "$built/criu.new" "$built/criu"
  criu_stamp >"$built/criu.stamp"
  log "criu: built in the minbase root in $(($(date +%s) - start))s"
  if [ "$what" = rust ]; then
    rust_workspace_check
  fi
  build_root_down
  exec 8>&-
}

# `cargo check` of the whole workspace (every build script runs: protoc for
# crates/proto/, cc for ring and zstd-sys, and links) in the build root after
# RUST_BUILD_PACKAGES are added, with the host's Rust toolchain and crate cache
# mounted in.
rust_workspace_check() {
  local root=$BUILD_DIR/root repo sysroot cargo_home start rustc lines
  repo=$(cd "$TESTBED_DIR/../.." && pwd)
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  # This script's PATH is the system's: rustup's toolchain is in CARGO_HOME.
  rustc=${RUSTC:-$(command -v rustc || echo "$cargo_home/bin/rustc")}
  [ -x "$rustc" ] ||
    die "rustc not found (PATH, $cargo_home/bin): the Rust workspace check needs a Rust toolchain >= 1.88, e.g. from https://rustup.rs"
  sysroot=$("$rustc" --print sysroot) || die "$rustc --print sysroot failed"
  [ -x "$sysroot/bin/cargo" ] || die "no cargo in the toolchain $sysroot"
  # Crates come from the host's cache: fetched here, read offline in the root.
  (cd "$repo" && PATH=$sysroot/bin:$PATH cargo fetch --locked --quiet) || die "cargo fetch in $repo failed"
  build_root_install RUST_BUILD_PACKAGES
  mkdir -p "$root/toolchain" "$root/src" "$root/cargo-home/registry" "$root/target"
  mount --bind "$sysroot" "$root/toolchain"
  mount -o remount,bind,ro "$root/toolchain"
  mount --bind "$repo" "$root/src"
  mount -o remount,bind,ro "$root/src"
  mount --bind "$cargo_home/registry" "$root/cargo-home/registry"
  start=$(date +%s)
  log "rust: cargo check --workspace --all-targets in the minbase root (log: $MINBASE_LOG)"
  printf '=== %s testbed.sh: cargo check in a minbase root with CRIU_BUILD_PACKAGES and RUST_BUILD_PACKAGES\n' \
    "$(date -Is)" >>"$MINBASE_LOG"
  lines=$(wc -l <"$MINBASE_LOG")
  if ! in_root PATH=/toolchain/bin:/usr/bin:/bin CARGO_HOME=/cargo-home CARGO_TARGET_DIR=/target \
    CARGO_TERM_COLOR=never sh -c 'cd /src && cargo check --workspace --all-targets --locked --offline' \
    >>"$MINBASE_LOG" 2>&1; then
    tail -n "+$((lines + 1))" "$MINBASE_LOG" | grep -E '^error|failed to run custom build|Could not find|not found' |
      tail -5 | sed 's/^/  /' >&2
    die "the Rust workspace does not build in a minbase root with CRIU_BUILD_PACKAGES and RUST_BUILD_PACKAGES: a package is missing from RUST_BUILD_PACKAGES in $SELF; see $MINBASE_LOG"
  fi
  log "rust: the workspace builds from the listed packages ($(($(date +%s) - start))s)"
}

# The packages of $1 (a word list) and everything they depend on, one a
# line: Pre-Depends and Depends, recursively, as the host's dpkg records them;
# of alternatives ("a | b") only the first, the one apt picks on a fresh machine.
depends_closure() {
  # shellcheck disable=SC2016 # dpkg-query's format, not the shell's
  dpkg-query -W -f='${Package}\t${Pre-Depends}, ${Depends}\n' | awk -F'\t' -v roots="$1" '
    { deps[$1] = $2 }
    END {
      n = split(roots, queue, " ")
      for (i = 1; i <= n; i++) seen[queue[i]] = 1
      for (head = 1; head <= n; head++) {
        m = split(deps[queue[head]], dep, ",")
        for (j = 1; j <= m; j++) {
          name = dep[j]
          sub(/\|.*/, "", name); sub(/\(.*/, "", name); gsub(/[ \t]/, "", name); sub(/:.*/, "", name)
          if (name != "" && !(name in seen)) { seen[name] = 1; queue[++n] = name }
        }
      }
      for (name in seen) print name
    }' | sort -u
}

# Every command in HOST_COMMANDS and file in HOST_FILES must be owned by a
# package of PACKAGES or minbase or one they depend on, somewhere along its
# symlink chain: a tool installed by hand, or present by chance, fails here.
check_host_commands() {
  local allowed cmd path hop owners bad="" n=0 target
  allowed=$(depends_closure "$PACKAGES $(cat "$MINBASE_ROOT.packages")")
  for cmd in $HOST_COMMANDS $HOST_FILES; do
    n=$((n + 1))
    case "$cmd" in
      /*) path=$cmd; [ -e "$path" ] || { bad="$bad $cmd (missing)"; continue; } ;;
      *) path=$(command -v "$cmd") || { bad="$bad $cmd (not on PATH)"; continue; } ;;
    esac
    owners=""
    hop=$path
    for _ in 1 2 3 4 5 6 7 8; do
      owners="$owners $(path_owners "" "$hop" | tr '\n' ' ')"
      [ -L "$hop" ] || break
      target=$(readlink "$hop")
      case "$target" in /*) hop=$target ;; *) hop=$(dirname "$hop")/$target ;; esac
    done
    # shellcheck disable=SC2086 # a word list on purpose
    owners=$(word_list $owners | tr '\n' ' ')
    any_in "$owners" "$allowed" || bad="$bad $cmd ($path from ${owners:-no package})"
  done
  [ -z "$bad" ] ||
    die "not from a package in PACKAGES or minbase:$bad; add the package to PACKAGES in $SELF"
  log "host: $n commands and files all come from PACKAGES or minbase"
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

# --- The Debian workload image ---------------------------------------------------
# The cache key: what the image is built from and how. The package versions are
# whatever the mirror serves at build time; a new minbase root (new mirror or
# debootstrap) or a changed list or step rebuilds it.
debian_image_key() {
  {
    echo "$MINBASE_SUITE"
    minbase_key
    # shellcheck disable=SC2086 # a word list on purpose
    word_list $DEBIAN_IMAGE_PACKAGES
    echo "$DEBIAN_IMAGE_USER $DEBIAN_IMAGE_UID"
    declare -f debian_image_prepare build_debian_image
    cat "$TESTBED_DIR/pack-rootfs.py" "$TESTBED_DIR/build-images.py"
  } | sha256sum | cut -c1-16
}

# The newest Date of the suite's release files apt used for the build: no file
# Debian's packages ship is newer, so it is the layer's clamp for the files the
# build itself wrote (pack-rootfs.py --epoch).
debian_image_epoch() {
  local f date newest=0 t
  for f in "$MINBASE_DIR/apt-lists/"*"_dists_${MINBASE_SUITE}"*_InRelease; do
    [ -f "$f" ] || continue
    date=$(sed -n 's/^Date: //p' "$f" | head -1)
    t=$(date -d "$date" +%s) || continue
    [ "$t" -gt "$newest" ] && newest=$t
  done
  [ "$newest" -gt 0 ] || die "no Date in the $MINBASE_SUITE release files of $MINBASE_DIR/apt-lists"
  echo "$newest"
}

# The packed tree loses what differs between two builds of the same packages
# or what no image should carry: backup account files, logs, generated keys,
# caches (build_debian_image drops apt's lists and Debian's default PostgreSQL
# cluster: the tests run initdb themselves).
debian_image_prepare() {
  local root=$1
  # The last-change day of every account: the day of the build otherwise.
  sed -i -E 's/^([^:]*:[^:]*:)[0-9]*:/\1:/' "$root/etc/shadow"
  rm -f "$root"/etc/{passwd,group,shadow,gshadow,subuid,subgid}- "$root/usr/sbin/policy-rc.d" \
    "$root/etc/ssl/private/ssl-cert-snakeoil.key" "$root/etc/ssl/certs/ssl-cert-snakeoil.pem" \
    "$root/var/cache/ldconfig/aux-cache" "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  find "$root/etc/ssl/certs" -xtype l -delete 2>/dev/null || true
  find "$root/var/log" -type f -delete
  echo localhost >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
}

# Builds the image into $2 (a layout tar; its manifest digest in $2.digest) in
# a fresh overlay of the minbase root that gets only DEBIAN_IMAGE_PACKAGES.
build_debian_image() {
  local ref=$1 out=$2 root start digest epoch mp
  mkdir -p "$MINBASE_DIR" "$(dirname "$out")"
  exec 8>"$MINBASE_LOCK"
  flock -w 3600 8 || die "another build holds $MINBASE_LOCK for more than an hour"
  start=$(date +%s)
  ensure_minbase_root
  build_root_up
  root=$BUILD_DIR/root
  build_root_install DEBIAN_IMAGE_PACKAGES
  in_root useradd --uid "$DEBIAN_IMAGE_UID" --user-group --create-home --shell /bin/sh "$DEBIAN_IMAGE_USER" \
    >>"$MINBASE_LOG" 2>&1 || die "useradd $DEBIAN_IMAGE_USER in the image root failed; see $MINBASE_LOG"
  if in_root test -d /etc/postgresql/15/main; then
    in_root pg_dropcluster 15 main >>"$MINBASE_LOG" 2>&1 || die "pg_dropcluster 15 main failed; see $MINBASE_LOG"
  fi
  # Packed without what build_root_up mounted: the apt caches and /proc.
  for mp in var/cache/apt/archives var/lib/apt/lists proc; do
    umount "$root/$mp" || die "cannot unmount $root/$mp"
  done
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin "${root:?}"/var/cache/apt/archives/*.deb
  debian_image_prepare "$root"
  epoch=$(debian_image_epoch)
  log "debian image: packing $(du -sxh "$root" | cut -f1) (files clamped to $(date -u -d "@$epoch" +%FT%TZ))"
  digest=$(/usr/bin/python3 "$TESTBED_DIR/pack-rootfs.py" --root "$root" --out "$out.new" --ref "$ref" \
    --epoch "$epoch" 2>>"$MINBASE_LOG") || die "packing the Debian image failed; see $MINBASE_LOG"
  build_root_down
  exec 8>&-
  mv -f "$out.new" "$out"
  echo "$digest" >"$out.digest"
  log "debian image: built $ref ($digest, $(du -h "$out" | cut -f1)) in $(($(date +%s) - start))s"
}

# Sets DEBIAN_IMAGE, DEBIAN_IMAGE_DIGEST, DEBIAN_IMAGE_TAR: the cached image,
# built first when its key changed (older ones are removed).
cached_debian_image() {
  local key old
  key=$(debian_image_key)
  DEBIAN_IMAGE=$DEBIAN_IMAGE_NAME:bookworm-$key
  DEBIAN_IMAGE_TAR=$DEBIAN_IMAGE_CACHE/debian-$key-oci.tar
  if [ -f "$DEBIAN_IMAGE_TAR" ] && [ -s "$DEBIAN_IMAGE_TAR.digest" ]; then
    log "debian image: cached $DEBIAN_IMAGE_TAR"
  else
    for old in "$DEBIAN_IMAGE_CACHE"/debian-*-oci.tar*; do
      [ -e "$old" ] && rm -f "$old"
    done
    build_debian_image "$DEBIAN_IMAGE" "$DEBIAN_IMAGE_TAR"
  fi
  DEBIAN_IMAGE_DIGEST=$(cat "$DEBIAN_IMAGE_TAR.digest")
}

# The cached image (cached_debian_image), imported into containerd unless it
# is there with that digest.
ensure_debian_image() {
  local images start
  cached_debian_image
  images=$(timeout 30 "$CTR_BIN" --address "$CONTAINERD_SOCKET" -n k8s.io images ls) || die "ctr images ls failed"
  if awk -v ref="$DEBIAN_IMAGE" -v digest="$DEBIAN_IMAGE_DIGEST" '$1 == ref && $3 == digest { found = 1 } END { exit !found }' \
    <<<"$images"; then
    log "debian image: $DEBIAN_IMAGE in containerd"
    return 0
  fi
  start=$(date +%s)
  timeout 600 "$CTR_BIN" --address "$CONTAINERD_SOCKET" -n k8s.io images import "$DEBIAN_IMAGE_TAR" >/dev/null ||
    die "ctr images import $DEBIAN_IMAGE_TAR failed"
  log "debian image: imported $DEBIAN_IMAGE ($DEBIAN_IMAGE_DIGEST) in $(($(date +%s) - start))s"
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
    "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
    "DEBIAN_IMAGE_DIGEST=$DEBIAN_IMAGE_DIGEST" \
    "DEBIAN_IMAGE_TAR=$DEBIAN_IMAGE_TAR" \
    "DEBIAN_IMAGE_USER=$DEBIAN_IMAGE_USER" \
    "DEBIAN_IMAGE_UID=$DEBIAN_IMAGE_UID" \
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
  # Both flavours' binaries, whichever one runs: the install test checks the
  # containerd config snippets with 1.6's and 2.1's own `config dump` (a fresh
  # machine that had only ever run `up --containerd 1.6` failed it).
  ensure_containerd21
  ensure_containerd
  ensure_registry
  build_and_publish_images
  ensure_debian_image
  ensure_python_grpc
  write_wrappers
  write_env_file
  log "up: containerd $FLAVOR ready in $(($(date +%s) - start))s; env file $ENV_FILE"
}

# Builds the Debian workload image into the cache (what `up` would), without
# touching containerd: the slow part of a first `up`, done beforehand.
cmd_debian_image() {
  mkdir -p "$CACHE_DIR" "$LOG_DIR"
  cached_debian_image
  log "debian image: $DEBIAN_IMAGE $DEBIAN_IMAGE_DIGEST $DEBIAN_IMAGE_TAR"
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

# CI's proof that the install list is complete (docs/testing.md): the host
# packages (under the test bed lock), then CRIU and `cargo check` of the
# workspace in a minbase root with only the listed packages, then the host's
# commands. Leaves the CRIU binary for the next `up` to install.
cmd_verify_packages() {
  local start
  start=$(date +%s)
  mkdir -p "$CACHE_DIR" "$LOG_DIR"
  (take_lock && install_packages) || exit 1
  build_in_minbase rust
  check_host_commands
  log "verify-packages: the install list is complete ($(($(date +%s) - start))s)"
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
    verify-packages) need_root; [ $# -eq 0 ] || usage; cmd_verify_packages ;;
    debian-image) need_root; [ $# -eq 0 ] || usage; cmd_debian_image ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
