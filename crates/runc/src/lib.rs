//! `lazarus-runc`: the runc wrapper that turns `runc create` into `runc restore`.
//!
//! containerd's runc shim (`io.containerd.runc.v2`) runs `options.BinaryName` instead of `runc`
//! for the runtime handler lazarus adds (`lazarus`). When lazarus wants a container restored, it
//! writes a restore plan for the container's id ([`plan`]) between `CreateContainer` and
//! `StartContainer`; on `StartContainer` the shim calls
//!
//! ```text
//! lazarus-runc --root R --log L --log-format json create --bundle B --pid-file P … ID
//! lazarus-runc --root R --log L --log-format json start ID
//! ```
//!
//! and the wrapper, finding the plan,
//!
//! 1. applies the checkpoint's writable-layer changes (`deleted.files`, `rootfs-diff.tar`) to
//!    the container's rootfs, already mounted by the shim;
//! 2. puts the checkpoint's pod data back ([`lazarus_format::pod_data`]): `devshm-checkpoint.tar`
//!    into the host directory bound at `/dev/shm` (containerd's sandbox shm) and each captured
//!    `emptyDir` into the host directory of the new container's `emptyDir` mount with the same
//!    destination, replacing what is there. Where each goes is checked before the rootfs is
//!    touched: a captured volume the new container does not mount, a `/dev/shm` that is not a
//!    bind mount, an `emptyDir` left out of the checkpoint that had content while the new one is
//!    empty — each fails the restore with a message naming the volume;
//! 3. writes a CRIU configuration file holding `tcp-close` if the plan says `tcp_close`, and on
//!    cgroup v1 the `ext-mount-map` lines that give the container its own cgroup directories
//!    ([`cgroups`]: runc restore would bind its own), and points runc at it with the OCI annotation `org.criu.config` in the bundle's `config.json`
//!    (runc ≥ 1.1 hands that file to CRIU; see `handleCriuConfigurationFile` in runc's
//!    libcontainer), so established TCP connections come back closed while listening sockets
//!    listen again;
//! 4. runs `runc restore --detach …` instead of `runc create` ([`argv::restore_args`]);
//! 5. records the outcome in `result.json`, and on success the `restored` marker that makes
//!    the following `start` a no-op: the restored processes are already running.
//!
//! A failure is appended to runc's `--log` file as an error entry — containerd's shim reports
//! the last one as the error of `StartContainer` — with the relevant lines of CRIU's
//! `restore.log`.
//!
//! Every other call, and `create`/`start` of any container without a plan, goes to the real
//! runc untouched: same arguments, environment and stdio, by `exec`. Only `create` and `start`
//! look for a plan (one `stat`).
//!
//! Environment: `LAZARUS_RESTORE_DIR` (default `/var/lib/lazarus/restore`) and `LAZARUS_RUNC`
//! (default: the first `runc` on `PATH` that is not this executable).

pub mod argv;
pub mod cgroups;
pub mod logs;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime};

use serde_json::Value;

