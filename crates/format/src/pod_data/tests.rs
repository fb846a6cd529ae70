use std::os::unix::fs::{PermissionsExt, symlink};

use serde_json::json;

use super::*;

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write");
}

fn spec(mounts: Value) -> Value {
    json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": mounts})
}

const POD: &str = "/var/lib/kubelet/pods/0b5c/volumes/kubernetes.io~empty-dir";

#[test]
fn empty_dir_names_come_from_kubelets_path() {
    assert_eq!(empty_dir_name(&format!("{POD}/scratch")), Some("scratch"));
    assert_eq!(empty_dir_name(&format!("{POD}/scratch/")), Some("scratch"));
    assert_eq!(empty_dir_name("/tmp/x/pods/u/volumes/kubernetes.io~empty-dir/cache"), Some("cache"));
    assert_eq!(empty_dir_name(&format!("{POD}/scratch/sub")), None, "a path below the volume is no volume");
    assert_eq!(empty_dir_name(&format!("{POD}/..")), None);
    assert_eq!(empty_dir_name("/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg"), None);
    assert_eq!(empty_dir_name("/var/lib/kubelet/pods/u/volume-subpaths/scratch/c/0"), None, "subPath");
}

#[test]
fn mounts_are_read_from_the_spec() {
    let spec = spec(json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev/shm", "type": "bind", "source": "/run/c/sandboxes/s/shm", "options": ["rbind", "rw"]},
        {"destination": "/scratch/", "source": format!("{POD}/scratch"), "options": ["rbind"]},
        {"destination": "/cfg", "type": "bind", "source": "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg"},
        {"type": "bind"}
    ]));
    let mounts = mounts(&spec);
    assert_eq!(mounts.len(), 4, "{mounts:?}");
    assert!(!mounts[0].bind);
    let shm = dev_shm_mount(&mounts).expect("shm");
    assert!(shm.bind && shm.source == "/run/c/sandboxes/s/shm", "{shm:?}");
    assert_eq!(mounts[2].destination, "/scratch");
    assert!(mounts[2].bind, "an rbind option without a type is a bind mount");
    assert_eq!(mounts[2].empty_dir(), Some("scratch"));
    assert_eq!(mounts[3].empty_dir(), None);
    assert_eq!(super::mounts(&json!({})), Vec::new());
}

#[test]
fn symlinks_are_judged_on_their_names() {
    assert!(symlink_stays_inside(Path::new("a"), Path::new("b")));
    assert!(symlink_stays_inside(Path::new("d/a"), Path::new("../b")));
    assert!(symlink_stays_inside(Path::new("./d/a"), Path::new("./../b")));
    assert!(!symlink_stays_inside(Path::new("a"), Path::new("../b")));
    assert!(!symlink_stays_inside(Path::new("d/a"), Path::new("../../b")));
    assert!(!symlink_stays_inside(Path::new("a"), Path::new("/etc/passwd")));
    assert!(!symlink_stays_inside(Path::new("d/a"), Path::new("x/../../../etc")));
}

/// A volume with a nested file, a hard link, an inside symlink and an empty file.
fn volume(dir: &Path) {
    write(&dir.join("log"), "1\n2\n3\n");
    write(&dir.join("sub/deeper/state"), "state");
    fs::hard_link(dir.join("log"), dir.join("log.link")).expect("link");
    symlink("sub/deeper/state", dir.join("current")).expect("symlink");
    write(&dir.join("empty"), "");
    fs::set_permissions(dir.join("sub"), fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[test]
fn a_volume_is_measured_captured_and_put_back_replacing_what_was_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let old = tmp.path().join("old");
    fs::create_dir(&old).expect("mkdir");
    volume(&old);
    let usage = measure(&old, "emptyDir \"scratch\"").expect("measure");
    assert_eq!(usage, Usage { files: 3, bytes: 6 + 5 }, "a hard link counts once");

    let tar = tmp.path().join("scratch.tar");
    let captured = capture(&old, File::create(&tar).expect("create")).expect("capture");
    assert_eq!(captured.bytes, 11);
    assert_eq!(check_archive(&tar).expect("check").bytes, 11);

    let new = tmp.path().join("new");
    fs::create_dir(&new).expect("mkdir");
    write(&new.join("stale"), "from the new pod");
    write(&new.join("sub/other"), "x");
    let restored = restore(&tar, &new).expect("restore");
    assert_eq!(restored.bytes, 11);
    assert!(!new.join("stale").exists() && !new.join("sub/other").exists(), "what was there is replaced");
    assert_eq!(fs::read_to_string(new.join("log")).ok().as_deref(), Some("1\n2\n3\n"));
    assert_eq!(fs::read_to_string(new.join("current")).ok().as_deref(), Some("state"));
    assert_eq!(fs::read_link(new.join("current")).ok(), Some(PathBuf::from("sub/deeper/state")));
    assert_eq!(
        fs::metadata(new.join("log.link")).map(|m| m.ino()).ok(),
        fs::metadata(new.join("log")).map(|m| m.ino()).ok()
    );
    assert_eq!(fs::metadata(new.join("sub")).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o700));
    assert_eq!(fs::metadata(new.join("empty")).map(|m| m.len()).ok(), Some(0));
    assert!(new.is_dir(), "the mount point itself stays");
}

