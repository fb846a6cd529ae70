//! After the restore was prepared: the plan committed or the created
//! container taken back, the start's outcome (a failure is remembered, so
//! `latest` takes an older checkpoint next time), and plans of removed
//! containers.

use super::*;
use std::collections::BTreeMap;
use std::time::SystemTime;

use lazarus_format::plan::Origin;

impl Restorer {
    /// Checkpoints of `key` whose restore failed before (not expired). On the
    /// blocking pool: an old file is migrated (written back) on first read.
    pub(super) async fn failed(&self, key: &str) -> Vec<String> {
        let (file, key, expiry) = (self.config.failures_file.clone(), key.to_owned(), self.config.failure_expiry);
        crate::blocking::run(move || failed_checkpoints(&file, &key, expiry)).await
    }

    fn remember_failure(&self, origin: &Origin, reason: &str) {
        let (file, expiry) = (&self.config.failures_file, self.config.failure_expiry);
        if let Err(e) = record_failure(file, origin, reason, expiry) {
            tracing::warn!(error = %e, path = %self.config.failures_file.display(), "cannot record the failed restore");
        }
    }

    /// Whether `container_id` has a restore plan.
    pub fn has_plan(&self, container_id: &str) -> bool {
        plan::valid_container_id(container_id)
            && plan::plan_dir(&self.config.restore_dir, container_id).join(plan::PLAN_FILE).is_file()
    }

    /// After `StartContainer` of a container with a plan: on failure the
    /// checkpoint is remembered as failed for this container (the next
    /// `latest` attempt takes an older one); either way the unpacked images
    /// are removed, the logs kept until the container is removed.
    pub fn started(&self, container_id: &str, error: Option<&str>) {
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        let origin: Option<Origin> = read_json(&dir.join(plan::ORIGIN_FILE));
        let result: Option<plan::RestoreResult> = read_json(&dir.join(plan::RESULT_FILE));
        let result_ok = result.as_ref().is_some_and(|r| r.ok);
        let (key, source) =
            origin.as_ref().map_or((String::new(), String::new()), |o| (o.key.clone(), o.source.clone()));
        // The key is namespace/pod/container.
        let (pod, container) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        match error {
            None if result.as_ref().is_some_and(|r| r.ok) => {
                self.metrics.restore(RestoreResult::Restored);
                tracing::info!(pod, container, container_id, checkpoint = %source, "container restored from its checkpoint");
            }
            None => {
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed("wrapper");
                tracing::error!(
                    pod,
                    container,
                    container_id,
                    checkpoint = %source,
                    "StartContainer succeeded but the wrapper did not restore (is the pod's runtime handler's BinaryName lazarus-runc, with the same LAZARUS_RESTORE_DIR?)"
                );
            }
            Some(message) => {
                let lines = result.map(|r| r.restore_log).unwrap_or_default();
                let log = lines.join(" | ");
                self.metrics.restore(RestoreResult::Failed);
                match fault_of(&lines, message) {
                    Fault::Environment(cause) => {
                        self.metrics.restore_failed("criu_environment");
                        tracing::warn!(pod, container, container_id, checkpoint = %source, error = %message, cause = %cause, restore_log = %log, "restore failed for a reason of this node, not of the checkpoint; it is not remembered: kubelet's retry tries the same checkpoint again");
                    }
                    fault => {
                        self.metrics.restore_failed("criu");
                        let cause = match &fault {
                            Fault::Checkpoint(cause) => cause.as_str(),
                            _ => "unclassified CRIU failure (treated as the checkpoint's)",
                        };
                        tracing::warn!(pod, container, container_id, checkpoint = %source, error = %message, cause = %cause, restore_log = %log, "restore failed; this checkpoint will be skipped until its failure expires");
                        if let Some(origin) = &origin {
                            self.remember_failure(origin, cause);
                        }
                    }
                }
            }
        }
        self.cuts.started(container_id, error.is_none() && result_ok);
        let tree = dir.join(plan::TREE_DIR);
        // Gigabytes of images: removed on the blocking pool, not on the event
        // loop (StartContainer's answer does not wait for it).
        crate::blocking::remove_tree_later(tree);
    }

    /// After containerd created the container `container_id` for `staged`:
    /// the staged tree becomes its restore plan. If that fails the container
    /// is removed again ([`discard`](Self::discard)): a container promised a
    /// restore never starts fresh.
    pub async fn commit(&self, staged: Staged, container_id: &str) -> Result<PathBuf, RestoreError> {
        let id = container_id.to_owned();
        if let Some(member) = &staged.cut_member {
            self.cuts.created(member, container_id);
        }
        match crate::blocking::run(move || staged.commit(&id)).await {
            Ok(dir) => Ok(dir),
            Err(err) => {
                tracing::error!(container_id, error = %err, "the restore plan could not be written; removing the created container");
                self.discard(container_id).await;
                Err(err)
            }
        }
    }