use argv::{ArgvError, CreateArgs, Invocation, RestoreOptions};
use lazarus_format::annotations::files;
use lazarus_format::compression::is_compressed_file;
use lazarus_format::fsutil::{find_executable, write_atomic};
use lazarus_format::plan::{self, DEFAULT_RESTORE_DIR, Plan, PlanError, RESTORE_DIR_ENV, RestoreResult};
use lazarus_format::pod_data::{self, Manifest, PodDataError};
use lazarus_format::rootfs_diff::{self, RootfsDiffError};
/// Environment variable: the real runc.
pub const RUNC_ENV: &str = "LAZARUS_RUNC";
/// The OCI annotation runc reads the path of a CRIU configuration file from.
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// The CRIU configuration file runc uses when a container has no [`CRIU_CONFIG_ANNOTATION`].
pub const RUNC_DEFAULT_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// Why the wrapper could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum WrapperError {
    /// Neither `LAZARUS_RUNC` nor `PATH` leads to a runc.
    #[error("no runc to run: {RUNC_ENV} is not set and PATH ({path}) has no runc other than this wrapper")]
    NoRunc {
        /// The `PATH` searched.
        path: String,
    },
    /// `LAZARUS_RUNC` names this wrapper: it would call itself forever.
    #[error("{RUNC_ENV}={0} is this wrapper itself, not runc")]
    RuncIsSelf(PathBuf),
    /// `exec` of runc failed.
    #[error("executing {runc}: {source}")]
    Exec {
        /// The runc.
        runc: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The plan is unusable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The create call cannot become a restore.
    #[error(transparent)]
    Argv(#[from] ArgvError),
    /// The checkpoint lacks its CRIU images.
    #[error("the checkpoint has no CRIU images: {0} is not a directory")]
    NoImages(PathBuf),
    /// The bundle's `config.json` is not what runc would accept.
    #[error("{path}: {reason}")]
    BadSpec {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The writable-layer changes could not be applied.
    #[error("applying the checkpoint's writable-layer changes to {rootfs}: {source}")]
    RootfsDiff {
        /// The container's rootfs.
        rootfs: PathBuf,
        /// The error.
        source: RootfsDiffError,
    },
    /// The checkpoint's `/dev/shm` or `emptyDir` content cannot be put back.
    #[error("putting back the checkpoint's pod data: {0}")]
    PodData(#[from] PodDataError),
    /// `runc restore` failed.
    #[error("runc restore failed ({status}){}", .runc_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    RuncFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// runc's own last error message from its log.
        runc_error: Option<String>,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl WrapperError {
    /// The exit code that reports this error: runc's own, when runc failed.
    fn exit_code(&self) -> u8 {
        match self {
            WrapperError::RuncFailed { status, .. } => {
                status.code().and_then(|code| u8::try_from(code).ok()).filter(|code| *code != 0).unwrap_or(1)
            }
            _ => 1,
        }
    }
}

/// Attaches the failed operation to an I/O error.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, WrapperError>;
}

impl<T> Context<T> for Result<T, io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, WrapperError> {
        self.map_err(|source| WrapperError::Io { context: what(), source })
    }
}

/// Where the wrapper finds plans and runc.
#[derive(Debug, Clone)]
pub struct Wrapper {
    /// The restore directory.
    pub restore_dir: PathBuf,
    /// The real runc, if configured (`LAZARUS_RUNC`).
    pub runc: Option<PathBuf>,
    /// The `PATH` to look for runc in otherwise.
    pub path: Option<OsString>,
}

/// What `main` is to do after [`Wrapper::handle`].
#[derive(Debug)]
pub enum Action {
    /// Replace this process with the real runc, with these arguments.
    Exec {
        /// The real runc.
        runc: PathBuf,
        /// Its arguments (without argv\[0\]).
        args: Vec<OsString>,
        /// runc's log file (`--log`), to report a failed exec in.
        log: Option<PathBuf>,
    },
    /// Exit with this code: the wrapper did the work (or reported why it could not).
    Exit(u8),
}

/// The wrapper's entry point, for `src/bin/lazarus-runc.rs`.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let wrapper = Wrapper::from_env();
    match wrapper.handle(&args) {
        Action::Exit(code) => ExitCode::from(code),
        Action::Exec { runc, args, log } => {
            let source = Command::new(&runc).args(&args).exec();
            report(log.as_deref(), &WrapperError::Exec { runc, source }.to_string());
            ExitCode::from(1)
        }
    }
}

/// Prints `msg` on stderr and appends it to runc's log, where containerd's shim looks.
fn report(log: Option<&Path>, msg: &str) {
    let msg = if msg.starts_with("lazarus") { msg.to_owned() } else { format!("lazarus-runc: {msg}") };
    eprintln!("{msg}");
    if let Some(log) = log
        && let Err(err) = logs::append_runc_error(log, &msg)
    {
        eprintln!("lazarus-runc: appending to runc's log {}: {err}", log.display());
    }
}

impl Wrapper {
    /// From `LAZARUS_RESTORE_DIR`, `LAZARUS_RUNC` and `PATH`.
    pub fn from_env() -> Wrapper {
        let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        Wrapper {
            restore_dir: non_empty(RESTORE_DIR_ENV).map_or_else(|| DEFAULT_RESTORE_DIR.into(), PathBuf::from),
            runc: non_empty(RUNC_ENV).map(PathBuf::from),
            path: std::env::var_os("PATH"),
        }
    }

    /// Decides, and for a planned restore does, what the call `args` (without argv\[0\]) asks.
    pub fn handle(&self, args: &[OsString]) -> Action {
        let call = Invocation::parse(args);
        if let Some(call) = &call
            && let Some(id) = call.container_id()
        {
            let dir = self.restore_dir.join(id);
            match call.subcommand.as_str() {
                "create" if dir.join(plan::PLAN_FILE).is_file() => return self.restore(call, id, &dir, args),
                "start" if dir.join(plan::RESTORED_MARKER).exists() => {
                    wrapper_log(&dir, args, "start: the container was restored, runc start skipped");
                    return Action::Exit(0);
                }
                "start" if dir.join(plan::PLAN_FILE).is_file() => {
                    wrapper_log(&dir, args, "start: planned but not restored (no marker), passed to runc");
                }
                _ => {}
            }
        }
        let log = call.and_then(|call| call.log);
        match self.real_runc() {
            Ok(runc) => Action::Exec { runc, args: args.to_vec(), log },
            Err(err) => {
                report(log.as_deref(), &err.to_string());
                Action::Exit(1)
            }
        }
    }

    /// The real runc: `LAZARUS_RUNC`, or the first executable `runc` on `PATH` that is not
    /// this wrapper (compared as canonical paths).
    pub fn real_runc(&self) -> Result<PathBuf, WrapperError> {
        let me = std::env::current_exe().and_then(fs::canonicalize).ok();
        let is_me = |candidate: &Path| me.is_some() && fs::canonicalize(candidate).ok() == me;
        if let Some(runc) = &self.runc {
            if is_me(runc) {
                return Err(WrapperError::RuncIsSelf(runc.clone()));
            }
            return Ok(runc.clone());
        }
        let path = self.path.clone().unwrap_or_default();
        find_executable("runc", &path, |candidate| !is_me(candidate))
            .ok_or_else(|| WrapperError::NoRunc { path: path.to_string_lossy().into_owned() })
    }

    /// `create` of container `id` with a plan in `dir`: restore instead, and report.
    fn restore(&self, call: &Invocation, id: &str, dir: &Path, argv: &[OsString]) -> Action {
        let started = Instant::now();
        let mut progress = Progress::default();
        let outcome = self.try_restore(call, dir, &mut progress);
        let restore_log_path = dir.join(plan::WORK_DIR).join(plan::RESTORE_LOG);
        // CRIU's log is this attempt's only if runc ran (a stale one was removed before).
        let restore_log = progress
            .ran_runc
            .then(|| fs::read(&restore_log_path).ok())
            .flatten()
            .map(|text| lazarus_format::criu_log::relevant_lines(&String::from_utf8_lossy(&text)));
        let source = progress.source.unwrap_or_else(|| "an unreadable restore plan".to_owned());
        let elapsed = started.elapsed().as_millis();
        let (result, action) = match outcome {
            Ok(()) => {
                wrapper_log(dir, argv, &format!("create: restored from {source} in {elapsed} ms"));
                let result = RestoreResult {
                    ok: true,
                    error: String::new(),
                    restore_log: restore_log.unwrap_or_default(),
                    finished: logs::rfc3339(SystemTime::now()),
                };
                (result, Action::Exit(0))
            }
            Err(err) => {
                let mut msg = format!("lazarus: restoring container {id} from {source} failed: {err}");
                match (&restore_log, &err) {
                    (Some(lines), _) => msg.push_str(&format!(
                        "; criu restore.log ({}): {}",
                        restore_log_path.display(),
                        lines.join(" | ")
                    )),
                    (None, WrapperError::RuncFailed { .. }) => {
                        msg.push_str(&format!("; criu restore.log: {} was not written", restore_log_path.display()))
                    }
                    (None, _) => {}
                }
                report(call.log.as_deref(), &msg);
                wrapper_log(dir, argv, &format!("create: restore failed after {elapsed} ms: {msg}"));
                let result = RestoreResult {
                    ok: false,
                    error: msg,
                    restore_log: restore_log.unwrap_or_default(),
                    finished: logs::rfc3339(SystemTime::now()),
                };
                (result, Action::Exit(err.exit_code()))
            }
        };
        let ok = result.ok;
        let written = serde_json::to_vec_pretty(&result)
            .map_err(io::Error::other)
            .and_then(|json| write_atomic(&dir.join(plan::RESULT_FILE), &json, None));
        if let Err(err) = written {
            report(call.log.as_deref(), &format!("writing {}: {err}", dir.join(plan::RESULT_FILE).display()));
        }
        if ok && let Err(err) = File::create(dir.join(plan::RESTORED_MARKER)) {
            // Without the marker the shim's `start` would reach runc, which refuses to start a
            // running container: the restore is reported as failed rather than half-done.
            report(call.log.as_deref(), &format!("creating {}: {err}", dir.join(plan::RESTORED_MARKER).display()));
            return Action::Exit(1);
        }
        action
    }

    /// The restore itself, noting in `progress` how far it got.
    fn try_restore(&self, call: &Invocation, dir: &Path, progress: &mut Progress) -> Result<(), WrapperError> {
        let plan = Plan::read(dir)?;
        progress.source = Some(plan.source.clone());
        let create = CreateArgs::parse(&call.args)?;
        let plan_dir = std::path::absolute(dir).context(|| format!("resolving {}", dir.display()))?;
        let image_path = plan.checkpoint_dir.join(files::CHECKPOINT_DIR);
        let work = plan_dir.join(plan::WORK_DIR);
        let options = RestoreOptions { image_path: &image_path, work_path: &work, tcp_close: plan.tcp_close };
        let args = argv::restore_args(&call.globals, &create, &options)?;
        if !image_path.is_dir() {
            return Err(WrapperError::NoImages(image_path));
        }
        let runc = self.real_runc()?;
        // Everything that can be checked without changing anything is checked: now the rootfs.
        let bundle = create.bundle_dir();
        let config_path = bundle.join("config.json");
        let mut spec = read_spec(&config_path)?;
        let rootfs = rootfs_of(&spec, &bundle, &config_path)?;
        let manifest = Manifest::read(&plan.checkpoint_dir)?;
        let mut pod_data = pod_data::placements(&plan.checkpoint_dir, manifest.as_ref(), &spec)?;
        // Put back already by another container of the pod restored from the same cut.
        pod_data.retain(|p| !plan.skip_pod_data.contains(&p.volume.destination));
        apply_checkpoint_diff(&plan.checkpoint_dir, &rootfs)?;
        for placement in &pod_data {
            pod_data::restore(&placement.archive, &placement.target)?;
        }
        // The file stays the container's CRIU configuration (runc keeps the
        // annotation in its state): later dumps of the restored container read
        // it too. `tcp-close` is a restore option; the cgroup mappings are
        // removed once the restore is over, or the next dump would name the
        // cgroup mounts after host paths and its restore find no mapping
        // (`mnt: No mapping for … mountpoint`).
        let mut lasting = String::new();
        if plan.tcp_close {
            lasting.push_str("# lazarus: the pod has a new IP address\ntcp-close\n");
        }
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context(|| "reading /proc/self/mountinfo".to_owned())?;
        let cgroup_mounts = cgroups::ext_mount_lines(&spec, &mountinfo)
            .map_err(|e| WrapperError::BadSpec { path: config_path.clone(), reason: e.to_string() })?;
        let mut restore_only = String::new();
        if !cgroup_mounts.is_empty() {
            restore_only
                .push_str("# lazarus: the container's own cgroup v1 directories (runc restore names its own)\n");
            for line in cgroup_mounts {
                restore_only.push_str(&line);
                restore_only.push('\n');
            }
        }
        let criu_conf = plan_dir.join(plan::CRIU_CONF);
        let mut after_restore = None;
        if !lasting.is_empty() || !restore_only.is_empty() {
            let base = base_criu_config(&spec, &criu_conf)?;
            write_atomic(&criu_conf, format!("{base}{lasting}{restore_only}").as_bytes(), None)
                .context(|| format!("writing {}", criu_conf.display()))?;
            if !restore_only.is_empty() {
                after_restore = Some(format!("{base}{lasting}"));
            }
            set_annotation(&mut spec, CRIU_CONFIG_ANNOTATION, &criu_conf.to_string_lossy(), &config_path)?;
            let mode = fs::metadata(&config_path).map(|meta| meta.permissions().mode()).ok();
            let json =
                serde_json::to_vec(&spec).map_err(io::Error::other).context(|| "encoding config.json".to_owned())?;
            write_atomic(&config_path, &json, mode).context(|| format!("rewriting {}", config_path.display()))?;
        }
        fs::create_dir_all(&work).context(|| format!("creating {}", work.display()))?;
        let restore_log = work.join(plan::RESTORE_LOG);
        match fs::remove_file(&restore_log) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(err).context(|| format!("removing the stale {}", restore_log.display()));
            }
            _ => {}
        }
        let log_offset = call.log.as_deref().and_then(|log| fs::metadata(log).ok()).map_or(0, |meta| meta.len());
        let status = Command::new(&runc)
            .args(&args)
            .status()
            .context(|| format!("running {} {}", runc.display(), display_args(&args)))?;
        progress.ran_runc = true;
        if let Some(text) = after_restore {
            write_atomic(&criu_conf, text.as_bytes(), None)
                .context(|| format!("removing the restore-only cgroup mappings from {}", criu_conf.display()))?;
        }
        if status.success() {
            return Ok(());
        }
        let runc_error = call.log.as_deref().and_then(|log| fs::read(log).ok()).and_then(|text| {
            let start = usize::try_from(log_offset).unwrap_or(0).min(text.len());
            logs::last_runc_error(&String::from_utf8_lossy(&text[start..]))
        });
        Err(WrapperError::RuncFailed { status, runc_error })
    }
}