#[test]
fn a_symlink_leading_out_of_a_volume_is_refused_at_capture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("v/ok"), "x");
    symlink("/etc/passwd", tmp.path().join("v/passwd")).expect("symlink");
    let err = measure(&tmp.path().join("v"), "emptyDir \"scratch\" at /scratch").expect_err("outside");
    let text = err.to_string();
    assert!(text.contains("passwd") && text.contains("/etc/passwd") && text.contains("scratch"), "{text}");
    let usage = measure_only(&tmp.path().join("v"), "left out").expect("not judged when not captured");
    assert_eq!(usage, Usage { files: 1, bytes: 1 });
}

fn hostile_tar(path: &Path, name: &str, kind: tar::EntryType, link: Option<&str>) {
    let mut builder = tar::Builder::new(File::create(path).expect("create"));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(1);
    header.set_mode(0o644);
    let raw = &mut header.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        let raw = &mut header.as_old_mut().linkname;
        raw[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, &b"x"[..]).expect("append");
    builder.finish().expect("finish");
}

#[test]
fn hostile_archives_are_refused_before_anything_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("target");
    write(&target.join("keep"), "still here");
    for (name, kind, link, reason) in [
        ("../escape", tar::EntryType::Regular, None, "(..)"),
        ("/abs", tar::EntryType::Regular, None, "absolute"),
        ("dev", tar::EntryType::Char, None, "device"),
        ("fifo", tar::EntryType::Fifo, None, "fifo"),
        ("link", tar::EntryType::Symlink, Some("/etc/passwd"), "outside the volume"),
        ("up", tar::EntryType::Symlink, Some("../x"), "outside the volume"),
        ("hard", tar::EntryType::Link, Some("../x"), "hard link"),
    ] {
        let tar = tmp.path().join("hostile.tar");
        hostile_tar(&tar, name, kind, link);
        let err = restore(&tar, &target).expect_err(name);
        assert!(err.to_string().contains(reason), "{name}: {err}");
        assert_eq!(fs::read_to_string(target.join("keep")).ok().as_deref(), Some("still here"), "{name}");
    }
    assert!(!tmp.path().join("escape").exists() && !tmp.path().join("x").exists());
}

#[test]
fn a_podman_style_tar_with_its_root_entry_is_put_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar_path = tmp.path().join(DEV_SHM_TAR);
    let mut builder = tar::Builder::new(File::create(&tar_path).expect("create"));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    builder.append_data(&mut dir, "./", io::empty()).expect("root");
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o600);
    file.set_size(4);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    builder.append_data(&mut file, "./PostgreSQL.1234", &b"shm!"[..]).expect("file");
    builder.finish().expect("finish");
    drop(builder);
    let shm = tmp.path().join("shm");
    fs::create_dir(&shm).expect("mkdir");
    restore(&tar_path, &shm).expect("restore");
    assert_eq!(fs::read(shm.join("PostgreSQL.1234")).ok(), Some(b"shm!".to_vec()));
}

fn captured(name: &str, destination: &str, archive: &str) -> Volume {
    Volume {
        name: name.into(),
        destination: destination.into(),
        source: format!("{POD}/{name}"),
        archive: Some(archive.into()),
        files: 1,
        bytes: 3,
        not_captured: None,
    }
}

