//! runc's command line as containerd's runc shim writes it, and the `runc restore` command line
//! the wrapper runs instead of `runc create`.
//!
//! runc parses its flags with urfave/cli (Go's `flag` package underneath): a flag is `-name` or
//! `--name`, its value either `--name=value` or the next argument, a boolean may be
//! `--name=true`, and the first argument that is not a flag ends the flags. Global flags come
//! before the subcommand, the subcommand's own flags after it.

use lazarus_format::plan::valid_container_id;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a `runc create` command line cannot be turned into a `runc restore`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    /// A flag `runc create` does not have, or one the wrapper does not know.
    #[error("unknown runc create flag {0}")]
    UnknownFlag(String),
    /// A flag that needs a value came last.
    #[error("runc create flag {0} needs a value")]
    MissingValue(String),
    /// A flag value is malformed.
    #[error("runc create flag {flag} has an invalid value {value:?}")]
    InvalidValue {
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
    },
    /// No container id, or more than one positional argument.
    #[error("runc create expects exactly one container id after its flags, got {0:?}")]
    ContainerId(Vec<String>),
    /// No `--bundle`.
    #[error("runc create without --bundle")]
    NoBundle,
    /// A create option `runc restore` has no equivalent for.
    #[error("runc create {0} cannot be honoured by runc restore")]
    Unsupported(String),
}

/// runc's global flags that take a value (runc 1.1 `main.go`).
const GLOBAL_VALUED: &[&str] = &["log", "log-format", "root", "criu", "rootless"];
/// runc's global boolean flags.
const GLOBAL_BOOL: &[&str] = &["debug", "systemd-cgroup", "help", "h", "version", "v"];

/// A command line split at its subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The global flags before the subcommand, verbatim.
    pub globals: Vec<OsString>,
    /// The value of the global `--log` flag: runc's (JSON) log file, where containerd's shim
    /// looks for the error of a failed call.
    pub log: Option<PathBuf>,
    /// The subcommand (`create`, `start`, `state`, …).
    pub subcommand: String,
    /// Everything after the subcommand.
    pub args: Vec<OsString>,
}

impl Invocation {
    /// Splits `args` (without argv\[0\]) at the subcommand. `None` when there is no subcommand
    /// (`runc --version`) or a global flag the wrapper does not know makes the split uncertain:
    /// such a call is runc's business alone.
    pub fn parse(args: &[OsString]) -> Option<Invocation> {
        let mut log = None;
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index];
            if arg == "--" {
                index += 1;
                break;
            }
            let Some((name, value)) = split_flag(arg) else { break };
            if GLOBAL_VALUED.contains(&name) {
                let value = match value {
                    Some(value) => value.to_owned(),
                    None => {
                        index += 1;
                        args.get(index)?.clone()
                    }
                };
                if name == "log" {
                    log = Some(PathBuf::from(value));
                }
            } else if !GLOBAL_BOOL.contains(&name) {
                return None;
            }
            index += 1;
        }
        let subcommand = args.get(index)?.to_str()?.to_owned();
        Some(Invocation { globals: args[..index].to_vec(), log, subcommand, args: args[index + 1..].to_vec() })
    }

    /// The container id of a `create` or `start` call, leniently: the last argument, if it is
    /// not a flag. Used to look for a restore plan before the flags are checked in earnest.
    pub fn container_id(&self) -> Option<&str> {
        let last = self.args.last()?.to_str()?;
        (!last.starts_with('-') && valid_container_id(last)).then_some(last)
    }
}

