//! The wrapper's decisions and its create → restore flow, with a fake runc (a shell script
//! that records its arguments and plays CRIU's part by writing `restore.log`).

use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A restore dir, a bundle with a rootfs, a checkpoint tree, and a fake runc.
struct Scene {
    dir: tempfile::TempDir,
    wrapper: Wrapper,
}

const ID: &str = "0123abcd";

impl Scene {
    /// `runc_script` is the fake runc's body after its argument recording; `$WORK` is the
    /// `--work-path` it was given, `$LOG` the `--log`.
    fn new(runc_script: &str) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let runc = root.join("fake-runc");
        fs::write(
            &runc,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {calls}\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in\n    \
                 --work-path) WORK=$2 ;;\n    --log) LOG=$2 ;;\n  esac\n  shift\ndone\n{runc_script}\n",
                calls = root.join("runc-args").display()
            ),
        )
        .expect("write fake runc");
        fs::set_permissions(&runc, fs::Permissions::from_mode(0o755)).expect("chmod");

        let bundle = root.join("bundle");
        fs::create_dir_all(bundle.join("rootfs/bin")).expect("mkdir");
        fs::write(bundle.join("rootfs/bin/vi"), "vi").expect("write");
        fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["/bin/sh"],"cwd":"/"},"root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.container-type":"container"},"linux":{"resources":{"memory":{"limit":9223372036854771712}}}}"#,
        )
        .expect("write config.json");

        let tree = root.join("tree");
        fs::create_dir_all(tree.join("checkpoint")).expect("mkdir");
        fs::write(tree.join("checkpoint/inventory.img"), "images").expect("write");
        fs::write(tree.join("deleted.files"), r#"["/bin/vi"]"#).expect("write");
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(9);
        header.set_mode(0o644);
        // Owned by whoever runs the test: the restore chowns, which only root may do to others.
        header.set_uid(nix::unistd::Uid::effective().as_raw().into());
        header.set_gid(nix::unistd::Gid::effective().as_raw().into());
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, "data.txt", &b"stateful\n"[..]).expect("append");
        fs::write(tree.join("rootfs-diff.tar"), tar.into_inner().expect("tar")).expect("write");

        let restore_dir = root.join("restore");
        fs::create_dir_all(&restore_dir).expect("mkdir");
        Scene { wrapper: Wrapper { restore_dir, runc: Some(runc), path: None }, dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn plan_dir(&self) -> PathBuf {
        self.wrapper.restore_dir.join(ID)
    }

    fn write_plan(&self, json: &str) {
        fs::create_dir_all(self.plan_dir()).expect("mkdir");
        fs::write(self.plan_dir().join("plan.json"), json).expect("write plan");
    }

    fn standard_plan(&self, tcp_close: bool) {
        self.write_plan(&format!(
            r#"{{"version":1,"source":"local:ns/pod/c:1@sha256:ab","checkpoint_dir":"{}","tcp_close":{tcp_close}}}"#,
            self.path("tree").display()
        ));
    }

    /// The shim's create call.
    fn create_args(&self) -> Vec<OsString> {
        let bundle = self.path("bundle").display().to_string();
        let log = self.path("log.json").display().to_string();
        os(&[
            "--root",
            "/run/runc/k8s.io",
            "--log",
            &log,
            "--log-format",
            "json",
            "create",
            "--bundle",
            &bundle,
            "--pid-file",
            &format!("{bundle}/init.pid"),
            "--no-new-keyring",
            ID,
        ])
    }

    fn runc_args(&self) -> Option<Vec<String>> {
        fs::read_to_string(self.path("runc-args")).ok().map(|text| text.lines().map(str::to_owned).collect())
    }

    fn result(&self) -> RestoreResult {
        serde_json::from_slice(&fs::read(self.plan_dir().join("result.json")).expect("result.json")).expect("json")
    }

    fn wrapper_log(&self) -> String {
        fs::read_to_string(self.plan_dir().join("wrapper.log")).unwrap_or_default()
    }
}