#[test]
fn placements_match_destinations_and_refuse_what_cannot_be_restored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let new_pod = tmp.path().join("pods/new/volumes/kubernetes.io~empty-dir");
    let scratch = new_pod.join("scratch");
    fs::create_dir_all(&scratch).expect("mkdir");
    let shm_dir = tmp.path().join("sandbox/shm");
    fs::create_dir_all(&shm_dir).expect("mkdir");
    let manifest = Manifest {
        version: VERSION,
        dev_shm: Some(Volume {
            name: DEV_SHM_NAME.into(),
            destination: DEV_SHM.into(),
            archive: Some(DEV_SHM_TAR.into()),
            ..Volume::default()
        }),
        empty_dirs: vec![captured("scratch", "/scratch", "empty-dirs/scratch.tar")],
    };
    let good = spec(json!([
        {"destination": "/dev/shm", "type": "bind", "source": shm_dir, "options": ["rbind"]},
        {"destination": "/scratch", "type": "bind", "source": scratch, "options": ["rbind"]},
    ]));
    let placed = placements(tmp.path(), Some(&manifest), &good).expect("placements");
    assert_eq!(placed.len(), 2);
    assert_eq!(
        (placed[0].target.as_path(), placed[0].archive.as_path()),
        (shm_dir.as_path(), tmp.path().join(DEV_SHM_TAR).as_path())
    );
    assert_eq!(placed[1].target, scratch);
    assert_eq!(placed[1].archive, tmp.path().join("empty-dirs/scratch.tar"));

    let no_scratch = spec(json!([{"destination": "/dev/shm", "type": "bind", "source": shm_dir}]));
    let err = placements(tmp.path(), Some(&manifest), &no_scratch).expect_err("no mount").to_string();
    assert!(err.contains("emptyDir \"scratch\" at /scratch") && err.contains("mounts nothing at /scratch"), "{err}");

    let host_path = spec(json!([
        {"destination": "/dev/shm", "type": "bind", "source": shm_dir},
        {"destination": "/scratch", "type": "bind", "source": "/srv/data"},
    ]));
    let err = placements(tmp.path(), Some(&manifest), &host_path).expect_err("hostPath").to_string();
    assert!(err.contains("/srv/data") && err.contains("not the pod's emptyDir"), "{err}");

    let tmpfs_shm = spec(json!([
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
        {"destination": "/scratch", "type": "bind", "source": scratch},
    ]));
    let err = placements(tmp.path(), Some(&manifest), &tmpfs_shm).expect_err("tmpfs").to_string();
    assert!(err.contains("/dev/shm") && err.contains("tmpfs mount, not a bind mount"), "{err}");

    let host_ipc = spec(json!([
        {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm"},
        {"destination": "/scratch", "type": "bind", "source": scratch},
    ]));
    let err = placements(tmp.path(), Some(&manifest), &host_ipc).expect_err("hostIPC").to_string();
    assert!(err.contains("hostIPC"), "{err}");

    let escaping = Manifest { empty_dirs: vec![captured("scratch", "/scratch", "../x.tar")], ..manifest.clone() };
    assert!(placements(tmp.path(), Some(&escaping), &good).is_err());
}

#[test]
fn a_volume_left_out_with_content_is_refused_only_when_the_new_one_is_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scratch = tmp.path().join("pods/new/volumes/kubernetes.io~empty-dir/scratch");
    fs::create_dir_all(&scratch).expect("mkdir");
    let left_out = |files| Manifest {
        version: VERSION,
        dev_shm: None,
        empty_dirs: vec![Volume {
            archive: None,
            files,
            bytes: 10 * files,
            not_captured: Some(format!("switched off by {CAPTURE_EMPTY_DIRS}")),
            ..captured("scratch", "/scratch", "")
        }],
    };
    let spec = spec(json!([{"destination": "/scratch", "type": "bind", "source": scratch}]));
    let err = placements(tmp.path(), Some(&left_out(2)), &spec).expect_err("lost").to_string();
    assert!(err.contains("emptyDir \"scratch\" at /scratch held 2 files (20 B)"), "{err}");
    assert!(err.contains(CAPTURE_EMPTY_DIRS), "{err}");
    assert_eq!(placements(tmp.path(), Some(&left_out(0)), &spec).expect("nothing lost"), Vec::new());
    write(&scratch.join("kept"), "the same pod's directory");
    assert_eq!(placements(tmp.path(), Some(&left_out(2)), &spec).expect("content is there"), Vec::new());
}

#[test]
fn a_foreign_tree_with_only_devshm_checkpoint_tar_goes_to_dev_shm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shm = tmp.path().join("shm");
    let spec = spec(json!([{"destination": "/dev/shm", "type": "bind", "source": shm}]));
    assert_eq!(placements(tmp.path(), None, &spec).expect("none"), Vec::new());
    write(&tmp.path().join(DEV_SHM_TAR), "");
    let placed = placements(tmp.path(), None, &spec).expect("placed");
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].target, shm);
}

#[test]
fn manifests_round_trip_and_other_versions_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(Manifest::read(tmp.path()).expect("none"), None);
    let manifest =
        Manifest { version: VERSION, dev_shm: None, empty_dirs: vec![captured("a", "/a", "empty-dirs/a.tar")] };
    fs::write(tmp.path().join(MANIFEST), serde_json::to_vec(&manifest).expect("json")).expect("write");
    assert_eq!(Manifest::read(tmp.path()).expect("read"), Some(manifest));
    fs::write(tmp.path().join(MANIFEST), br#"{"version": 2, "empty_dirs": []}"#).expect("write");
    assert!(Manifest::read(tmp.path()).expect_err("v2").to_string().contains("version 2"));
    fs::write(tmp.path().join(MANIFEST), b"[]").expect("write");
    assert!(Manifest::read(tmp.path()).is_err());
}
