#!/usr/bin/env bash
# Installs lazarus on a node as a systemd service, or removes it again.
#
# Usage: install.sh [options]
#   --root DIR                install below DIR instead of / (images, tests); never calls systemctl
#   --prefix DIR              binaries go to DIR/bin (default /usr/local); the units follow
#   --bin-dir DIR             where the built lazarus and lazarus-runc are
#                             (default: target/release of this repository)
#   --keep-debug              also install the binaries' debug info, split off, as
#                             /usr/lib/debug<bin dir>/NAME.debug (gdb finds it)
#   --no-kubelet              do not install the kubelet drop-in
#   --edit-containerd-config  add the `lazarus` runtime handler to containerd's main
#                             config (between marker lines) if it has none
#   --no-start                do not start, stop or restart any service
#   --uninstall               remove what install put in place
#   --purge                   with --uninstall: also /etc/lazarus and /var/lib/lazarus
#                             (every local checkpoint!)
#   -h, --help
#
# The binaries are installed stripped of their debug info (objcopy, from
# binutils), symbols kept. Safe to run again: unchanged files are left alone and a second run says
# "nothing changed". An existing /etc/lazarus/config.toml is never replaced.
# Running it again with new binaries is the upgrade: lazarus.service restarts,
# lazarus.socket (what kubelet connects to) stays. See docs/install.md.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SELF_DIR/.." && pwd)

ROOT=/
PREFIX=/usr/local
BIN_DIR=$REPO_DIR/target/release
KUBELET=1
KEEP_DEBUG=0
EDIT_CONTAINERD=0
START=1
UNINSTALL=0
PURGE=0

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage 2; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --prefix) [ $# -ge 2 ] || usage 2; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --bin-dir) [ $# -ge 2 ] || usage 2; BIN_DIR=$2; shift 2 ;;
    --bin-dir=*) BIN_DIR=${1#*=}; shift ;;
    --keep-debug) KEEP_DEBUG=1; shift ;;
    --no-kubelet) KUBELET=0; shift ;;
    --edit-containerd-config) EDIT_CONTAINERD=1; shift ;;
    --no-start) START=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'install.sh: unknown argument %s\n\n' "$1" >&2; usage 2 ;;
  esac
done

case "$ROOT" in /*) ;; *) die "--root must be an absolute path: $ROOT" ;; esac
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path: $PREFIX" ;; esac
[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge only goes with --uninstall"
ROOT=${ROOT%/}     # "" for /
PREFIX=${PREFIX%/}
[ -n "$ROOT" ] && [ ! -d "$ROOT" ] && die "--root $ROOT is not a directory"
[ "$(id -u)" -eq 0 ] || [ -n "$ROOT" ] || die "run as root (or give --root)"

# Paths on the node (without ROOT).
BIN=$PREFIX/bin
SHARE=$PREFIX/share/lazarus
DEBUG_DIR=/usr/lib/debug$BIN   # where gdb looks for a debug link's file
UNIT_DIR=/etc/systemd/system
KUBELET_DROPIN=$UNIT_DIR/kubelet.service.d/10-lazarus.conf
ETC=/etc/lazarus
CONFIG=$ETC/config.toml
STATE_DIR=/var/lib/lazarus
RUN_DIR=/run/lazarus
CONTAINERD_CONFIG=/etc/containerd/config.toml
CONTAINERD_DROPIN_DIR=/etc/containerd/conf.d
CONTAINERD_DROPIN=$CONTAINERD_DROPIN_DIR/lazarus.toml
MARK_BEGIN='# BEGIN lazarus runtime handler (systemd/install.sh)'
MARK_END='# END lazarus runtime handler (systemd/install.sh)'

CHANGED=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# systemctl only on the live system with systemd as init.
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# install_file SRC DEST MODE: DEST (a node path) gets SRC's content and MODE;
# atomically (rename), and only if something differs.
install_file() {
  local src=$1 dest=$ROOT$2 mode=$3 tmp what=updated
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return 0
  fi
  [ -e "$dest" ] || what=installed
  mkdir -p "$(dirname "$dest")"
  tmp="$(dirname "$dest")/.$(basename "$dest").lazarus-tmp.$$"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  say "  $what $2"
  CHANGED=$((CHANGED + 1))
}

# remove_file DEST: removes a node path if it exists.
remove_file() {
  local dest=$ROOT$1
  if [ -e "$dest" ] || [ -L "$dest" ]; then
    rm -f "$dest"
    say "  removed $1"
    CHANGED=$((CHANGED + 1))
  fi
}

# Removes directory $1 (a node path) if it is empty.
remove_empty_dir() {
  local dir=$ROOT$1
  if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
    rmdir "$dir"
    say "  removed $1/"
  fi
}

# strip_binary NAME: $TMP/NAME is $BIN_DIR/NAME without its debug info (symbols
# kept, for backtraces and perf) and with a debug link to NAME.debug, and
# $TMP/NAME.debug holds the debug info. objcopy's output is deterministic,
# so an unchanged binary installs as "nothing changed".
strip_binary() {
  local name=$1
  command -v objcopy >/dev/null ||
    die "objcopy not found: install.sh installs the binaries without their debug info; install binutils"
  objcopy --only-keep-debug "$BIN_DIR/$name" "$TMP/$name.debug" ||
    die "objcopy --only-keep-debug $BIN_DIR/$name failed"
  chmod 0644 "$TMP/$name.debug"
  (cd "$TMP" && objcopy --strip-debug --add-gnu-debuglink="$name.debug" "$BIN_DIR/$name" "$TMP/$name") ||
    die "objcopy --strip-debug $BIN_DIR/$name failed"
}

# Our files with /usr/local/bin replaced by the chosen prefix.
render() {
  sed "s|/usr/local/bin/|$BIN/|g" "$SELF_DIR/$1" >"$TMP/$1"
  printf '%s' "$TMP/$1"
}

# --- containerd ----------------------------------------------------------------
# The main config's `version` (2 or 3), or "" when it has none / does not exist.
containerd_config_version() {
  local file=$ROOT$CONTAINERD_CONFIG
  [ -f "$file" ] || return 0
  sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9]\).*/\1/p' "$file" | head -1
}