/// How far a restore got, for its report.
#[derive(Debug, Default)]
struct Progress {
    /// The plan's checkpoint reference, once the plan was read.
    source: Option<String>,
    /// Whether runc restore ran (so CRIU's log belongs to this attempt).
    ran_runc: bool,
}

/// The bundle's OCI spec.
fn read_spec(path: &Path) -> Result<Value, WrapperError> {
    let text = fs::read(path).context(|| format!("reading {}", path.display()))?;
    let spec: Value = serde_json::from_slice(&text)
        .map_err(|err| WrapperError::BadSpec { path: path.to_owned(), reason: format!("not JSON: {err}") })?;
    if !spec.is_object() {
        return Err(WrapperError::BadSpec { path: path.to_owned(), reason: "not a JSON object".to_owned() });
    }
    Ok(spec)
}

/// `root.path` of the spec, relative to the bundle unless absolute.
fn rootfs_of(spec: &Value, bundle: &Path, config_path: &Path) -> Result<PathBuf, WrapperError> {
    let root = spec["root"]["path"]
        .as_str()
        .filter(|root| !root.is_empty())
        .ok_or_else(|| WrapperError::BadSpec { path: config_path.to_owned(), reason: "no root.path".to_owned() })?;
    Ok(bundle.join(root))
}