#[test]
fn calls_without_a_plan_go_to_runc_untouched() {
    let scene = Scene::new("exit 0");
    let args = scene.create_args();
    for args in [
        args.clone(),
        os(&["--root", "/r", "start", ID]),
        os(&["--root", "/r", "delete", "--force", ID]),
        os(&["--version"]),
    ] {
        match scene.wrapper.handle(&args) {
            Action::Exec { runc, args: passed, .. } => {
                assert_eq!(Some(runc), scene.wrapper.runc);
                assert_eq!(passed, args);
            }
            other => panic!("expected an exec, got {other:?}"),
        }
    }
    assert!(!scene.plan_dir().exists(), "nothing written without a plan");
    // A plan directory without plan.json is no plan.
    fs::create_dir_all(scene.plan_dir()).expect("mkdir");
    assert!(matches!(scene.wrapper.handle(&args), Action::Exec { .. }));
    assert!(scene.runc_args().is_none(), "runc is exec'd by main, never run by handle");
}

#[test]
fn create_with_a_plan_restores() {
    let scene = Scene::new("echo '(00.01) Will drop all TCP connections on restore' > \"$WORK/restore.log\"; exit 0");
    scene.standard_plan(true);
    fs::create_dir_all(scene.path("etc-criu")).expect("mkdir");
    let action = scene.wrapper.handle(&scene.create_args());
    assert!(matches!(action, Action::Exit(0)), "{action:?}: {:?}", fs::read_to_string(scene.path("log.json")));

    let plan_dir = scene.plan_dir();
    let bundle = scene.path("bundle");
    assert_eq!(
        scene.runc_args().expect("runc ran"),
        [
            "--root",
            "/run/runc/k8s.io",
            "--log",
            &scene.path("log.json").display().to_string(),
            "--log-format",
            "json",
            "restore",
            "--detach",
            "--image-path",
            &scene.path("tree/checkpoint").display().to_string(),
            "--work-path",
            &plan_dir.join("work").display().to_string(),
            "--bundle",
            &bundle.display().to_string(),
            "--pid-file",
            &format!("{}/init.pid", bundle.display()),
            "--no-subreaper",
            "--file-locks",
            ID,
        ]
    );
    // The writable layer: the diff applied, the deletion done.
    assert_eq!(fs::read_to_string(bundle.join("rootfs/data.txt")).expect("data.txt"), "stateful\n");
    assert!(!bundle.join("rootfs/bin/vi").exists());
    // tcp-close through runc's org.criu.config annotation; the rest of config.json kept.
    let criu_conf = plan_dir.join("criu.conf");
    assert!(fs::read_to_string(&criu_conf).expect("criu.conf").lines().any(|line| line == "tcp-close"));
    let spec: Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("read")).expect("json");
    assert_eq!(spec["annotations"]["org.criu.config"], criu_conf.display().to_string());
    assert_eq!(spec["annotations"]["io.kubernetes.cri.container-type"], "container");
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 9_223_372_036_854_771_712_u64);
    assert_eq!(spec["process"]["args"][0], "/bin/sh");
    assert!(
        fs::read_dir(&bundle).expect("read_dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary file left in the bundle"
    );
    // The outcome.
    let result = scene.result();
    assert!(result.ok && result.error.is_empty(), "{result:?}");
    assert_eq!(result.restore_log, ["(00.01) Will drop all TCP connections on restore"]);
    assert!(result.finished.ends_with('Z'));
    assert!(plan_dir.join("restored").exists());
    assert!(!scene.path("log.json").exists(), "nothing reported to runc's log on success");
    assert!(
        scene.wrapper_log().contains("create: restored from local:ns/pod/c:1@sha256:ab in"),
        "{}",
        scene.wrapper_log()
    );

    // The shim's start: runc is not called.
    fs::remove_file(scene.path("runc-args")).expect("rm");
    let action = scene.wrapper.handle(&os(&["--root", "/r", "--log", "/l", "--log-format", "json", "start", ID]));
    assert!(matches!(action, Action::Exit(0)), "{action:?}");
    assert!(scene.runc_args().is_none());
    let log = scene.wrapper_log();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.lines().nth(1).is_some_and(|line| line.contains("start: the container was restored, runc start skipped"))
    );
    // Other calls of the restored container are runc's.
    assert!(matches!(scene.wrapper.handle(&os(&["--root", "/r", "state", ID])), Action::Exec { .. }));
}