# containerd's major version on the live node, or "".
containerd_major() {
  [ -z "$ROOT" ] && command -v containerd >/dev/null || return 0
  containerd --version 2>/dev/null | sed -n 's/.* v\{0,1\}\([0-9][0-9]*\)\.[0-9].*/\1/p' | head -1
}

containerd_minor() {
  [ -z "$ROOT" ] && command -v containerd >/dev/null || return 0
  containerd --version 2>/dev/null | sed -n 's/.* v\{0,1\}[0-9][0-9]*\.\([0-9][0-9]*\).*/\1/p' | head -1
}

# Whether the main config imports /etc/containerd/conf.d/*.toml (the array may span lines).
containerd_imports_confd() {
  local file=$ROOT$CONTAINERD_CONFIG
  [ -f "$file" ] || return 1
  awk '
    /^[[:space:]]*imports[[:space:]]*=/ { on = 1 }
    on { text = text $0 " " }
    on && /\]/ { on = 0 }
    END { exit !(text ~ /\/etc\/containerd\/conf\.d\/\*\.toml/) }' "$file"
}

# A `lazarus` runtime handler in $1 outside our marker block?
has_foreign_handler() {
  [ -f "$1" ] || return 1
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
    $0 == b { skip = 1; next }
    $0 == e { skip = 0; next }
    !skip && /runtimes\.("|'"'"')?lazarus("|'"'"')?\]/ { found = 1 }
    END { exit !found }' "$1"
}

# A `lazarus` runtime handler in another file of /etc/containerd/conf.d?
dropins_have_handler() {
  local f
  for f in "$ROOT$CONTAINERD_DROPIN_DIR"/*.toml; do
    [ -f "$f" ] && [ "$f" != "$ROOT$CONTAINERD_DROPIN" ] && has_foreign_handler "$f" && return 0
  done
  return 1
}

# SystemdCgroup and Root of the runc handler in the main config: "KEY = VALUE" lines.
runc_options() {
  local file=$ROOT$CONTAINERD_CONFIG
  [ -f "$file" ] || return 0
  awk '
    /^[[:space:]]*\[/ { in_runc = ($0 ~ /runtimes\.("|'"'"')?runc("|'"'"')?\.options\]/) ; next }
    in_runc && /^[[:space:]]*(SystemdCgroup|Root)[[:space:]]*=/ { sub(/^[[:space:]]*/, ""); print }' "$file"
}

# The handler snippet for config version $1, options copied from the runc
# handler (or left to containerd's defaults, like runc's, when it sets none).
render_snippet() {
  local version=$1 src out opts
  src=$(render "containerd-lazarus-v$version.toml")
  out=$TMP/handler-v$version.toml
  opts=$(runc_options)
  grep -v '^[[:space:]]*SystemdCgroup[[:space:]]*=' "$src" >"$out"
  if [ -n "$opts" ]; then
    printf '%s\n' "$opts" | sed 's/^/    /' >>"$out"
  fi
  printf '%s' "$out"
}