/// Applies `deleted.files` and `rootfs-diff.tar` of the checkpoint tree, each if present.
fn apply_checkpoint_diff(checkpoint_dir: &Path, rootfs: &Path) -> Result<(), WrapperError> {
    let diff_error = |source| WrapperError::RootfsDiff { rootfs: rootfs.to_owned(), source };
    let deleted_path = checkpoint_dir.join(files::DELETED_FILES);
    let deleted = match File::open(&deleted_path) {
        Ok(file) => rootfs_diff::read_deleted_files(io::BufReader::new(file)).map_err(diff_error)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err).context(|| format!("opening {}", deleted_path.display())),
    };
    let tar_path = checkpoint_dir.join(files::ROOTFS_DIFF);
    match File::open(&tar_path) {
        // A lazarus (or CRI-O) diff: a plain tar plus deleted.files.
        Ok(file) if deleted_path.exists() && !compressed(&tar_path)? => {
            rootfs_diff::apply_diff(io::BufReader::new(file), &deleted, rootfs).map_err(diff_error)?
        }
        // containerd 2.x's CheckpointContainer: an OCI layer (gzip, whiteouts), no deleted.files.
        Ok(file) => {
            let plain_path = checkpoint_dir.join("rootfs-diff.plain.tar");
            let plain = File::create(&plain_path).context(|| format!("creating {}", plain_path.display()))?;
            let mut all_deleted = deleted;
            all_deleted.extend(
                rootfs_diff::normalize_layer(io::BufReader::new(file), io::BufWriter::new(plain))
                    .map_err(diff_error)?,
            );
            let plain = File::open(&plain_path).context(|| format!("opening {}", plain_path.display()))?;
            let summary = rootfs_diff::apply_diff(io::BufReader::new(plain), &all_deleted, rootfs).map_err(diff_error);
            std::fs::remove_file(&plain_path).ok();
            summary?
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if deleted.is_empty() {
                return Ok(());
            }
            rootfs_diff::apply_diff(io::empty(), &deleted, rootfs).map_err(diff_error)?
        }
        Err(err) => return Err(err).context(|| format!("opening {}", tar_path.display())),
    };
    Ok(())
}