    /// Removes a container created for a restore that can no longer happen
    /// (its plan could not be written), so it never starts fresh by mistake.
    pub async fn discard(&self, container_id: &str) {
        if let Err(status) = self.runtime.remove_container(container_id).await {
            tracing::error!(container_id, error = %status.message(), "cannot remove a container whose restore plan failed");
        }
        self.removed(container_id).await;
    }

    /// Removes the plans of containers the runtime no longer knows (removed
    /// while lazarus was down). Run once at start; a runtime that cannot be
    /// asked leaves everything in place.
    pub async fn sweep_stale_plans(&self) {
        let restore_dir = self.config.restore_dir.clone();
        #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
        let listed = crate::blocking::run(move || {
            std::fs::read_dir(&restore_dir).map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| !name.starts_with('.') && plan::valid_container_id(name))
                    .collect::<Vec<String>>()
            })
        })
        .await;
        let Ok(ids) = listed else { return };
        for id in ids {
            match self.runtime.container_status(&id, false).await {
                Err(status) if status.code() == Code::NotFound => {
                    tracing::info!(container_id = %id, "removing the restore plan of a container that no longer exists");
                    let dir = plan::plan_dir(&self.config.restore_dir, &id);
                    if let Err(e) = crate::blocking::remove_tree(dir).await {
                        tracing::warn!(container_id = %id, error = %e, "cannot remove a stale restore plan");
                    }
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), "runtime not answering; stale restore plans stay for now");
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// After `RemoveContainer`: the plan dir goes too, before the answer (on
    /// the blocking pool: it may still hold an unpacked checkpoint).
    pub async fn removed(&self, container_id: &str) {
        if !plan::valid_container_id(container_id) {
            return;
        }
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        // One stat here spares the blocking pool for every container without a plan.
        if !dir.exists() {
            return;
        }
        if let Err(error) = crate::blocking::remove_tree(dir.clone()).await {
            tracing::warn!(container_id, path = %dir.display(), %error, "cannot remove the restore plan");
        }
    }
}

/// Serializes updates of the failures file within this process.
static FAILURES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One remembered failure of a checkpoint's restore (`restore-failures.json`:
/// `{"namespace/pod/container": [{"checkpoint": …, "recorded": RFC 3339, "reason": …}]}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Failure {
    /// The checkpoint's identity (manifest digest, archive path).
    pub(super) checkpoint: String,
    /// When the failure was recorded (RFC 3339, UTC).
    pub(super) recorded: String,
    /// The cause, for people reading the file.
    #[serde(default)]
    pub(super) reason: String,
}

/// An entry as stored: lazarus before failure expiry wrote bare checkpoint identities.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Timed(Failure),
    Legacy(String),
}

type Failures = BTreeMap<String, Vec<Failure>>;

/// The failures file; entries of the old format (no time) become entries
/// recorded `now`, and the second value says whether there were any.
fn load_failures(file: &Path, now: SystemTime) -> (Failures, bool) {
    let stored: BTreeMap<String, Vec<Stored>> = read_json(file).unwrap_or_default();
    let mut migrated = false;
    let all = stored
        .into_iter()
        .map(|(key, entries)| {
            let entries = entries
                .into_iter()
                .map(|entry| match entry {
                    Stored::Timed(failure) => failure,
                    Stored::Legacy(checkpoint) => {
                        migrated = true;
                        Failure {
                            checkpoint,
                            recorded: lazarus_format::timefmt::rfc3339_micros(now),
                            reason: "recorded by an older lazarus without a time; counted from its migration".into(),
                        }
                    }
                })
                .collect();
            (key, entries)
        })
        .collect();
    (all, migrated)
}

/// Whether `failure` was recorded longer than `expiry` before `now` (an
/// unreadable time counts as expired).
fn expired(failure: &Failure, expiry: Duration, now: SystemTime) -> bool {
    lazarus_format::timefmt::parse_rfc3339(&failure.recorded)
        .is_none_or(|recorded| now.duration_since(recorded).is_ok_and(|age| age >= expiry))
}

/// Checkpoints whose restore failed for the container `key`
/// (`namespace/pod/container`) less than `expiry` ago.
pub(super) fn failed_checkpoints(file: &Path, key: &str, expiry: Duration) -> Vec<String> {
    failed_checkpoints_at(file, key, expiry, SystemTime::now())
}

