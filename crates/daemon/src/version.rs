//! `lazarus version`, and the CRIU check `lazarus serve` makes at start.
//!
//! lazarus does not run CRIU itself — runc does, for containerd — but a node
//! whose CRIU is missing or too old cannot checkpoint or restore anything, and
//! finding that out at the first checkpoint of a week-long job is too late.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lazarus_proto::v1;

use crate::config::Config;

/// The oldest CRIU lazarus starts with: Debian 12's 3.17, the oldest CRIU a
/// supported distribution ships that runc 1.1's checkpoint and restore work
/// with (`--tcp-established`, `--file-locks`, `--manage-cgroups`).
pub const CRIU_MIN: CriuVersion = CriuVersion { major: 3, minor: 17, patch: 0 };
/// Older CRIUs cannot dump on kernels ≥ 6.13 (see `docs/checkpoints.md`):
/// lazarus starts with them but warns.
pub const CRIU_RECOMMENDED: CriuVersion = CriuVersion { major: 4, minor: 1, patch: 0 };

/// A CRIU version, as `criu --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CriuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch level (`0` when not printed).
    pub patch: u32,
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses the output of `criu --version`:
///
/// ```text
/// Version: 4.1.1
/// GitID: v4.1.1
/// ```
///
/// (`Version: 3.17`, `Version: 3.19-dirty` and the like too).
pub fn parse_criu_version(output: &str) -> Option<CriuVersion> {
    let text = output.lines().find_map(|l| l.trim().strip_prefix("Version:"))?.trim();
    let mut numbers = text.split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next().flatten().unwrap_or(0);
    Some(CriuVersion { major, minor, patch })
}

/// The first executable `name` on `path` (a `PATH` value).
pub fn find_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    lazarus_format::fsutil::find_executable(name, path, |_| true)
}

/// `criu` on this process's `PATH`.
pub fn find_criu() -> Option<PathBuf> {
    find_on_path("criu", &std::env::var_os("PATH").unwrap_or_default())
}

/// Runs `criu --version`.
#[expect(
    clippy::disallowed_methods,
    reason = "called before the event loop starts (check_criu_at_start) or inside blocking::run"
)]
pub fn criu_version(criu: &Path) -> Result<CriuVersion, String> {
    let output = Command::new(criu)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", criu.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_criu_version(&stdout).ok_or_else(|| {
        format!(
            "{} --version printed no version ({}): {}",
            criu.display(),
            output.status,
            first_lines(&format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)), 3)
        )
    })
}

/// Runs `criu check`: `Ok` with what it said, `Err` with its first error lines.
#[expect(clippy::disallowed_methods, reason = "called inside blocking::run only")]
pub fn criu_check(criu: &Path) -> Result<String, String> {
    let output =
        Command::new(criu).arg("check").output().map_err(|e| format!("running {} check: {e}", criu.display()))?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(first_lines(&said, 1))
    } else {
        let errors: String = said.lines().filter(|l| l.contains("Error") || l.contains("error")).take(5).fold(
            String::new(),
            |mut out, l| {
                out.push_str("\n  ");
                out.push_str(l.trim());
                out
            },
        );
        Err(format!(
            "{}{}",
            output.status,
            if errors.is_empty() { format!("\n  {}", first_lines(&said, 5)) } else { errors }
        ))
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).take(n).collect::<Vec<_>>().join(" | ")
}

/// Something wrong with the node's CRIU, as `lazarus version` and `lazarus
/// serve` find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriuProblem {
    /// No `criu` on `PATH`.
    NotFound,
    /// Older than [`CRIU_MIN`].
    TooOld(CriuVersion),
    /// At least [`CRIU_MIN`] but older than [`CRIU_RECOMMENDED`] (a warning).
    OlderThanRecommended(CriuVersion),
    /// `criu --version` printed no version.
    NoVersion,
    /// `criu check` failed.
    CheckFailed,
}

/// Where the installation guide is (the binary may be all a node has, so the
/// repository is named too).
const INSTALL_DOCS: &str = "docs/install.md (Requirements) in the lazarus repository";
/// Where CRIU's errors are explained.
const TROUBLESHOOTING_DOCS: &str = "docs/troubleshooting.md (CRIU errors people hit)";

