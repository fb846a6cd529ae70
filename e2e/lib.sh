# shellcheck shell=bash
# Shared helpers of the demo and test scripts (sourced).
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# The Rust version the workspace needs (Cargo.toml's rust-version).
RUST_MIN=1.88
require_root() {
    [ "$(id -u)" = 0 ] || die "run as root, e.g. 'sudo bash $0': the test bed installs packages with apt and starts its own containerd, CNI and registry (docs/testing.md)"
}
# A fresh machine is Debian 12 with apt; anything else may work but is untested.
require_debian() {
    command -v apt-get >/dev/null ||
        die "apt-get not found: the test bed installs its packages with apt on Debian 12 (bookworm); see docs/testing.md"
    if ! grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
        printf 'warning: this is not Debian 12 (bookworm): the test bed is made and tested for it only\n' >&2
    fi
}
rust_hint() {
    printf '%s' "install one as root with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy; then '. \"\$HOME/.cargo/env\"' (or open a new shell) and run $0 again"
}
require_cargo() {
    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "cargo not found: lazarus needs a Rust toolchain >= $RUST_MIN; $(rust_hint)"
    local version
    version=$(rustc --version 2>/dev/null | awk '{ print $2 }')
    [ -n "$version" ] || die "rustc not found next to cargo ($(command -v cargo)); $(rust_hint)"
    if [ "$(printf '%s\n%s\n' "$RUST_MIN" "${version%%-*}" | sort -V | head -1)" != "$RUST_MIN" ]; then
        die "rustc $version is older than $RUST_MIN, which the workspace needs: 'rustup update stable', or $(rust_hint)"
    fi
}
# run-tests.sh also runs cargo fmt and cargo clippy.
require_rust_lints() {
    local component
    for component in fmt clippy; do
        cargo "$component" --version >/dev/null 2>&1 ||
            die "cargo $component not found: 'rustup component add rustfmt clippy' (run-tests.sh checks formatting and lints)"
    done
}