/// [`failed_checkpoints`] as of `now`. A file of the old format is rewritten
/// with its entries recorded `now` (they expire `expiry` after the migration).
pub(super) fn failed_checkpoints_at(file: &Path, key: &str, expiry: Duration, now: SystemTime) -> Vec<String> {
    let _guard = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (all, migrated) = load_failures(file, now);
    if migrated {
        tracing::info!(path = %file.display(), expiry_s = expiry.as_secs(), "failed restores recorded without a time (an older lazarus) are treated as recorded now and expire from now on");
        if let Err(e) = write_json_atomic(file, &all) {
            tracing::warn!(path = %file.display(), error = %e, "cannot rewrite the failed restores in the new format");
        }
    }
    all.get(key)
        .map(|list| list.iter().filter(|f| !expired(f, expiry, now)).map(|f| f.checkpoint.clone()).collect())
        .unwrap_or_default()
}

/// Remembers that `origin.checkpoint` failed to restore for `origin.key`
/// because of `reason`; failures older than `expiry` are dropped on the way.
pub(super) fn record_failure(file: &Path, origin: &Origin, reason: &str, expiry: Duration) -> std::io::Result<()> {
    record_failure_at(file, origin, reason, expiry, SystemTime::now())
}

/// [`record_failure`] as of `now`.
pub(super) fn record_failure_at(
    file: &Path,
    origin: &Origin,
    reason: &str,
    expiry: Duration,
    now: SystemTime,
) -> std::io::Result<()> {
    let _guard = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (mut all, _) = load_failures(file, now);
    for list in all.values_mut() {
        list.retain(|f| !expired(f, expiry, now));
    }
    let list = all.entry(origin.key.clone()).or_default();
    list.retain(|f| f.checkpoint != origin.checkpoint);
    list.push(Failure {
        checkpoint: origin.checkpoint.clone(),
        recorded: lazarus_format::timefmt::rfc3339_micros(now),
        reason: reason.to_owned(),
    });
    all.retain(|_, list| !list.is_empty());
    write_json_atomic(file, &all)
}

/// Whose fault a failed restore inside `StartContainer` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// The checkpoint's images are damaged: remembered, `latest` takes an older one.
    Checkpoint(String),
    /// The node: files CRIU cannot open or whose size differs, mounts, ports in
    /// use, permissions. Not remembered: kubelet's retry tries the checkpoint again.
    Environment(String),
    /// Neither recognised: remembered (as before failures were classified), until it expires.
    Unclassified,
}

/// What in CRIU's quoted lines marks damaged images: CRIU's image and protobuf
/// readers (`criu/image.c`, `criu/protobuf.c`) and their messages.
const CHECKPOINT_MARKS: &[&str] = &[
    "criu/image.c",
    "criu/protobuf.c",
    "Magic doesn't match",
    "magic doesn't match",
    "Unexpected EOF",
    "Failed unpacking object",
    "Corrupted",
    "Not supported images version",
    "Too old image",
    "Img trimmed",
];

/// What marks a failure of the node: regular files (`criu/files-reg.c`: "Can't
/// open file … on restore", "File … has bad size"), mounts, ports, permissions.
const ENVIRONMENT_MARKS: &[&str] = &[
    "criu/files-reg.c",
    "criu/mount.c",
    "criu/mount-v2.c",
    "Can't open file",
    "has bad size",
    "has bad mode",
    "Address already in use",
    "Permission denied",
    "Operation not permitted",
    "No space left on device",
    "Can't mount",
];