# The handler's tables only (for appending to a main config).
snippet_tables() {
  sed -n '/^\[plugins/,$p' "$1"
}

containerd_install() {
  local version major dropin_ok=0 snippet main=$ROOT$CONTAINERD_CONFIG
  version=$(containerd_config_version)
  major=$(containerd_major)
  if [ -z "$version" ] && [ ! -f "$main" ]; then
    # No config file: containerd runs its defaults; its version tells the syntax.
    case "$major" in 1) version=2 ;; 2) version=3 ;; esac
  fi
  # Reference copies of both snippets, with this node's paths.
  install_file "$(render containerd-lazarus-v2.toml)" "$SHARE/containerd-lazarus-v2.toml" 0644
  install_file "$(render containerd-lazarus-v3.toml)" "$SHARE/containerd-lazarus-v3.toml" 0644

  if has_foreign_handler "$main" || dropins_have_handler; then
    say "  containerd: a 'lazarus' runtime handler is configured already; left alone"
    return 0
  fi
  if [ "$version" = 3 ] && { containerd_imports_confd ||
    { [ ! -f "$main" ] && [ "$major" = 2 ] && [ "$(containerd_minor)" -ge 2 ] 2>/dev/null; }; }; then
    dropin_ok=1
  fi
  if [ "$dropin_ok" -eq 1 ]; then
    snippet=$(render_snippet 3)
    local before=$CHANGED
    install_file "$snippet" "$CONTAINERD_DROPIN" 0644
    [ "$CHANGED" -eq "$before" ] ||
      say "  containerd: restart it to load the handler: systemctl restart containerd"
    return 0
  fi
  if [ -z "$version" ]; then
    if [ -f "$main" ]; then
      say "  containerd: $CONTAINERD_CONFIG has no 'version = 2' or 'version = 3' line (config format 1?);"
      say "  convert it ('containerd config migrate' on 2.x) or add the handler by hand:"
    else
      say "  containerd: no $CONTAINERD_CONFIG and no containerd to ask; create one"
      say "  ('containerd config default > $CONTAINERD_CONFIG') and add the handler:"
    fi
    say "  $SHARE/containerd-lazarus-v2.toml (containerd 1.x) or"
    say "  $SHARE/containerd-lazarus-v3.toml (2.x); see docs/install.md"
    return 0
  fi
  if [ ! -f "$main" ]; then
    say "  containerd: no $CONTAINERD_CONFIG; create one ('containerd config default >"
    say "  $CONTAINERD_CONFIG') and add the lines below, then restart containerd:"
    say ""
    snippet_tables "$(render_snippet "$version")" | sed 's/^/    /'
    say ""
    return 0
  fi
  snippet=$(render_snippet "$version")
  if grep -qxF "$MARK_BEGIN" "$main" 2>/dev/null; then
    # Our block is there: keep it current.
    if [ "$EDIT_CONTAINERD" -eq 1 ]; then
      replace_block "$main" "$snippet"
    fi
    return 0
  fi
  if [ "$EDIT_CONTAINERD" -eq 1 ] && [ -f "$main" ]; then
    replace_block "$main" "$snippet"
    say "  containerd: restart it to load the handler: systemctl restart containerd"
    return 0
  fi
  say "  containerd: add these lines to $CONTAINERD_CONFIG (config version $version) and restart"
  say "  containerd, or run again with --edit-containerd-config:"
  say ""
  snippet_tables "$snippet" | sed 's/^/    /'
  say ""
}

