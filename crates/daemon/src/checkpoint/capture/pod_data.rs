//! The container's `/dev/shm` and its `emptyDir` volumes, captured inside the cut
//! ([`lazarus_format::pod_data`] has the format and the reasons).
//!
//! What to capture is decided before the cut from the runtime spec's mounts and the pod's
//! annotations ([`PodDataSources::of`]); inside the cut, with the container frozen and after
//! CRIU's dump, every volume is measured first, the checkpoint refused if one is over its cap
//! (nothing has been written into the tree for it yet, and nothing is committed), then each is
//! archived and the manifest written ([`Checkpointer::capture_pod_data`]).
//!
//! The content is read through each mount's **host source** (the sandbox's shm directory
//! containerd binds at `/dev/shm`, kubelet's `emptyDir` directory), not through
//! `/proc/<pid>/root/<destination>`: the host path comes from the runtime, not from the
//! container's root filesystem (whose directories the container controls), and it is the
//! same kind of path the `lazarus-runc` wrapper puts the content back into.

use super::target::Target;
use super::*;
use lazarus_format::fsutil::human_size;
use lazarus_format::pod_data::{self as pd, Manifest, PodDataError, Volume};

/// Why pod data is not captured, or the checkpoint refused.
#[derive(Debug, thiserror::Error)]
pub enum PodDataCaptureError {
    /// A volume is over its cap.
    #[error(
        "{volume} holds {} in {files} files, over the {} cap ({key}); nothing was committed{hint}",
        human_size(*bytes),
        human_size(*cap)
    )]
    TooLarge {
        /// The volume (`emptyDir "scratch" at /scratch`, `/dev/shm`).
        volume: String,
        /// Its bytes.
        bytes: u64,
        /// Its files.
        files: u64,
        /// The cap.
        cap: u64,
        /// The configuration key of the cap.
        key: &'static str,
        /// What the user can do.
        hint: String,
    },
    /// Reading or archiving a volume failed.
    #[error(transparent)]
    Volume(#[from] PodDataError),
    /// Writing the manifest failed.
    #[error("writing {path}: {source}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One volume to capture (or to record as not captured).
#[derive(Debug, Clone)]
struct Source {
    name: String,
    destination: String,
    path: PathBuf,
    /// Why it is not captured; it is still measured unless `measure` is false.
    not_captured: Option<String>,
    /// Whether its content is counted (not the node's /dev/shm).
    measure: bool,
}

impl Source {
    fn volume(&self) -> Volume {
        Volume {
            name: self.name.clone(),
            destination: self.destination.clone(),
            source: self.path.display().to_string(),
            not_captured: self.not_captured.clone(),
            ..Volume::default()
        }
    }
}

/// What the cut captures of a container's pod data, decided before the cut.
#[derive(Debug, Clone, Default)]
pub(super) struct PodDataSources {
    dev_shm: Option<Source>,
    empty_dirs: Vec<Source>,
    dev_shm_max: u64,
    empty_dir_max: u64,
}

impl PodDataSources {
    /// From the runtime spec's mounts, the pod's annotations and the caps.
    pub(super) fn of(target: &Target, config: &CheckpointerConfig) -> PodDataSources {
        let mounts = pd::mounts(&target.spec);
        let switched_off = match target.pod.annotations.get(pd::CAPTURE_EMPTY_DIRS).map(|v| v.trim()) {
            None | Some("true") => None,
            Some("false") => Some(format!("switched off for the pod by {}: \"false\"", pd::CAPTURE_EMPTY_DIRS)),
            Some(other) => {
                tracing::warn!(
                    container_id = %target.id,
                    value = other,
                    "{} must be \"true\" or \"false\"; emptyDir volumes are captured",
                    pd::CAPTURE_EMPTY_DIRS
                );
                None
            }
        };
        let mut empty_dirs: Vec<Source> = Vec::new();
        for mount in &mounts {
            let Some(name) = mount.empty_dir() else { continue };
            // The last mount at a destination is the one the container sees.
            empty_dirs.retain(|s| s.destination != mount.destination);
            empty_dirs.push(Source {
                name: name.to_owned(),
                destination: mount.destination.clone(),
                path: PathBuf::from(&mount.source),
                not_captured: switched_off.clone(),
                measure: true,
            });
        }
        let dev_shm = pd::dev_shm_mount(&mounts).filter(|m| m.empty_dir().is_none()).map(|mount| {
            let (not_captured, measure) = if !mount.bind {
                (Some(format!("a {} mount of the container's own, not a bind-mounted directory", mount.kind)), false)
            } else if mount.source == pd::DEV_SHM {
                (Some("the pod shares the node's IPC namespace (hostIPC): the node's /dev/shm".to_owned()), false)
            } else {
                (None, true)
            };
            Source {
                name: pd::DEV_SHM_NAME.to_owned(),
                destination: pd::DEV_SHM.to_owned(),
                path: PathBuf::from(&mount.source),
                not_captured,
                measure,
            }
        });
        PodDataSources {
            dev_shm,
            empty_dirs,
            dev_shm_max: config.dev_shm_capture_max_size,
            empty_dir_max: config.empty_dir_capture_max_size,
        }
    }
}

impl Checkpointer {
    /// Before the cut, while the container runs: a volume already over its cap refuses the
    /// checkpoint without freezing the container or dumping it (the cut checks again).
    pub(super) async fn check_pod_data(&self, id: &str, sources: &PodDataSources) -> Result<(), CheckpointError> {
        if sources.dev_shm.is_none() && sources.empty_dirs.is_empty() {
            return Ok(());
        }
        let sources = sources.clone();
        crate::blocking::run(move || measure_all(&sources).map(drop))
            .await
            .map_err(|source| CheckpointError::PodData { container_id: id.to_owned(), source })
    }

    /// `/dev/shm` and the `emptyDir` volumes into `tree` (the container is frozen): measured,
    /// refused over their caps, archived, listed in the manifest.
    pub(super) async fn capture_pod_data(
        &self,
        id: &str,
        sources: &PodDataSources,
        tree: &Path,
    ) -> Result<(), CheckpointError> {
        let (sources, tree) = (sources.clone(), tree.to_owned());
        let manifest = crate::blocking::run(move || write_pod_data(&sources, &tree))
            .await
            .map_err(|source| CheckpointError::PodData { container_id: id.to_owned(), source })?;
        for volume in manifest.volumes() {
            tracing::info!(
                container_id = id,
                volume = %volume.describe(),
                files = volume.files,
                bytes = volume.bytes,
                captured = volume.archive.is_some(),
                not_captured = volume.not_captured.as_deref(),
                "pod data"
            );
        }
        Ok(())
    }
}

/// Every volume measured, the caps checked: a refusal names the first one over. Blocking
/// (it walks the volumes): called on the blocking pool only.
fn measure_all(sources: &PodDataSources) -> Result<Vec<(Volume, &Source, bool)>, PodDataCaptureError> {
    let mut measured: Vec<(Volume, &Source, bool)> = Vec::new();
    let mut seen_names = std::collections::HashMap::<String, pd::Usage>::new();
    let all = sources.dev_shm.iter().map(|s| (s, true)).chain(sources.empty_dirs.iter().map(|s| (s, false)));
    for (source, is_shm) in all {
        let mut volume = source.volume();
        let described = volume.describe();
        if source.measure {
            let usage = match seen_names.get(&source.name).filter(|_| !is_shm) {
                Some(usage) => *usage,
                None if source.not_captured.is_some() => pd::measure_only(&source.path, &described)?,
                None => pd::measure(&source.path, &described)?,
            };
            if !is_shm {
                seen_names.insert(source.name.clone(), usage);
            }
            (volume.files, volume.bytes) = (usage.files, usage.bytes);
        }
        let (cap, key, hint) = if is_shm {
            (sources.dev_shm_max, "dev_shm_capture_max_size", String::new())
        } else {
            (
                sources.empty_dir_max,
                "empty_dir_capture_max_size",
                format!(
                    "; raise the cap, or annotate the pod {}: \"false\" to leave its emptyDir volumes out",
                    pd::CAPTURE_EMPTY_DIRS
                ),
            )
        };
        if source.not_captured.is_none() && volume.bytes > cap {
            return Err(PodDataCaptureError::TooLarge {
                volume: described,
                bytes: volume.bytes,
                files: volume.files,
                cap,
                key,
                hint,
            });
        }
        measured.push((volume, source, is_shm));
    }
    Ok(measured)
}

/// Measures, checks the caps, archives and writes the manifest; returns it.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (capture_pod_data)")]
fn write_pod_data(sources: &PodDataSources, tree: &Path) -> Result<Manifest, PodDataCaptureError> {
    // Every volume measured before anything is written.
    let measured = measure_all(sources)?;
    let mut manifest = Manifest { version: pd::VERSION, ..Manifest::default() };
    let mut archived = std::collections::HashMap::<String, String>::new();
    for (mut volume, source, is_shm) in measured {
        if source.not_captured.is_none() {
            let rel =
                if is_shm { pd::DEV_SHM_TAR.to_owned() } else { format!("{}/{}.tar", pd::EMPTY_DIRS_DIR, source.name) };
            if is_shm || !archived.contains_key(&source.name) {
                let path = tree.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_failed(parent, e))?;
                }
                let file = std::fs::File::create(&path).map_err(|e| io_failed(&path, e))?;
                let mut out = std::io::BufWriter::new(file);
                pd::capture(&source.path, &mut out)?;
                std::io::Write::flush(&mut out).map_err(|e| io_failed(&path, e))?;
                if !is_shm {
                    archived.insert(source.name.clone(), rel.clone());
                }
            }
            volume.archive = Some(archived.get(&source.name).filter(|_| !is_shm).cloned().unwrap_or(rel));
        }
        if is_shm {
            manifest.dev_shm = Some(volume);
        } else {
            manifest.empty_dirs.push(volume);
        }
    }
    let path = tree.join(pd::MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other).map_err(|e| io_failed(&path, e))?;
    std::fs::write(&path, json).map_err(|e| io_failed(&path, e))?;
    Ok(manifest)
}