/// Classifies a failed restore by CRIU's quoted lines (`restore_log`, already
/// without known-harmless lines) or, without them, the start's error message:
/// the first line that says anything decides (CRIU's first error is the cause).
pub(super) fn fault_of(restore_log: &[String], message: &str) -> Fault {
    let picked;
    let lines: &[String] = if restore_log.is_empty() {
        picked = lazarus_format::criu_log::relevant_lines(message);
        &picked
    } else {
        restore_log
    };
    for line in lines {
        if CHECKPOINT_MARKS.iter().any(|m| line.contains(m)) {
            return Fault::Checkpoint(line.trim().to_owned());
        }
        if ENVIRONMENT_MARKS.iter().any(|m| line.contains(m)) {
            return Fault::Environment(line.trim().to_owned());
        }
    }
    Fault::Unclassified
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn origin(key: &str, checkpoint: &str) -> Origin {
        Origin { key: key.into(), checkpoint: checkpoint.into(), source: format!("local:{key}@{checkpoint}") }
    }

    #[test]
    fn failed_restores_are_remembered_per_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("restore-failures.json");
        assert!(failed_checkpoints(&file, "ns/p/c", DAY).is_empty());
        record_failure(&file, &origin("ns/p/c", "sha256:a"), "x", DAY).expect("record");
        record_failure(&file, &origin("ns/p/c", "sha256:a"), "x", DAY).expect("record twice");
        record_failure(&file, &origin("ns/p/c", "sha256:b"), "x", DAY).expect("record");
        record_failure(&file, &origin("ns/q/c", "sha256:c"), "x", DAY).expect("record");
        assert_eq!(failed_checkpoints(&file, "ns/p/c", DAY), vec!["sha256:a".to_owned(), "sha256:b".to_owned()]);
        assert_eq!(failed_checkpoints(&file, "ns/q/c", DAY), vec!["sha256:c".to_owned()]);
    }

    #[test]
    fn remembered_failures_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("restore-failures.json");
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        record_failure_at(&file, &origin("ns/p/c", "sha256:a"), "damaged", DAY, then).expect("record");
        let hour = Duration::from_secs(3600);
        assert_eq!(failed_checkpoints_at(&file, "ns/p/c", DAY, then + 23 * hour), ["sha256:a"]);
        assert!(failed_checkpoints_at(&file, "ns/p/c", DAY, then + 24 * hour).is_empty());
        // Recording another failure drops the expired ones from the file.
        record_failure_at(&file, &origin("ns/q/c", "sha256:b"), "damaged", DAY, then + 25 * hour).expect("record");
        let text = std::fs::read_to_string(&file).expect("file");
        assert!(!text.contains("sha256:a") && text.contains("sha256:b") && text.contains("damaged"), "{text}");
    }

    #[test]
    fn an_old_file_is_read_and_its_entries_count_from_the_migration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("restore-failures.json");
        std::fs::write(&file, r#"{"ns/p/c": ["sha256:a", "/archives/x.tar"]}"#).expect("old file");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(failed_checkpoints_at(&file, "ns/p/c", DAY, now), ["sha256:a", "/archives/x.tar"]);
        // Written back with the time of the migration: it expires a day later.
        let text = std::fs::read_to_string(&file).expect("file");
        assert!(text.contains("\"recorded\""), "{text}");
        assert_eq!(failed_checkpoints_at(&file, "ns/p/c", DAY, now + DAY / 2).len(), 2);
        assert!(failed_checkpoints_at(&file, "ns/p/c", DAY, now + DAY).is_empty());
    }

    #[test]
    fn criu_failures_are_the_checkpoints_or_the_nodes() {
        let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let missing = lines(&[
            "(00.01) Error (criu/files-reg.c:2353): Can't open file data/log on restore: No such file or directory",
            "(00.02) Error (criu/cr-restore.c:2522): Restoring FAILED.",
        ]);
        assert!(matches!(fault_of(&missing, ""), Fault::Environment(l) if l.contains("data/log")));
        let size = lines(&["(00.01) Error (criu/files-reg.c:2175): File data/log has bad size 1350 (expect 1200)"]);
        assert!(matches!(fault_of(&size, ""), Fault::Environment(_)));
        let port =
            lines(&["(00.01) Error (criu/sk-inet.c:900): inet: Can't bind inet socket (id 7): Address already in use"]);
        assert!(matches!(fault_of(&port, ""), Fault::Environment(_)));
        let damaged = lines(&[
            "(00.00) Error (criu/image.c:558): Magic doesn't match for inventory.img",
            "(00.01) Error (criu/cr-restore.c:2522): Restoring FAILED.",
        ]);
        assert!(matches!(fault_of(&damaged, ""), Fault::Checkpoint(l) if l.contains("inventory.img")));
        let eof = lines(&["(00.00) Error (criu/protobuf.c:72): Unexpected EOF on core-1.img"]);
        assert!(matches!(fault_of(&eof, ""), Fault::Checkpoint(_)));
        assert_eq!(fault_of(&lines(&["(00.1) Error (criu/x.c:1): something else"]), ""), Fault::Unclassified);
        // Without the wrapper's quote, the start's message is searched.
        assert!(matches!(
            fault_of(&[], "runc restore: criu failed: Error (criu/files-reg.c:2353): Can't open file x on restore"),
            Fault::Environment(_)
        ));
        assert_eq!(fault_of(&[], "runc restore: criu failed"), Fault::Unclassified);
    }
}