/// What a user should do about `problem`: lower-case, one sentence or two.
pub fn criu_hint(problem: &CriuProblem) -> String {
    let install = format!(
        "install CRIU >= {CRIU_RECOMMENDED} (Debian 12's criu package is 3.17, which fails on kernels >= 6.13; \
         see {INSTALL_DOCS} for how to get a newer one) and put it on lazarus's and containerd's PATH"
    );
    match problem {
        CriuProblem::NotFound => format!(
            "{install}; or set require_criu = false in the config to run lazarus as a plain CRI proxy \
             (checkpoints and restores then fail)"
        ),
        CriuProblem::TooOld(v) => format!("CRIU {v} is older than {CRIU_MIN}: {install}"),
        CriuProblem::OlderThanRecommended(v) => format!(
            "CRIU {v} cannot dump containers on kernels >= 6.13 (vdso: Unexpected rt vDSO area bounds): {install}; \
             see {TROUBLESHOOTING_DOCS}"
        ),
        CriuProblem::NoVersion => format!("this does not look like CRIU: {install}"),
        CriuProblem::CheckFailed => format!(
            "checkpoints and restores will fail on this node: run `criu check -v4` (as root) for the details; \
             {TROUBLESHOOTING_DOCS} lists the usual causes, {INSTALL_DOCS} what a node needs"
        ),
    }
}

/// `CAP_SYS_RESOURCE`'s bit in the capability sets (`linux/capability.h`).
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether the `CapEff:` (effective set) line of a `/proc/PID/status` text
/// holds capability `bit`; `None` when the text has no readable `CapEff:` line.
pub fn has_effective_capability(status: &str, bit: u32) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let set = u64::from_str_radix(hex, 16).ok()?;
    Some(bit < 64 && (set >> bit) & 1 == 1)
}

/// Whether this process has `CAP_SYS_RESOURCE` in its effective set (runc
/// and CRIU, its children, inherit at most what lazarus's service has), or
/// why that could not be read.
#[expect(
    clippy::disallowed_methods,
    reason = "one read of /proc/self/status, before the event loop serves (check_criu) or inside blocking::run"
)]
pub fn sys_resource_capability() -> Result<bool, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("reading /proc/self/status: {e}"))?;
    has_effective_capability(&status, CAP_SYS_RESOURCE).ok_or_else(|| "no CapEff line in /proc/self/status".to_owned())
}

/// What `lazarus version` and `lazarus serve` say when `CAP_SYS_RESOURCE`
/// is missing: lower-case, like the other hints.
pub fn sys_resource_hint() -> String {
    format!(
        "without CAP_SYS_RESOURCE, CRIU cannot read the resource limits of processes running as another uid \
         (`Can't get rlimit`), so checkpoints of containers running as a non-root user (runAsUser) fail; \
         nodes normally have it (root with the default capability set): run lazarus and containerd with it; \
         see {TROUBLESHOOTING_DOCS}"
    )
}

/// How lazarus saw the upstream it could not reach: `lazarus version` looks
/// at a unix socket's path to say which of these it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// Nothing at the socket path.
    Missing,
    /// The path exists but is not a socket.
    NotASocket,
    /// A socket (or a TCP endpoint) that did not answer.
    NotAnswering,
}

/// The socket path of a `unix://` upstream.
pub fn upstream_socket(upstream: &str) -> Option<&Path> {
    upstream.strip_prefix("unix://").map(Path::new)
}

/// Looks at the upstream's socket path (`NotAnswering` for TCP endpoints).
#[expect(
    clippy::disallowed_methods,
    reason = "one stat of a socket path, for a hint after the upstream failed to answer"
)]
pub fn upstream_state(upstream: &str) -> UpstreamState {
    use std::os::unix::fs::FileTypeExt;
    match upstream_socket(upstream).map(std::fs::metadata) {
        None => UpstreamState::NotAnswering,
        Some(Err(_)) => UpstreamState::Missing,
        Some(Ok(meta)) if !meta.file_type().is_socket() => UpstreamState::NotASocket,
        Some(Ok(_)) => UpstreamState::NotAnswering,
    }
}