# Writes $1 with our marker block (holding $2's tables) at its end, replacing
# an existing block.
replace_block() {
  local file=$1 snippet=$2 out=$TMP/containerd-config.toml
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
    $0 == b { skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$file" >"$out"
  # No blank line pile-up at the end.
  sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$out"
  {
    printf '\n%s\n' "$MARK_BEGIN"
    snippet_tables "$snippet"
    printf '%s\n' "$MARK_END"
  } >>"$out"
  if cmp -s "$out" "$file"; then
    return 0
  fi
  cat "$out" >"$file.lazarus-tmp.$$"
  chmod --reference="$file" "$file.lazarus-tmp.$$"
  mv -f "$file.lazarus-tmp.$$" "$file"
  say "  updated ${file#"$ROOT"} (lazarus runtime handler between marker lines)"
  CHANGED=$((CHANGED + 1))
}

remove_block() {
  local file=$1 out=$TMP/containerd-config.toml
  grep -qxF "$MARK_BEGIN" "$file" 2>/dev/null || return 0
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
    $0 == b { skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$file" >"$out"
  sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$out"
  cat "$out" >"$file.lazarus-tmp.$$"
  chmod --reference="$file" "$file.lazarus-tmp.$$"
  mv -f "$file.lazarus-tmp.$$" "$file"
  say "  removed the lazarus runtime handler from ${file#"$ROOT"}"
  CHANGED=$((CHANGED + 1))
}

# --- kubelet -----------------------------------------------------------------
kubelet_warnings() {
  local f
  for f in /etc/default/kubelet /etc/sysconfig/kubelet; do
    if [ -f "$ROOT$f" ] && grep -q '^[[:space:]]*KUBELET_EXTRA_ARGS=' "$ROOT$f" &&
      ! grep -q 'container-runtime-endpoint=unix:///run/lazarus/cri.sock' "$ROOT$f"; then
      warn "$f sets KUBELET_EXTRA_ARGS, which overrides the drop-in's: add" \
        "--container-runtime-endpoint=unix:///run/lazarus/cri.sock there (docs/install.md)"
    fi
  done
  # shellcheck disable=SC2016 # a literal $KUBELET_KUBEADM_ARGS in the unit
  if grep -qs 'KUBELET_EXTRA_ARGS.*\$KUBELET_KUBEADM_ARGS' "$ROOT$UNIT_DIR"/kubelet.service.d/*.conf \
    "$ROOT"/usr/lib/systemd/system/kubelet.service.d/*.conf &&
    grep -qs 'container-runtime-endpoint' "$ROOT/var/lib/kubelet/kubeadm-flags.env"; then
    warn "kubelet's ExecStart puts \$KUBELET_KUBEADM_ARGS last and kubeadm-flags.env sets" \
      "--container-runtime-endpoint: change it there (docs/install.md)"
  fi
}

# --- systemd -------------------------------------------------------------------
sctl() {
  say "  systemctl $*"
  systemctl "$@"
}

start_services() {
  local units_changed=$1 binaries_changed=$2
  if ! systemd_running; then
    if [ -n "$ROOT" ]; then
      say "systemd: skipped (installing below $ROOT, not on the live system)"
    else
      say "systemd: skipped (systemd is not running here); on the node run:"
      say "  systemctl daemon-reload && systemctl enable --now lazarus.socket lazarus.service"
    fi
    return 0
  fi
  [ "$units_changed" -eq 0 ] || sctl daemon-reload
  if ! systemctl is-enabled --quiet lazarus.socket || ! systemctl is-enabled --quiet lazarus.service; then
    sctl enable lazarus.socket lazarus.service
    CHANGED=$((CHANGED + 1))
  fi
  if [ "$START" -eq 0 ]; then
    say "systemd: not starting anything (--no-start)"
    return 0
  fi
  if ! systemctl is-active --quiet lazarus.socket; then
    sctl start lazarus.socket
  fi
  if systemctl is-active --quiet lazarus.service; then
    if [ "$units_changed" -ne 0 ] || [ "$binaries_changed" -ne 0 ]; then
      # The socket stays open: kubelet's calls wait while lazarus restarts.
      sctl restart lazarus.service
    fi
  else
    sctl start lazarus.service || true
  fi
  if ! systemctl is-active --quiet lazarus.service; then
    journalctl -u lazarus.service -n 30 --no-pager >&2 || true
    die "lazarus.service is not running (see above, and docs/troubleshooting.md)"
  fi
  say "systemd: lazarus.socket and lazarus.service are running"
}

# --- install -------------------------------------------------------------------
do_install() {
  local units_before binaries_changed units_changed
  for b in lazarus lazarus-runc; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not found: build with 'cargo build --release -p lazarus-daemon -p lazarus-runc' or give --bin-dir"
  done
  say "installing lazarus into ${ROOT:-/} (binaries in $BIN)"
  for b in lazarus lazarus-runc; do
    strip_binary "$b"
    install_file "$TMP/$b" "$BIN/$b" 0755
    if [ "$KEEP_DEBUG" -eq 1 ]; then
      install_file "$TMP/$b.debug" "$DEBUG_DIR/$b.debug" 0644
    fi
  done
  binaries_changed=$CHANGED

  units_before=$CHANGED
  install_file "$(render lazarus.service)" "$UNIT_DIR/lazarus.service" 0644
  install_file "$(render lazarus.socket)" "$UNIT_DIR/lazarus.socket" 0644
  if [ "$KUBELET" -eq 1 ]; then
    install_file "$(render kubelet-lazarus.conf)" "$KUBELET_DROPIN" 0644
  fi
  units_changed=$((CHANGED - units_before))

  if [ -e "$ROOT$CONFIG" ]; then
    cmp -s "$SELF_DIR/config.toml" "$ROOT$CONFIG" || say "  kept $CONFIG (yours; the default is $SHARE/config.toml)"
  else
    install_file "$SELF_DIR/config.toml" "$CONFIG" 0644
  fi
  install_file "$SELF_DIR/config.toml" "$SHARE/config.toml" 0644

  containerd_install
  [ "$KUBELET" -eq 0 ] || kubelet_warnings
  start_services "$units_changed" "$binaries_changed"

  if [ "$CHANGED" -eq 0 ]; then
    say "install: nothing changed (lazarus is installed as it would be)"
  else
    say "install: $CHANGED change(s)"
    if [ "$KUBELET" -eq 1 ]; then
      say "next: point kubelet at lazarus: systemctl daemon-reload && systemctl restart kubelet"
      say "      (check: crictl --runtime-endpoint unix:///run/lazarus/cri.sock ps)"
    fi
  fi
}

# --- uninstall -----------------------------------------------------------------
do_uninstall() {
  local plans f
  say "removing lazarus from ${ROOT:-/}"
  plans=$({ find "$ROOT$STATE_DIR/restore" -mindepth 1 -maxdepth 1 -type d 2>/dev/null || true; } | wc -l)
  if [ "$plans" -gt 0 ]; then
    warn "$plans restore plan(s) in $STATE_DIR/restore: restored containers run on the" \
      "'lazarus' handler and their shims call lazarus-runc to stop them; delete those pods first"
  fi
  remove_file "$KUBELET_DROPIN"
  remove_empty_dir "$UNIT_DIR/kubelet.service.d"
  if systemd_running; then
    sctl daemon-reload
    if [ "$START" -eq 1 ] && systemctl is-active --quiet kubelet.service; then
      # Back to its own endpoint before lazarus goes away.
      sctl restart kubelet.service
    fi
    if [ "$START" -eq 1 ]; then
      sctl disable --now lazarus.socket lazarus.service 2>/dev/null || true
    else
      sctl disable lazarus.socket lazarus.service 2>/dev/null || true
    fi
  fi
  remove_file "$UNIT_DIR/lazarus.service"
  remove_file "$UNIT_DIR/lazarus.socket"
  if systemd_running; then
    sctl daemon-reload
  fi
  remove_file "$BIN/lazarus"
  remove_file "$BIN/lazarus-runc"
  remove_file "$DEBUG_DIR/lazarus.debug"
  remove_file "$DEBUG_DIR/lazarus-runc.debug"
  remove_empty_dir "$DEBUG_DIR"
  local before_containerd=$CHANGED
  remove_file "$CONTAINERD_DROPIN"
  remove_block "$ROOT$CONTAINERD_CONFIG"
  [ "$CHANGED" -eq "$before_containerd" ] ||
    say "  containerd: restart it to drop the runtime handler: systemctl restart containerd"
  for f in containerd-lazarus-v2.toml containerd-lazarus-v3.toml config.toml; do
    remove_file "$SHARE/$f"
  done
  remove_empty_dir "$SHARE"
  if [ "$PURGE" -eq 1 ]; then
    for f in "$ETC" "$STATE_DIR" "$RUN_DIR"; do
      if [ -e "$ROOT$f" ]; then
        rm -rf --one-file-system "${ROOT:?}$f"
        say "  removed $f/ (--purge)"
        CHANGED=$((CHANGED + 1))
      fi
    done
  else
    if [ -f "$ROOT$CONFIG" ] && cmp -s "$SELF_DIR/config.toml" "$ROOT$CONFIG"; then
      remove_file "$CONFIG"
    elif [ -f "$ROOT$CONFIG" ]; then
      say "  kept $CONFIG (changed by you; --purge removes it)"
    fi
    remove_empty_dir "$ETC"
    [ ! -d "$ROOT$STATE_DIR" ] || say "  kept $STATE_DIR (checkpoints; --purge removes it)"
  fi
  for f in /etc/default/kubelet /etc/sysconfig/kubelet /var/lib/kubelet/kubeadm-flags.env /var/lib/kubelet/config.yaml; do
    if grep -qs '/run/lazarus/cri.sock' "$ROOT$f"; then
      warn "$f still points kubelet at /run/lazarus/cri.sock: change it back and restart kubelet"
    fi
  done
  if [ "$CHANGED" -eq 0 ]; then
    say "uninstall: nothing changed (lazarus is not installed)"
  else
    say "uninstall: $CHANGED change(s)"
  fi
}

if [ "$UNINSTALL" -eq 1 ]; then
  do_uninstall
else
  do_install
fi