#[test]
fn tcp_close_false_keeps_the_spec_and_restores_connections() {
    let scene = Scene::new("exit 0");
    scene.standard_plan(false);
    let before = fs::read(scene.path("bundle/config.json")).expect("read");
    assert!(matches!(scene.wrapper.handle(&scene.create_args()), Action::Exit(0)));
    assert_eq!(fs::read(scene.path("bundle/config.json")).expect("read"), before);
    assert!(!scene.plan_dir().join("criu.conf").exists());
    assert!(scene.runc_args().expect("ran").contains(&"--tcp-established".to_owned()));
}

#[test]
fn a_failed_restore_is_reported_where_containerds_shim_looks() {
    let scene = Scene::new(
        "cat > \"$WORK/restore.log\" <<'EOF'\n(00.000100) Version: 4.1.1\n\
         (00.010000) Error (criu/image.c:463): Unable to open inventory.img: bad magic\n\
         (00.010300) Error (criu/cr-restore.c:2522): Restoring FAILED.\nEOF\n\
         printf '%s\\n' '{\"level\":\"error\",\"msg\":\"criu failed: type NOTIFY errno 0\\nlog file: x\",\"time\":\"2026-01-01T00:00:00Z\"}' >> \"$LOG\"\n\
         exit 3",
    );
    // Earlier runs left an error in runc's log: it must not be taken for this one's.
    fs::write(
        scene.path("log.json"),
        "{\"level\":\"error\",\"msg\":\"old failure\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
    )
    .expect("write");
    scene.standard_plan(true);
    let action = scene.wrapper.handle(&scene.create_args());
    assert!(matches!(action, Action::Exit(3)), "{action:?}");

    let log = fs::read_to_string(scene.path("log.json")).expect("runc log");
    let last: Value = serde_json::from_str(log.lines().last().expect("a line")).expect("json");
    assert_eq!(last["level"], "error");
    let msg = last["msg"].as_str().expect("msg");
    assert!(
        msg.starts_with(&format!("lazarus: restoring container {ID} from local:ns/pod/c:1@sha256:ab failed: runc restore failed (exit status: 3): criu failed: type NOTIFY errno 0 log file: x; criu restore.log (")),
        "{msg}"
    );
    assert!(msg.contains("Error (criu/image.c:463): Unable to open inventory.img: bad magic | "), "{msg}");
    assert!(!msg.contains("old failure"), "{msg}");
    let result = scene.result();
    assert!(!result.ok);
    assert_eq!(result.error, msg);
    assert_eq!(result.restore_log.len(), 3);
    assert!(!scene.plan_dir().join("restored").exists());
    assert!(scene.wrapper_log().contains("create: restore failed after"));

    // The shim's start after a failed create is runc's (and fails there, as it should).
    assert!(matches!(scene.wrapper.handle(&os(&["start", ID])), Action::Exec { .. }));
    assert!(scene.wrapper_log().contains("start: planned but not restored (no marker), passed to runc"));
}