/// Whether a file starts with gzip's or zstd's magic bytes.
fn compressed(path: &Path) -> Result<bool, WrapperError> {
    is_compressed_file(path).context(|| format!("reading {}", path.display()))
}

/// The CRIU configuration runc would have used for this container, to keep it in effect
/// under ours: the file the spec's `org.criu.config` names (none if it is empty), else runc's
/// default `/etc/criu/runc.conf`; empty when there is none. `ours` (a retried create) is no base.
fn base_criu_config(spec: &Value, ours: &Path) -> Result<String, WrapperError> {
    let configured = match spec["annotations"][CRIU_CONFIG_ANNOTATION].as_str() {
        Some("") => return Ok(String::new()),
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(RUNC_DEFAULT_CRIU_CONFIG),
    };
    if configured == ours {
        return Ok(String::new());
    }
    match fs::read_to_string(&configured) {
        Ok(text) if text.is_empty() || text.ends_with('\n') => Ok(text),
        Ok(text) => Ok(format!("{text}\n")),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(err).context(|| format!("reading the container's CRIU configuration {}", configured.display())),
    }
}

/// Sets `annotations[key] = value` in an OCI spec, creating `annotations` if needed.
fn set_annotation(spec: &mut Value, key: &str, value: &str, config_path: &Path) -> Result<(), WrapperError> {
    let bad = |reason: &str| WrapperError::BadSpec { path: config_path.to_owned(), reason: reason.to_owned() };
    let object = spec.as_object_mut().ok_or_else(|| bad("not a JSON object"))?;
    let annotations = object.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if annotations.is_null() {
        *annotations = Value::Object(Default::default());
    }
    annotations
        .as_object_mut()
        .ok_or_else(|| bad("annotations is not an object"))?
        .insert(key.to_owned(), Value::String(value.to_owned()));
    Ok(())
}

/// Appends `time pid argv → decision` to the plan directory's `wrapper.log` (best effort: a
/// log that cannot be written must not fail the container).
fn wrapper_log(dir: &Path, argv: &[OsString], decision: &str) {
    let line = format!(
        "{} pid={} argv=[{}] {decision}",
        logs::rfc3339(SystemTime::now()),
        std::process::id(),
        display_args(argv)
    );
    if let Err(err) = logs::append_line(&dir.join(plan::WRAPPER_LOG), &line) {
        eprintln!("lazarus-runc: writing {}: {err}", dir.join(plan::WRAPPER_LOG).display());
    }
}

/// Arguments for messages, space-separated, quoted where needed.
fn display_args(args: &[OsString]) -> String {
    args.iter()
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c)) {
                arg.into_owned()
            } else {
                format!("{arg:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
