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
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// `criu` on this process's `PATH`.
pub fn find_criu() -> Option<PathBuf> {
    find_on_path("criu", &std::env::var_os("PATH").unwrap_or_default())
}

/// Runs `criu --version`.
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

/// The check `lazarus serve` makes before it starts (unless `require_criu =
/// false`): CRIU on `PATH`, at least [`CRIU_MIN`]. Returns its path and
/// version; logs a warning below [`CRIU_RECOMMENDED`].
pub fn check_criu_at_start() -> Result<(PathBuf, CriuVersion), String> {
    let Some(criu) = find_criu() else {
        return Err(format!(
            "criu not found on PATH: lazarus needs CRIU >= {CRIU_MIN} ({CRIU_RECOMMENDED} or newer on kernels >= 6.13) \
             to checkpoint and restore containers. Install it, put it on lazarus's PATH, or set \
             require_criu = false in the config to run lazarus as a plain CRI proxy"
        ));
    };
    let version = criu_version(&criu)?;
    if version < CRIU_MIN {
        return Err(format!(
            "{} is CRIU {version}, too old: lazarus needs CRIU >= {CRIU_MIN} ({CRIU_RECOMMENDED} or newer on kernels \
             >= 6.13); or set require_criu = false to run lazarus as a plain CRI proxy",
            criu.display()
        ));
    }
    if version < CRIU_RECOMMENDED {
        tracing::warn!(
            criu = %criu.display(),
            version = %version,
            recommended = %CRIU_RECOMMENDED,
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
            problems.push("the runtime did not answer");
        }
    }
    match find_criu() {
        None => {
            println!("criu: not found on PATH");
            println!("criu check: not run");
            problems.push("criu not found");
        }
        Some(criu) => {
            let path = criu.clone();
            let (version, check) = tokio::task::spawn_blocking(move || (criu_version(&path), criu_check(&path)))
                .await
                .map_err(|e| format!("running criu: {e}"))?;
            match version {
                Ok(v) if v < CRIU_MIN => {
                    println!("criu: {} {v} (too old: lazarus needs >= {CRIU_MIN})", criu.display());
                    problems.push("criu too old");
                }
                Ok(v) if v < CRIU_RECOMMENDED => {
                    println!("criu: {} {v} (older than {CRIU_RECOMMENDED}: fails on kernels >= 6.13)", criu.display());
                }
                Ok(v) => println!("criu: {} {v}", criu.display()),
                Err(e) => {
                    println!("criu: {}: {e}", criu.display());
                    problems.push("criu version unknown");
                }
            }
            match check {
                Ok(said) => println!("criu check: ok ({said})"),
                Err(e) => {
                    println!("criu check: failed: {e}");
                    problems.push("criu check failed");
                }
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join(", ")) }
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