/// What a user should do when the upstream did not answer: which socket,
/// and the flag and config key that choose it.
pub fn upstream_hint(upstream: &str, state: UpstreamState) -> String {
    let choose = "set the runtime's CRI endpoint with --upstream or `upstream = \"unix:///path/to/containerd.sock\"` \
                  in the config file (docs/configuration.md)";
    match (upstream_socket(upstream), state) {
        (Some(path), UpstreamState::Missing) => format!(
            "no socket at {}: is containerd running, and is this its socket (`grpc.address` in containerd's \
             config)? {choose}",
            path.display()
        ),
        (Some(path), UpstreamState::NotASocket) => {
            format!("{} exists but is not a socket: {choose}", path.display())
        }
        (Some(path), UpstreamState::NotAnswering) => format!(
            "nothing answers on {} (a stale socket, or the runtime is starting or stopping): is containerd \
             running? {choose}",
            path.display()
        ),
        (None, _) => format!("nothing answers at {upstream}: is the runtime listening there? {choose}"),
    }
}

/// The check `lazarus serve` makes before it starts (unless `require_criu =
/// false`): CRIU on `PATH`, at least [`CRIU_MIN`]. Returns its path and
/// version; logs a warning below [`CRIU_RECOMMENDED`].
pub fn check_criu_at_start() -> Result<(PathBuf, CriuVersion), String> {
    let Some(criu) = find_criu() else {
        return Err(format!(
            "criu not found on PATH ({}): lazarus needs CRIU >= {CRIU_MIN} to checkpoint and restore containers; {}",
            std::env::var("PATH").unwrap_or_default(),
            criu_hint(&CriuProblem::NotFound)
        ));
    };
    let version = criu_version(&criu).map_err(|e| format!("{e}; {}", criu_hint(&CriuProblem::NoVersion)))?;
    if version < CRIU_MIN {
        return Err(format!(
            "{} is too old: {}; or set require_criu = false to run lazarus as a plain CRI proxy",
            criu.display(),
            criu_hint(&CriuProblem::TooOld(version))
        ));
    }
    if version < CRIU_RECOMMENDED {
        tracing::warn!(
            criu = %criu.display(),
            version = %version,
            recommended = %CRIU_RECOMMENDED,
            hint = %criu_hint(&CriuProblem::OlderThanRecommended(version)),
            "CRIU is older than recommended: on kernels >= 6.13 it cannot dump containers"
        );
    }
    Ok((criu, version))
}

/// `lazarus version`: prints lazarus's version, the upstream runtime's,
/// CRIU's and the result of `criu check`. `Err` when any of them failed
/// (everything is printed first).
pub async fn run(config: &Config) -> Result<(), String> {
    let mut problems = Vec::new();
    println!("lazarus {}", env!("CARGO_PKG_VERSION"));
    match runtime_version(config).await {
        Ok(v) => println!(
            "runtime: {} {} (CRI API {}) at {}",
            v.runtime_name, v.runtime_version, v.runtime_api_version, config.upstream
        ),
        Err(reason) => {
            println!("runtime: {reason}");
            hint(&upstream_hint(&config.upstream, upstream_state(&config.upstream)));
            problems.push("the runtime did not answer");
        }
    }
    match find_criu() {
        None => {
            println!("criu: not found on PATH ({})", std::env::var("PATH").unwrap_or_default());
            hint(&criu_hint(&CriuProblem::NotFound));
            println!("criu check: not run");
            problems.push("criu not found");
        }
        Some(criu) => {
            let path = criu.clone();
            let (version, check) = crate::blocking::run(move || (criu_version(&path), criu_check(&path))).await;
            match version {
                Ok(v) if v < CRIU_MIN => {
                    println!("criu: {} {v} (too old: lazarus needs >= {CRIU_MIN})", criu.display());
                    hint(&criu_hint(&CriuProblem::TooOld(v)));
                    problems.push("criu too old");
                }
                Ok(v) if v < CRIU_RECOMMENDED => {
                    println!("criu: {} {v} (older than {CRIU_RECOMMENDED}: fails on kernels >= 6.13)", criu.display());
                    hint(&criu_hint(&CriuProblem::OlderThanRecommended(v)));
                }
                Ok(v) => println!("criu: {} {v}", criu.display()),
                Err(e) => {
                    println!("criu: {}: {e}", criu.display());
                    hint(&criu_hint(&CriuProblem::NoVersion));
                    problems.push("criu version unknown");
                }
            }
            match check {
                Ok(said) => println!("criu check: ok ({said})"),
                Err(e) => {
                    println!("criu check: failed: {e}");
                    hint(&criu_hint(&CriuProblem::CheckFailed));
                    problems.push("criu check failed");
                }
            }
        }
    }
    // A warning, not a failure: root containers are still checkpointed.
    match crate::blocking::run(sys_resource_capability).await {
        Ok(true) => println!("capabilities: CAP_SYS_RESOURCE present"),
        Ok(false) => {
            println!("capabilities: warning: CAP_SYS_RESOURCE missing from the effective set");
            hint(&sys_resource_hint());
        }
        Err(e) => println!("capabilities: unknown ({e})"),
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join(", ")) }
}