/// `-name[=value]` / `--name[=value]` → (name, value). `None` for a positional argument.
fn split_flag(arg: &OsStr) -> Option<(&str, Option<&OsStr>)> {
    let bytes = arg.as_bytes();
    let body = bytes.strip_prefix(b"--").or_else(|| bytes.strip_prefix(b"-"))?;
    if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
        return None;
    }
    let (name, value) = match body.iter().position(|b| *b == b'=') {
        Some(eq) => (&body[..eq], Some(OsStr::from_bytes(&body[eq + 1..]))),
        None => (body, None),
    };
    Some((std::str::from_utf8(name).ok()?, value))
}

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The arguments of `runc create` (runc 1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateArgs {
    /// `--bundle` / `-b`.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<OsString>,
    /// `--console-socket`.
    pub console_socket: Option<OsString>,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--no-new-keyring` (runc restore has no such flag: the restored processes keep the
    /// session keyring the checkpoint recorded).
    pub no_new_keyring: bool,
    /// `--preserve-fds`.
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

impl CreateArgs {
    /// Parses what follows `create` on the command line.
    pub fn parse(args: &[OsString]) -> Result<CreateArgs, ArgvError> {
        let mut create = CreateArgs::default();
        let mut bundle = None;
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index];
            if arg == "--" {
                index += 1;
                break;
            }
            let Some((name, inline)) = split_flag(arg) else { break };
            let flag = format!("--{name}");
            match name {
                "bundle" | "b" | "pid-file" | "console-socket" | "preserve-fds" | "pidfd-socket" => {
                    let value = match inline {
                        Some(value) => value.to_owned(),
                        None => {
                            index += 1;
                            args.get(index).cloned().ok_or_else(|| ArgvError::MissingValue(flag.clone()))?
                        }
                    };
                    match name {
                        "bundle" | "b" => bundle = Some(PathBuf::from(value)),
                        "pid-file" => create.pid_file = Some(value),
                        "console-socket" => create.console_socket = Some(value),
                        "preserve-fds" => {
                            create.preserve_fds = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
                                ArgvError::InvalidValue { flag, value: value.to_string_lossy().into_owned() }
                            })?;
                        }
                        _ => return Err(ArgvError::Unsupported(flag)),
                    }
                }
                "no-pivot" | "no-new-keyring" => {
                    let on = match inline {
                        None => true,
                        Some(value) => value.to_str().and_then(parse_bool).ok_or_else(|| ArgvError::InvalidValue {
                            flag: flag.clone(),
                            value: value.to_string_lossy().into_owned(),
                        })?,
                    };
                    if name == "no-pivot" {
                        create.no_pivot = on;
                    } else {
                        create.no_new_keyring = on;
                    }
                }
                _ => return Err(ArgvError::UnknownFlag(arg.to_string_lossy().into_owned())),
            }
            index += 1;
        }
        let positional: Vec<String> = args[index..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
        match positional.as_slice() {
            [id] if valid_container_id(id) => create.id = id.clone(),
            _ => return Err(ArgvError::ContainerId(positional)),
        }
        create.bundle = bundle.ok_or(ArgvError::NoBundle)?;
        Ok(create)
    }

    /// The bundle as an absolute path (runc resolves a relative one against its working
    /// directory, which the wrapper shares).
    pub fn bundle_dir(&self) -> PathBuf {
        std::path::absolute(&self.bundle).unwrap_or_else(|_| self.bundle.clone())
    }
}

/// How `runc restore` is to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions<'a> {
    /// CRIU's images (`<checkpoint>/checkpoint`).
    pub image_path: &'a Path,
    /// CRIU's work directory (its `restore.log` ends up there).
    pub work_path: &'a Path,
    /// `false`: restore established TCP connections as they were (`--tcp-established`), which
    /// only works where their addresses still exist. `true`: the CRIU configuration file closes
    /// them (`tcp-close`), and `--tcp-established` is not given.
    pub tcp_close: bool,
}

/// The `runc restore` command line (without argv\[0\]) that replaces `runc create`:
///
/// `<global flags> restore --detach --image-path I --work-path W --bundle B --pid-file P
/// --no-subreaper [--console-socket S] [--no-pivot] [--tcp-established] --file-locks ID`
///
/// `--file-locks` restores the file locks that lazarus's checkpoints always record;
/// `--no-new-keyring` is dropped (runc restore has no such flag). `--preserve-fds N` with N > 0
/// is refused: runc restore cannot pass extra descriptors to the restored process.
pub fn restore_args(
    globals: &[OsString],
    create: &CreateArgs,
    options: &RestoreOptions<'_>,
) -> Result<Vec<OsString>, ArgvError> {
    if create.preserve_fds > 0 {
        return Err(ArgvError::Unsupported(format!("--preserve-fds {}", create.preserve_fds)));
    }
    let mut args = globals.to_vec();
    args.extend(["restore", "--detach", "--image-path"].map(OsString::from));
    args.push(options.image_path.into());
    args.push("--work-path".into());
    args.push(options.work_path.into());
    args.push("--bundle".into());
    args.push(create.bundle.clone().into());
    if let Some(pid_file) = &create.pid_file {
        args.push("--pid-file".into());
        args.push(pid_file.clone());
    }
    args.push("--no-subreaper".into());
    if let Some(socket) = &create.console_socket {
        args.push("--console-socket".into());
        args.push(socket.clone());
    }
    if create.no_pivot {
        args.push("--no-pivot".into());
    }
    if !options.tcp_close {
        args.push("--tcp-established".into());
    }
    args.push("--file-locks".into());
    args.push(create.id.clone().into());
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn options() -> RestoreOptions<'static> {
        RestoreOptions { image_path: Path::new("/ck/checkpoint"), work_path: Path::new("/plan/work"), tcp_close: true }
    }

    #[test]
    fn splits_the_shims_create_call_at_the_subcommand() {
        let args = os(&[
            "--root",
            "/run/runc/k8s.io",
            "--log",
            "/run/containerd/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/containerd/x",
            "--pid-file",
            "/run/containerd/x/init.pid",
            "abc",
        ]);
        let call = Invocation::parse(&args).expect("split");
        assert_eq!(call.subcommand, "create");
        assert_eq!(strings(&call.globals), strings(&args[..7]));
        assert_eq!(call.log, Some(PathBuf::from("/run/containerd/x/log.json")));
        assert_eq!(call.container_id(), Some("abc"));
    }

    #[test]
    fn global_flags_with_equals_single_dashes_and_booleans() {
        let args = os(&["-root=/r", "--log=/l.json", "--debug", "--log-format", "json", "start", "abc"]);
        let call = Invocation::parse(&args).expect("split");
        assert_eq!(call.subcommand, "start");
        assert_eq!(call.globals.len(), 5);
        assert_eq!(call.log, Some(PathBuf::from("/l.json")));
        assert_eq!(call.container_id(), Some("abc"));
    }

    #[test]
    fn calls_the_wrapper_cannot_split_are_left_to_runc() {
        assert_eq!(Invocation::parse(&os(&["--version"])), None);
        assert_eq!(Invocation::parse(&os(&[])), None);
        assert_eq!(Invocation::parse(&os(&["--root"])), None);
        assert_eq!(Invocation::parse(&os(&["--future-flag", "x", "create", "abc"])), None);
        let state = Invocation::parse(&os(&["--root", "/r", "state", "abc"])).expect("split");
        assert_eq!(state.subcommand, "state");
        // A flag as last argument is no container id; nor is a path.
        let odd = Invocation::parse(&os(&["start", "--help"])).expect("split");
        assert_eq!(odd.container_id(), None);
        let odd = Invocation::parse(&os(&["start", "../../etc"])).expect("split");
        assert_eq!(odd.container_id(), None);
    }

    #[test]
    fn create_becomes_restore() {
        let args = os(&[
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket",
            "/tmp/console.sock",
            "--no-pivot",
            "--no-new-keyring",
            "abc",
        ]);
        let create = CreateArgs::parse(&args).expect("parse");
        assert!(create.no_new_keyring);
        let globals = os(&["--root", "/r", "--log", "/l", "--log-format", "json"]);
        let restore = restore_args(&globals, &create, &options()).expect("restore");
        assert_eq!(
            strings(&restore),
            [
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "restore",
                "--detach",
                "--image-path",
                "/ck/checkpoint",
                "--work-path",
                "/plan/work",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "--no-subreaper",
                "--console-socket",
                "/tmp/console.sock",
                "--no-pivot",
                "--file-locks",
                "abc",
            ]
        );
    }

    #[test]
    fn create_flags_with_equals_and_short_bundle() {
        let create = CreateArgs::parse(&os(&["-b", "/b", "--pid-file=/p", "--no-pivot=false", "-preserve-fds=0", "x"]))
            .expect("parse");
        assert_eq!(create.bundle, PathBuf::from("/b"));
        assert_eq!(create.pid_file, Some(OsString::from("/p")));
        assert!(!create.no_pivot);
        assert_eq!(create.id, "x");
        let create = CreateArgs::parse(&os(&["--bundle=/b2", "x"])).expect("parse");
        assert_eq!(create.bundle, PathBuf::from("/b2"));
        assert_eq!(create.pid_file, None);
        let restore = restore_args(&[], &create, &RestoreOptions { tcp_close: false, ..options() }).expect("restore");
        assert_eq!(
            strings(&restore),
            [
                "restore",
                "--detach",
                "--image-path",
                "/ck/checkpoint",
                "--work-path",
                "/plan/work",
                "--bundle",
                "/b2",
                "--no-subreaper",
                "--tcp-established",
                "--file-locks",
                "x",
            ]
        );
    }

    #[test]
    fn create_lines_that_cannot_become_a_restore() {
        let create = CreateArgs::parse(&os(&["--bundle", "/b", "--preserve-fds", "2", "x"])).expect("parse");
        assert_eq!(
            restore_args(&[], &create, &options()).map_err(|e| e.to_string()),
            Err("runc create --preserve-fds 2 cannot be honoured by runc restore".to_owned())
        );
        for (args, error) in [
            (&["--bundle", "/b", "--detach", "x"][..], "unknown runc create flag --detach"),
            (&["--bundle"], "runc create flag --bundle needs a value"),
            (&["--pid-file", "/p", "x"], "runc create without --bundle"),
            (&["--bundle", "/b"], "runc create expects exactly one container id after its flags, got []"),
            (
                &["--bundle", "/b", "x", "y"],
                r#"runc create expects exactly one container id after its flags, got ["x", "y"]"#,
            ),
            (
                &["--bundle", "/b", "--preserve-fds", "many", "x"],
                r#"runc create flag --preserve-fds has an invalid value "many""#,
            ),
            (
                &["--bundle", "/b", "--no-pivot=maybe", "x"],
                r#"runc create flag --no-pivot has an invalid value "maybe""#,
            ),
            (
                &["--bundle", "/b", "--pidfd-socket", "/s", "x"],
                "runc create --pidfd-socket cannot be honoured by runc restore",
            ),
        ] {
            assert_eq!(CreateArgs::parse(&os(args)).map_err(|e| e.to_string()), Err(error.to_owned()), "{args:?}");
        }
    }
}