fn io_failed(path: &Path, source: std::io::Error) -> PodDataCaptureError {
    PodDataCaptureError::Manifest { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(shm: Option<&Path>, scratch: &Path, off: bool) -> PodDataSources {
        PodDataSources {
            dev_shm: shm.map(|p| Source {
                name: pd::DEV_SHM_NAME.into(),
                destination: pd::DEV_SHM.into(),
                path: p.to_owned(),
                not_captured: None,
                measure: true,
            }),
            empty_dirs: vec![Source {
                name: "scratch".into(),
                destination: "/scratch".into(),
                path: scratch.to_owned(),
                not_captured: off.then(|| "switched off".to_owned()),
                measure: true,
            }],
            dev_shm_max: 1 << 20,
            empty_dir_max: 100,
        }
    }

    #[test]
    #[expect(clippy::disallowed_methods, reason = "test set-up")]
    fn volumes_are_captured_listed_and_refused_over_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (shm, scratch, tree) = (dir.path().join("shm"), dir.path().join("scratch"), dir.path().join("tree"));
        for d in [&shm, &scratch, &tree] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(shm.join("PostgreSQL.1"), b"shared").expect("write");
        std::fs::write(scratch.join("log"), b"1\n2\n").expect("write");

        let manifest = write_pod_data(&sources(Some(&shm), &scratch, false), &tree).expect("capture");
        let shm_entry = manifest.dev_shm.as_ref().expect("shm");
        assert_eq!((shm_entry.files, shm_entry.bytes, shm_entry.archive.as_deref()), (1, 6, Some(pd::DEV_SHM_TAR)));
        assert_eq!(manifest.empty_dirs[0].archive.as_deref(), Some("empty-dirs/scratch.tar"));
        assert!(tree.join("empty-dirs/scratch.tar").is_file() && tree.join(pd::DEV_SHM_TAR).is_file());
        assert_eq!(Manifest::read(&tree).expect("read"), Some(manifest));

        std::fs::write(scratch.join("big"), vec![b'x'; 200]).expect("write");
        let tree2 = dir.path().join("tree2");
        std::fs::create_dir_all(&tree2).expect("mkdir");
        let err = write_pod_data(&sources(None, &scratch, false), &tree2).expect_err("over");
        let text = err.to_string();
        assert!(
            text.contains("emptyDir \"scratch\" at /scratch holds 204 B in 2 files, over the 100 B cap")
                && text.contains("empty_dir_capture_max_size")
                && text.contains(pd::CAPTURE_EMPTY_DIRS),
            "{text}"
        );
        assert!(!tree2.join(pd::MANIFEST).exists() && !tree2.join("empty-dirs").exists(), "nothing written");

        // Switched off: measured and listed, not archived, never over a cap.
        let manifest = write_pod_data(&sources(None, &scratch, true), &tree2).expect("off");
        let entry = &manifest.empty_dirs[0];
        assert_eq!((entry.archive.as_deref(), entry.files, entry.bytes), (None, 2, 204));
        assert_eq!(entry.not_captured.as_deref(), Some("switched off"));
        assert!(!tree2.join("empty-dirs").exists());
    }

    use crate::runtime::fake::FakeRuntime;
    use lazarus_proto::v1;

    /// An engine over the fake runtime whose container `c1` mounts `scratch` as an emptyDir
    /// and `shm` at /dev/shm; caps of 100 bytes.
    fn engine(dir: &Path, scratch: &Path, shm: &Path) -> (Checkpointer, std::sync::Arc<FakeRuntime>) {
        let store = Arc::new(Store::open(&dir.join("state/store")).expect("store"));
        let fake = FakeRuntime::new();
        let spec = serde_json::json!({"mounts": [
            {"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind"]},
            {"destination": "/scratch", "type": "bind", "source": scratch, "options": ["rbind"]},
        ]});
        let info = serde_json::json!({"pid": 1, "sandboxID": "sb1", "runtimeSpec": spec}).to_string();
        fake.script(|s| {
            s.list_containers.always(Ok(vec![v1::Container { id: "c1".into(), ..Default::default() }]));
            s.container_status.always(Ok(v1::ContainerStatusResponse {
                status: Some(v1::ContainerStatus {
                    id: "c1".into(),
                    state: v1::ContainerState::ContainerRunning as i32,
                    metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 0 }),
                    image_id: format!("sha256:{}", "a".repeat(64)),
                    ..Default::default()
                }),
                info: [("info".to_owned(), info)].into(),
            }));
            s.pod_sandbox_status.always(Ok(v1::PodSandboxStatusResponse {
                status: Some(v1::PodSandboxStatus {
                    id: "sb1".into(),
                    metadata: Some(v1::PodSandboxMetadata {
                        name: "p".into(),
                        namespace: "ns".into(),
                        uid: "u".into(),
                        attempt: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            s.version.always(Ok(v1::VersionResponse { runtime_name: "containerd".into(), ..Default::default() }));
            s.pause_task.always(Ok(()));
            s.resume_task.always(Ok(()));
            s.checkpoint_task.always(Ok(()));
        });
        let config = CheckpointerConfig {
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            max_concurrent: 2,
            compression: Compression::Zstd,
            store_max_size: None,
            registry: lazarus_registry::RegistrySettings::default(),
            registry_layout: crate::checkpoint::RegistryLayout::default(),
            empty_dir_capture_max_size: 100,
            dev_shm_capture_max_size: 100,
        };
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).expect("upper");
        (Checkpointer::new(fake.clone(), store, config).with_upperdir(&upper), fake)
    }

    fn cut_calls(fake: &FakeRuntime) -> Vec<String> {
        fake.calls().into_iter().filter(|c| c.ends_with("Task c1")).collect()
    }

    #[tokio::test]
    #[expect(clippy::disallowed_methods, reason = "test set-up")]
    async fn over_the_cap_before_the_cut_nothing_is_frozen_and_in_the_cut_it_is_thawed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = dir.path().join("pods/u/volumes/kubernetes.io~empty-dir/scratch");
        let shm = dir.path().join("shm");
        for d in [&scratch, &shm] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(scratch.join("big"), vec![b'x'; 101]).expect("write");
        let (engine, fake) = engine(dir.path(), &scratch, &shm);
        let err = engine.checkpoint("c1", None).await.expect_err("over the cap");
        assert_eq!(err.reason(), "pod_data_too_large", "{err}");
        assert!(err.to_string().contains("emptyDir \"scratch\" at /scratch holds 101 B in 1 files"), "{err}");
        assert_eq!(Status::from(err).code(), tonic::Code::FailedPrecondition);
        assert_eq!(cut_calls(&fake), Vec::<String>::new(), "refused before the container was frozen");

        // Under the cap before the cut, over it inside (written while the dump ran): refused
        // there, the container thawed, nothing committed.
        std::fs::write(scratch.join("big"), b"small").expect("write");
        let shm2 = shm.clone();
        fake.script(move |s| {
            let shm = shm2.clone();
            s.dump_hook = Some(Arc::new(move |_options| {
                std::fs::write(shm.join("segment"), vec![0_u8; 4096]).expect("grow /dev/shm");
            }));
        });
        let err = engine.checkpoint("c1", None).await.expect_err("over the cap in the cut");
        assert!(err.to_string().contains("/dev/shm holds 4.0 KiB in 1 files, over the 100 B cap"), "{err}");
        assert_eq!(cut_calls(&fake), ["PauseTask c1", "CheckpointTask c1", "ResumeTask c1"]);
        assert!(engine.store().list().expect("list").is_empty(), "nothing committed");

        // Under the caps: committed, with the manifest and both tars in the layer.
        std::fs::remove_file(shm.join("segment")).expect("rm");
        fake.script(|s| s.dump_hook = None);
        let taken = engine.checkpoint("c1", None).await.expect("checkpoint");
        let manifest: serde_json::Value =
            serde_json::from_slice(&engine.store().read_blob(&taken.digest).expect("manifest")).expect("json");
        let layer = engine.store().read_blob(manifest["layers"][0]["digest"].as_str().expect("layer")).expect("blob");
        let tar = zstd::decode_all(&layer[..]).expect("zstd");
        let mut names = Vec::new();
        let mut pod_data = None;
        for entry in tar::Archive::new(&tar[..]).entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name.ends_with(pd::MANIFEST) {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
                pod_data = Some(serde_json::from_str::<Manifest>(&text).expect("manifest"));
            }
            names.push(name);
        }
        for wanted in [pd::DEV_SHM_TAR, "empty-dirs/scratch.tar", pd::MANIFEST] {
            assert!(names.iter().any(|n| n.trim_start_matches("./") == wanted), "{wanted} not in {names:?}");
        }
        let pod_data = pod_data.expect("pod-data.json");
        assert_eq!(pod_data.empty_dirs[0].bytes, 5);
        assert_eq!(pod_data.dev_shm.as_ref().map(|v| v.files), Some(0));
    }
}