/// A hint line under a failed item of `lazarus version`.
fn hint(text: &str) {
    println!("  hint: {text}");
}

/// The upstream's `Version` answer, or why there is none (naming the upstream).
async fn runtime_version(config: &Config) -> Result<v1::VersionResponse, String> {
    let upstream = crate::upstream::Upstream::new(config).map_err(|e| e.to_string())?;
    let request = v1::VersionRequest { version: "v1".into() };
    let call = upstream.unary("/runtime.v1.RuntimeService/Version", &request, &[]);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(version)) => Ok(version),
        // lazarus's own error: "upstream … is unavailable: …".
        Ok(Err(status)) if status.message().starts_with("lazarus: ") => {
            Err(status.message().trim_start_matches("lazarus: ").to_owned())
        }
        Ok(Err(status)) => {
            Err(format!("{} answered Version with {:?}: {}", config.upstream, status.code(), status.message()))
        }
        Err(_) => Err(format!("{} did not answer Version within 10s", config.upstream)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_versions_parse() {
        assert_eq!(
            parse_criu_version("Version: 4.1.1\nGitID: v4.1.1\n"),
            Some(CriuVersion { major: 4, minor: 1, patch: 1 })
        );
        assert_eq!(parse_criu_version("Version: 3.17\n"), Some(CriuVersion { major: 3, minor: 17, patch: 0 }));
        assert_eq!(
            parse_criu_version("Version: 3.19-dirty\nGitID: v3.19-12-gabc\n"),
            Some(CriuVersion { major: 3, minor: 19, patch: 0 })
        );
        assert_eq!(parse_criu_version("  Version:   3.18.1  \n"), Some(CriuVersion { major: 3, minor: 18, patch: 1 }));
        assert_eq!(parse_criu_version("criu: command not found"), None);
        assert_eq!(parse_criu_version("Version: four"), None);
        assert_eq!(parse_criu_version(""), None);
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| parse_criu_version(&format!("Version: {s}")).expect(s);
        assert!(v("3.16.1") < CRIU_MIN);
        assert!(v("3.17") >= CRIU_MIN);
        assert!(v("3.19") < CRIU_RECOMMENDED);
        assert!(v("4.1") >= CRIU_RECOMMENDED);
        assert!(v("10.0") > v("9.12"));
        assert_eq!(v("4.1.1").to_string(), "4.1.1");
    }

    #[test]
    fn criu_hints_say_what_to_install_and_where_the_docs_are() {
        let v = |s: &str| parse_criu_version(&format!("Version: {s}")).expect(s);
        for problem in [
            CriuProblem::NotFound,
            CriuProblem::TooOld(v("3.16")),
            CriuProblem::OlderThanRecommended(v("3.17")),
            CriuProblem::NoVersion,
        ] {
            let hint = criu_hint(&problem);
            assert!(hint.contains("install CRIU >= 4.1.0"), "{problem:?}: {hint}");
            assert!(hint.contains("docs/install.md"), "{problem:?}: {hint}");
            assert!(hint.contains("PATH"), "{problem:?}: {hint}");
            // Lower-case, like the errors they follow; CRIU is a name.
            assert!(hint.starts_with(|c: char| !c.is_uppercase()) || hint.starts_with("CRIU "), "{problem:?}: {hint}");
        }
        assert!(criu_hint(&CriuProblem::NotFound).contains("require_criu = false"));
        assert!(criu_hint(&CriuProblem::TooOld(v("3.16"))).starts_with("CRIU 3.16.0 is older than 3.17.0"));
        assert!(criu_hint(&CriuProblem::OlderThanRecommended(v("3.17"))).contains("docs/troubleshooting.md"));
        let check = criu_hint(&CriuProblem::CheckFailed);
        assert!(check.contains("criu check -v4"), "{check}");
        assert!(check.contains("docs/troubleshooting.md") && check.contains("docs/install.md"), "{check}");
    }

    #[test]
    fn cap_sys_resource_is_bit_24_of_the_effective_set() {
        // Root with every capability (CapEff of a 6.x kernel), and the same without CAP_SYS_RESOURCE.
        let full = "Name:\tlazarus\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                    CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let without = "CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";
        // Only CAP_SYS_RESOURCE, in the permitted set but not the effective one.
        let permitted_only = "CapPrm:\t0000000001000000\nCapEff:\t0000000000000000\n";
        assert_eq!(has_effective_capability(full, CAP_SYS_RESOURCE), Some(true));
        assert_eq!(has_effective_capability(without, CAP_SYS_RESOURCE), Some(false));
        assert_eq!(has_effective_capability(without, 23), Some(true));
        assert_eq!(has_effective_capability(without, 25), Some(true));
        assert_eq!(has_effective_capability(permitted_only, CAP_SYS_RESOURCE), Some(false));
        assert_eq!(has_effective_capability("CapEff:\t0000000001000000\n", CAP_SYS_RESOURCE), Some(true));
        assert_eq!(has_effective_capability("Name:\tx\n", CAP_SYS_RESOURCE), None);
        assert_eq!(has_effective_capability("CapEff:\tzz\n", CAP_SYS_RESOURCE), None);
        assert_eq!(has_effective_capability(full, 64), Some(false));
        let hint = sys_resource_hint();
        assert!(hint.contains("Can't get rlimit") && hint.contains("another uid"), "{hint}");
        assert!(hint.contains("nodes normally have it") && hint.contains("docs/troubleshooting.md"), "{hint}");
    }

    #[test]
    fn upstream_hints_name_the_socket_the_flag_and_the_key() {
        let unix = "unix:///run/containerd/containerd.sock";
        let missing = upstream_hint(unix, UpstreamState::Missing);
        assert!(
            missing.starts_with("no socket at /run/containerd/containerd.sock: is containerd running"),
            "{missing}"
        );
        let not_socket = upstream_hint(unix, UpstreamState::NotASocket);
        assert!(not_socket.starts_with("/run/containerd/containerd.sock exists but is not a socket"), "{not_socket}");
        let silent = upstream_hint(unix, UpstreamState::NotAnswering);
        assert!(silent.starts_with("nothing answers on /run/containerd/containerd.sock"), "{silent}");
        let tcp = upstream_hint("http://127.0.0.1:10010", UpstreamState::NotAnswering);
        assert!(tcp.starts_with("nothing answers at http://127.0.0.1:10010"), "{tcp}");
        for hint in [missing, not_socket, silent, tcp] {
            assert!(hint.contains("--upstream") && hint.contains("`upstream = "), "{hint}");
            assert!(hint.contains("docs/configuration.md"), "{hint}");
        }
    }

    #[test]
    fn upstream_state_looks_at_the_socket_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("cri.sock");
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let uri = |p: &Path| format!("unix://{}", p.display());
        assert_eq!(upstream_state(&uri(&dir.path().join("absent.sock"))), UpstreamState::Missing);
        assert_eq!(upstream_state(&uri(&file)), UpstreamState::NotASocket);
        assert_eq!(upstream_state(&uri(&sock)), UpstreamState::NotAnswering);
        assert_eq!(upstream_state("http://127.0.0.1:1"), UpstreamState::NotAnswering);
    }

    #[test]
    fn criu_is_found_on_a_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        std::fs::write(a.join("criu"), "not executable").expect("write");
        let script = b.join("criu");
        std::fs::write(&script, "#!/bin/sh\necho 'Version: 3.16'\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = std::env::join_paths([&a, &b]).expect("join");
        assert_eq!(find_on_path("criu", &path), Some(script.clone()));
        assert_eq!(criu_version(&script), Ok(CriuVersion { major: 3, minor: 16, patch: 0 }));
        assert_eq!(find_on_path("criu", &std::env::join_paths([&a]).expect("join")), None);
    }
}