#[test]
fn unusable_plans_fail_without_running_runc() {
    let scene = Scene::new("exit 0");
    for (plan, create, expected) in [
        (
            r#"{"version":2}"#.to_owned(),
            scene.create_args(),
            "has version 2; this lazarus-runc understands version 1 only",
        ),
        (
            format!(r#"{{"version":1,"source":"s","checkpoint_dir":"{}"}}"#, scene.path("nowhere").display()),
            scene.create_args(),
            "the checkpoint has no CRIU images: ",
        ),
        (
            format!(r#"{{"version":1,"source":"s","checkpoint_dir":"{}"}}"#, scene.path("tree").display()),
            {
                let mut args = scene.create_args();
                args.insert(args.len() - 1, "--preserve-fds".into());
                args.insert(args.len() - 1, "1".into());
                args
            },
            "runc create --preserve-fds 1 cannot be honoured by runc restore",
        ),
    ] {
        scene.write_plan(&plan);
        // A CRIU log of an earlier attempt is not this one's.
        fs::create_dir_all(scene.plan_dir().join("work")).expect("mkdir");
        fs::write(scene.plan_dir().join("work/restore.log"), "(0.1) Error (criu/x.c:1): stale\n").expect("write");
        let action = scene.wrapper.handle(&create);
        assert!(matches!(action, Action::Exit(1)), "{action:?}");
        let result = scene.result();
        assert!(result.restore_log.is_empty() && !result.error.contains("stale"), "{result:?}");
        assert!(!result.ok && result.error.starts_with(&format!("lazarus: restoring container {ID} from ")));
        assert!(result.error.contains(expected), "{} lacks {expected}", result.error);
        let log = fs::read_to_string(scene.path("log.json")).expect("log");
        assert!(log.lines().last().is_some_and(|line| line.contains(expected)), "{log}");
        assert!(scene.runc_args().is_none(), "runc ran");
    }
    // Nothing touched the rootfs: the failures came before the diff.
    assert!(scene.path("bundle/rootfs/bin/vi").exists());
}

#[test]
fn a_criu_config_of_the_container_stays_in_effect() {
    let scene = Scene::new("exit 0");
    let theirs = scene.path("theirs.conf");
    fs::write(&theirs, "log-level 4").expect("write");
    let config = scene.path("bundle/config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&config).expect("read")).expect("json");
    spec["annotations"]["org.criu.config"] = Value::String(theirs.display().to_string());
    fs::write(&config, serde_json::to_vec(&spec).expect("json")).expect("write");
    scene.standard_plan(true);
    assert!(matches!(scene.wrapper.handle(&scene.create_args()), Action::Exit(0)));
    let ours = fs::read_to_string(scene.plan_dir().join("criu.conf")).expect("read");
    assert!(ours.starts_with("log-level 4\n") && ours.ends_with("tcp-close\n"), "{ours}");
}

#[test]
fn finds_the_real_runc_on_path_but_never_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [not_exec, me, real] = ["a", "b", "c"].map(|d| dir.path().join(d));
    for d in [&not_exec, &me, &real] {
        fs::create_dir(d).expect("mkdir");
    }
    fs::write(not_exec.join("runc"), "").expect("write");
    symlink(std::env::current_exe().expect("current_exe"), me.join("runc")).expect("symlink");
    fs::write(real.join("runc"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(real.join("runc"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths([
        "relative",
        &not_exec.display().to_string(),
        &me.display().to_string(),
        &real.display().to_string(),
    ])
    .expect("join");
    let wrapper = Wrapper { restore_dir: dir.path().into(), runc: None, path: Some(path) };
    assert_eq!(wrapper.real_runc().expect("runc"), real.join("runc"));

    let none = Wrapper { path: Some(std::env::join_paths([&me]).expect("join")), ..wrapper.clone() };
    let err = none.real_runc().expect_err("only itself");
    assert!(err.to_string().starts_with("no runc to run: LAZARUS_RUNC is not set and PATH ("), "{err}");
    let itself = Wrapper { runc: Some(me.join("runc")), ..wrapper };
    assert!(matches!(itself.real_runc(), Err(WrapperError::RuncIsSelf(_))));
    // A failed lookup is reported to runc's log.
    let log = dir.path().join("log.json");
    let action = none.handle(&os(&["--log", &log.display().to_string(), "state", ID]));
    assert!(matches!(action, Action::Exit(1)));
    assert!(fs::read_to_string(&log).expect("log").contains("lazarus-runc: no runc to run"));
}

/// Pod data in the scene: a `/dev/shm` and an `emptyDir` captured into the tree (their old
/// content), the new container's directories (holding something of their own) and mounts in
/// `config.json`. Returns (new shm dir, new emptyDir dir).
fn with_pod_data(scene: &Scene, mounts: &[(&str, &Path, &str)]) -> (PathBuf, PathBuf) {
    let old_shm = scene.path("old/shm");
    let old_scratch = scene.path("old/pods/u1/volumes/kubernetes.io~empty-dir/scratch");
    for (dir, file, text) in [(&old_shm, "PostgreSQL.42", "segment"), (&old_scratch, "log", "1\n2\n3\n")] {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(file), text).expect("write");
    }
    let tree = scene.path("tree");
    fs::create_dir_all(tree.join(pod_data::EMPTY_DIRS_DIR)).expect("mkdir");
    let shm_tar = fs::File::create(tree.join(pod_data::DEV_SHM_TAR)).expect("create");
    pod_data::capture(&old_shm, shm_tar).expect("capture shm");
    let scratch_tar = fs::File::create(tree.join("empty-dirs/scratch.tar")).expect("create");
    pod_data::capture(&old_scratch, scratch_tar).expect("capture scratch");
    let manifest = Manifest {
        version: pod_data::VERSION,
        dev_shm: Some(pod_data::Volume {
            name: pod_data::DEV_SHM_NAME.into(),
            destination: "/dev/shm".into(),
            source: old_shm.display().to_string(),
            archive: Some(pod_data::DEV_SHM_TAR.into()),
            files: 1,
            bytes: 7,
            not_captured: None,
        }),
        empty_dirs: vec![pod_data::Volume {
            name: "scratch".into(),
            destination: "/scratch".into(),
            source: old_scratch.display().to_string(),
            archive: Some("empty-dirs/scratch.tar".into()),
            files: 1,
            bytes: 6,
            not_captured: None,
        }],
    };
    fs::write(tree.join(pod_data::MANIFEST), serde_json::to_vec(&manifest).expect("json")).expect("write");

    let new_shm = scene.path("new/shm");
    let new_scratch = scene.path("new/pods/u2/volumes/kubernetes.io~empty-dir/scratch");
    for dir in [&new_shm, &new_scratch] {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join("new-pod-file"), "not from the checkpoint").expect("write");
    }
    let config_path = scene.path("bundle/config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&config_path).expect("read")).expect("json");
    spec["mounts"] = mounts
        .iter()
        .map(|(destination, source, kind)| {
            let options: &[&str] = if *kind == "bind" { &["rbind", "rw"] } else { &["rw"] };
            serde_json::json!({"destination": destination, "type": kind, "source": source, "options": options})
        })
        .collect();
    fs::write(&config_path, serde_json::to_vec(&spec).expect("json")).expect("write");
    (new_shm, new_scratch)
}

#[test]
fn dev_shm_and_empty_dirs_are_put_back_before_runc_restores() {
    // The fake runc sees what CRIU would: the files there when it runs.
    let scene = Scene::new("cat /dev/null \"$SHM/PostgreSQL.42\" \"$SCRATCH/log\" > \"$WORK/../seen\" || exit 7");
    let new_shm = scene.path("new/shm");
    let new_scratch = scene.path("new/pods/u2/volumes/kubernetes.io~empty-dir/scratch");
    with_pod_data(&scene, &[("/dev/shm", &new_shm, "bind"), ("/scratch", &new_scratch, "bind")]);
    let runc = scene.wrapper.runc.clone().expect("runc");
    let script = fs::read_to_string(&runc).expect("read");
    let script = script.replacen(
        "#!/bin/sh\n",
        &format!("#!/bin/sh\nSHM={}\nSCRATCH={}\n", new_shm.display(), new_scratch.display()),
        1,
    );
    fs::write(&runc, script).expect("write");
    scene.standard_plan(false);
    let action = scene.wrapper.handle(&scene.create_args());
    assert!(matches!(action, Action::Exit(0)), "{action:?}: {:?}", fs::read_to_string(scene.path("log.json")));
    assert_eq!(fs::read_to_string(scene.plan_dir().join("seen")).expect("seen"), "segment1\n2\n3\n");
    assert!(!new_shm.join("new-pod-file").exists() && !new_scratch.join("new-pod-file").exists(), "replaced");
}

#[test]
fn pod_data_another_container_of_the_cut_put_back_is_left_as_it_is() {
    let scene = Scene::new("exit 0");
    let new_shm = scene.path("new/shm");
    let new_scratch = scene.path("new/pods/u2/volumes/kubernetes.io~empty-dir/scratch");
    with_pod_data(&scene, &[("/dev/shm", &new_shm, "bind"), ("/scratch", &new_scratch, "bind")]);
    scene.write_plan(&format!(
        r#"{{"version":1,"source":"s","checkpoint_dir":"{}","tcp_close":false,"skip_pod_data":["/dev/shm"]}}"#,
        scene.path("tree").display()
    ));
    let action = scene.wrapper.handle(&scene.create_args());
    assert!(matches!(action, Action::Exit(0)), "{action:?}: {:?}", fs::read_to_string(scene.path("log.json")));
    // The sibling's /dev/shm (it has run since) stays; the emptyDir this container alone mounts is put back.
    assert!(new_shm.join("new-pod-file").exists(), "skipped: /dev/shm untouched");
    assert!(!new_shm.join("PostgreSQL.42").exists(), "nothing of the checkpoint's written into it");
    assert!(!new_scratch.join("new-pod-file").exists() && new_scratch.join("log").exists(), "scratch replaced");
}

#[test]
fn pod_data_that_cannot_go_back_fails_the_restore_before_anything_changes() {
    let scene = Scene::new("exit 0");
    let new_shm = scene.path("new/shm");
    let hostpath = scene.path("srv/data");
    fs::create_dir_all(&hostpath).expect("mkdir");
    for (mounts, expected) in [
        (vec![("/dev/shm", new_shm.as_path(), "bind")], "mounts nothing at /scratch"),
        (
            vec![("/dev/shm", new_shm.as_path(), "bind"), ("/scratch", hostpath.as_path(), "bind")],
            "srv/data, not the pod's emptyDir",
        ),
        (
            vec![("/dev/shm", Path::new("shm"), "tmpfs"), ("/scratch", hostpath.as_path(), "bind")],
            "/dev/shm is a tmpfs mount, not a bind mount",
        ),
    ] {
        with_pod_data(&scene, &mounts);
        let _ = fs::remove_file(scene.path("log.json"));
        scene.standard_plan(false);
        let action = scene.wrapper.handle(&scene.create_args());
        assert!(matches!(action, Action::Exit(1)), "{expected}: {action:?}");
        let log = fs::read_to_string(scene.path("log.json")).expect("runc log");
        assert!(log.contains("putting back the checkpoint's pod data") && log.contains(expected), "{expected}: {log}");
        assert!(scene.runc_args().is_none(), "{expected}: runc must not run");
        assert!(scene.path("bundle/rootfs/bin/vi").exists(), "{expected}: the rootfs is untouched");
        assert_eq!(
            fs::read_to_string(new_shm.join("new-pod-file")).ok().as_deref(),
            Some("not from the checkpoint"),
            "{expected}: /dev/shm untouched"
        );
    }
}

#[test]
fn an_empty_dir_left_out_with_content_is_refused_into_an_empty_one() {
    let scene = Scene::new("exit 0");
    let new_shm = scene.path("new/shm");
    let new_scratch = scene.path("new/pods/u2/volumes/kubernetes.io~empty-dir/scratch");
    with_pod_data(&scene, &[("/dev/shm", &new_shm, "bind"), ("/scratch", &new_scratch, "bind")]);
    let tree = scene.path("tree");
    let mut manifest = Manifest::read(&tree).expect("read").expect("manifest");
    manifest.empty_dirs[0].archive = None;
    manifest.empty_dirs[0].not_captured = Some("switched off for the pod by lazarus.dev/capture-empty-dirs".into());
    fs::write(tree.join(pod_data::MANIFEST), serde_json::to_vec(&manifest).expect("json")).expect("write");
    fs::remove_file(new_scratch.join("new-pod-file")).expect("rm");
    scene.standard_plan(false);
    let action = scene.wrapper.handle(&scene.create_args());
    assert!(matches!(action, Action::Exit(1)), "{action:?}");
    let log = fs::read_to_string(scene.path("log.json")).expect("runc log");
    assert!(
        log.contains("emptyDir \\\"scratch\\\" at /scratch held 1 files") && log.contains("capture-empty-dirs"),
        "{log}"
    );
    assert!(scene.runc_args().is_none());
}
