//! Node integration (issue 5): `systemd/install.sh` run twice against a
//! temporary root (every file in place with its mode, the second run changes
//! nothing), the installed units through `systemd-analyze verify`, the
//! containerd snippets through the test bed's real containerd binaries
//! (`containerd config dump`), uninstall and purge; and `kind-config/run.sh`
//! skipping cleanly where Docker or kind are missing. Nothing here touches the
//! machine outside temporary directories.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::repo_root;
use sha2::{Digest, Sha256};

/// Both binaries of the workspace, built like the rest of the suite's (debug
/// in `cargo test`, release under `cargo bench`), copied into one directory for
/// `install.sh --bin-dir`.
fn bin_dir(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args(["build", "--quiet", "-p", "lazarus-daemon", "-p", "lazarus-runc", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    ensure!(cmd.status().context("running cargo build")?.success(), "cargo build of the lazarus binaries failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let built = target.join(if release { "release" } else { "debug" });
    let out = dir.join("bin");
    std::fs::create_dir_all(&out)?;
    for name in ["lazarus", "lazarus-runc"] {
        std::fs::copy(built.join(name), out.join(name)).with_context(|| format!("copying {name}"))?;
    }
    Ok(out)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `systemd/install.sh ARGS --root ROOT`; fails on a non-zero exit.
fn install_sh(root: &Path, bins: &Path, args: &[&str]) -> Result<String> {
    let script = repo_root().join("systemd/install.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(bins)
        .args(args)
        .output()
        .context("running install.sh")?;
    let text = text(&output);
    println!("$ install.sh {}\n{text}", args.join(" "));
    ensure!(output.status.success(), "install.sh {args:?} failed ({}):\n{text}", output.status);
    Ok(text)
}

/// Every file and directory below `root`: relative path → (mode, sha256 of a file's content).
fn snapshot(root: &Path) -> Result<BTreeMap<String, (u32, String)>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, String)>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (mode, String::new()));
                walk(root, &path, out)?;
            } else {
                let hash = format!("{:x}", Sha256::digest(std::fs::read(&path)?));
                out.insert(rel, (mode, hash));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?.permissions().mode() & 0o7777)
}

/// A containerd 1.x (config version 2) main config with a runc handler whose
/// options the lazarus handler must copy.
const CONTAINERD_V2_CONFIG: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
        Root = "/run/containerd/runc-test"
"#;

/// What install.sh puts below the root, with modes (default prefix).
const INSTALLED: &[(&str, u32)] = &[
    ("usr/local/bin/lazarus", 0o755),
    ("usr/local/bin/lazarus-runc", 0o755),
    ("etc/systemd/system/lazarus.service", 0o644),
    ("etc/systemd/system/lazarus.socket", 0o644),
    ("etc/systemd/system/kubelet.service.d/10-lazarus.conf", 0o644),
    ("etc/lazarus/config.toml", 0o644),
    ("usr/local/share/lazarus/config.toml", 0o644),
    ("usr/local/share/lazarus/containerd-lazarus-v2.toml", 0o644),
    ("usr/local/share/lazarus/containerd-lazarus-v3.toml", 0o644),
];

#[test]
fn install_script_into_a_temporary_root_is_idempotent_verifiable_and_reversible() -> Result<()> {
    let work = tempfile::tempdir()?;
    let bins = bin_dir(work.path())?;
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("etc/containerd"))?;
    let containerd_config = root.join("etc/containerd/config.toml");
    std::fs::write(&containerd_config, CONTAINERD_V2_CONFIG)?;
    let untouched = snapshot(&root)?;

    // First run: everything lands; containerd's main config is not edited, the lines are printed.
    let first = install_sh(&root, &bins, &["--no-start"])?;
    for (path, mode) in INSTALLED {
        ensure!(
            mode_of(&root.join(path))? == *mode,
            "{path}: mode {:o}, expected {mode:o}",
            mode_of(&root.join(path))?
        );
        ensure!(first.contains(&format!("installed /{path}")), "first run does not report /{path}:\n{first}");
    }
    let repo = repo_root();
    for (installed, source) in [
        ("etc/systemd/system/lazarus.service", "systemd/lazarus.service"),
        ("etc/systemd/system/lazarus.socket", "systemd/lazarus.socket"),
        ("etc/systemd/system/kubelet.service.d/10-lazarus.conf", "systemd/kubelet-lazarus.conf"),
        ("etc/lazarus/config.toml", "systemd/config.toml"),
    ] {
        ensure!(
            std::fs::read(root.join(installed))? == std::fs::read(repo.join(source))?,
            "{installed} differs from {source} (default prefix: no paths to rewrite)"
        );
    }
    check_stripped(&root, &bins)?;
    ensure!(std::fs::read_to_string(&containerd_config)? == CONTAINERD_V2_CONFIG, "main config edited without asking");
    ensure!(
        first.contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lazarus]"#)
            && first.contains(r#"BinaryName = "/usr/local/bin/lazarus-runc""#)
            && first.contains("SystemdCgroup = true")
            && first.contains(r#"Root = "/run/containerd/runc-test""#),
        "the printed handler must copy the runc handler's options:\n{first}"
    );
    ensure!(first.contains("systemd: skipped"), "no systemctl below a --root:\n{first}");
    let installed = snapshot(&root)?;

    // Second run: nothing changes, and it says so.
    let second = install_sh(&root, &bins, &["--no-start"])?;
    ensure!(second.contains("install: nothing changed"), "second run:\n{second}");
    ensure!(!second.contains("installed /") && !second.contains("updated /"), "second run changed files:\n{second}");
    ensure!(snapshot(&root)? == installed, "the second run changed the tree");

    // The default config parses (lazarus reads it; the store goes to a scratch dir).
    let scratch = work.path().join("scratch");
    let output = Command::new(root.join("usr/local/bin/lazarus"))
        .args(["checkpoints", "list", "--config"])
        .arg(root.join("etc/lazarus/config.toml"))
        .arg("--state-dir")
        .arg(scratch.join("state"))
        .arg("--run-dir")
        .arg(scratch.join("run"))
        .output()?;
    ensure!(output.status.success(), "lazarus rejects the default config.toml:\n{}", text(&output));

    verify_units(&root)?;

    // --edit-containerd-config: the handler is appended between markers, once.
    let edited = install_sh(&root, &bins, &["--no-start", "--edit-containerd-config"])?;
    ensure!(edited.contains("updated /etc/containerd/config.toml"), "{edited}");
    let config_text = std::fs::read_to_string(&containerd_config)?;
    ensure!(config_text.starts_with(CONTAINERD_V2_CONFIG), "the original lines must stay as they were");
    ensure!(config_text.matches("runtimes.lazarus]").count() == 1, "{config_text}");
    let again = install_sh(&root, &bins, &["--no-start", "--edit-containerd-config"])?;
    ensure!(again.contains("install: nothing changed"), "{again}");
    containerd_dump_v2(&containerd_config)?;

    // A config of the operator's is kept, by install and by uninstall.
    std::fs::write(root.join("etc/lazarus/config.toml"), "log_format = \"json\"\n")?;
    let kept = install_sh(&root, &bins, &["--no-start"])?;
    ensure!(kept.contains("kept /etc/lazarus/config.toml") && kept.contains("nothing changed"), "{kept}");
    ensure!(std::fs::read_to_string(root.join("etc/lazarus/config.toml"))? == "log_format = \"json\"\n");

    // Uninstall: what install put is gone, the operator's config and the state dir stay.
    std::fs::create_dir_all(root.join("var/lib/lazarus/store"))?;
    let removed = install_sh(&root, &bins, &["--no-start", "--uninstall"])?;
    for (path, _) in INSTALLED.iter().filter(|(p, _)| *p != "etc/lazarus/config.toml") {
        ensure!(!root.join(path).exists(), "{path} survived the uninstall:\n{removed}");
    }
    ensure!(std::fs::read_to_string(&containerd_config)? == CONTAINERD_V2_CONFIG, "the marker block must be removed");
    ensure!(root.join("etc/lazarus/config.toml").exists() && root.join("var/lib/lazarus/store").exists(), "{removed}");
    let twice = install_sh(&root, &bins, &["--no-start", "--uninstall"])?;
    ensure!(twice.contains("uninstall: nothing changed"), "{twice}");
    remove_verify_stubs(&root)?;
    install_sh(&root, &bins, &["--no-start", "--uninstall", "--purge"])?;
    ensure!(!root.join("etc/lazarus").exists() && !root.join("var/lib/lazarus").exists());
    std::fs::remove_dir_all(root.join("var"))?;
    ensure!(snapshot(&root)? == untouched, "after --purge the root must be as before:\n{:#?}", snapshot(&root)?);
    Ok(())
}

/// The names of the sections of the ELF64 (little-endian) file `bytes`.
fn elf_section_names(bytes: &[u8]) -> Result<Vec<String>> {
    let u16_at = |at: usize| -> Result<usize> {
        Ok(u16::from_le_bytes(bytes.get(at..at + 2).context("truncated ELF")?.try_into()?).into())
    };
    let u64_at = |at: usize| -> Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8).context("truncated ELF")?.try_into()?))?)
    };
    ensure!(bytes.starts_with(b"\x7fELF\x02\x01"), "not a little-endian ELF64 file");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let (strtab, strtab_size) = (u64_at(header(shstrndx) + 0x18)?, u64_at(header(shstrndx) + 0x20)?);
    let names = bytes.get(strtab..strtab + strtab_size).context("section names outside the file")?;
    (0..shnum)
        .map(|i| {
            let at = u32::from_le_bytes(bytes.get(header(i)..header(i) + 4).context("truncated ELF")?.try_into()?);
            let name = names.get(usize::try_from(at)?..).context("section name outside the table")?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Ok(String::from_utf8_lossy(&name[..end]).into_owned())
        })
        .collect()
}

/// The installed binaries have no debug info but a debug link, are smaller
/// than the built ones (which do have debug info: otherwise this proves
/// nothing), and still run.
fn check_stripped(root: &Path, bins: &Path) -> Result<()> {
    for name in ["lazarus", "lazarus-runc"] {
        let built = std::fs::read(bins.join(name))?;
        let installed = std::fs::read(root.join("usr/local/bin").join(name))?;
        let (before, after) = (elf_section_names(&built)?, elf_section_names(&installed)?);
        ensure!(before.iter().any(|s| s.starts_with(".debug_")), "{name} was built without debug info: {before:?}");
        // `.debug_gdb_scripts` is no debug info: a few loaded bytes naming rustc's gdb
        // pretty-printers, part of the program image, which strip keeps.
        let debug: Vec<_> = after.iter().filter(|s| s.starts_with(".debug_") && *s != ".debug_gdb_scripts").collect();
        ensure!(debug.is_empty(), "installed {name} still has {debug:?}");
        ensure!(after.iter().any(|s| s == ".gnu_debuglink"), "installed {name} has no debug link: {after:?}");
        ensure!(after.iter().any(|s| s == ".symtab"), "installed {name} lost its symbols: {after:?}");
        println!("{name}: {} bytes built, {} installed", built.len(), installed.len());
        ensure!(installed.len() < built.len(), "installed {name} is not smaller");
    }
    let lazarus = root.join("usr/local/bin/lazarus");
    let output = Command::new(&lazarus).arg("--version").output()?;
    ensure!(
        output.status.success() && text(&output).starts_with(&format!("lazarus {}", env!("CARGO_PKG_VERSION"))),
        "stripped lazarus --version: {}",
        text(&output)
    );
    // `lazarus version` runs too (no runtime and maybe no CRIU here: exit 1, but its report is printed).
    let output =
        Command::new(&lazarus).args(["version", "--upstream", "unix:///nonexistent/lazarus-test.sock"]).output()?;
    let report = text(&output);
    ensure!(report.contains("no socket at /nonexistent/lazarus-test.sock") && !output.status.success(), "{report}");
    // lazarus-runc passes --version to the real runc (found on PATH).
    let output = Command::new(root.join("usr/local/bin/lazarus-runc")).arg("--version").output()?;
    ensure!(output.status.success() && text(&output).contains("runc version"), "{}", text(&output));
    Ok(())
}

/// `--keep-debug`: the split-off debug info lands where gdb looks for the
/// binaries' debug links, and goes with uninstall.
#[test]
fn keep_debug_installs_the_debug_info_beside_the_stripped_binaries() -> Result<()> {
    let work = tempfile::tempdir()?;
    let bins = bin_dir(work.path())?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    let out = install_sh(&root, &bins, &["--no-start", "--no-kubelet", "--keep-debug"])?;
    check_stripped(&root, &bins)?;
    for name in ["lazarus", "lazarus-runc"] {
        let path = format!("usr/lib/debug/usr/local/bin/{name}.debug");
        ensure!(out.contains(&format!("installed /{path}")), "{out}");
        ensure!(mode_of(&root.join(&path))? == 0o644, "{path}");
        let sections = elf_section_names(&std::fs::read(root.join(&path))?)?;
        ensure!(sections.iter().any(|s| s == ".debug_info"), "{path} has no .debug_info: {sections:?}");
    }
    let again = install_sh(&root, &bins, &["--no-start", "--no-kubelet", "--keep-debug"])?;
    ensure!(again.contains("install: nothing changed"), "{again}");
    install_sh(&root, &bins, &["--no-start", "--uninstall", "--purge"])?;
    ensure!(!root.join("usr/lib/debug/usr/local/bin/lazarus.debug").exists(), "the debug info survived uninstall");
    Ok(())
}

/// Units the installed ones depend on, for `systemd-analyze verify --root`.
const STUBS: &[&str] = &["usr/lib/systemd/system", "usr/bin/containerd", "usr/bin/kubelet"];

/// `systemd-analyze verify --root=ROOT` on the installed units: the root holds
/// the machine's standard targets and slices plus stub containerd and kubelet
/// units (with the drop-in applied to the kubelet stub). Any output is a finding:
/// systemd only warns about unknown keys and still exits 0.
fn verify_units(root: &Path) -> Result<()> {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("systemd-analyze is missing: install Debian's systemd package (e2e/testbed/testbed.sh up does)")?;
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    let system_units =
        ["/usr/lib/systemd/system", "/lib/systemd/system"].into_iter().map(Path::new).find(|p| p.is_dir());
    let system_units = system_units.context("no /usr/lib/systemd/system")?;
    for entry in std::fs::read_dir(system_units)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if (name.ends_with(".target") || name.ends_with(".slice")) && path.is_file() {
            std::fs::copy(&path, units.join(&name))?;
        }
    }
    std::fs::create_dir_all(root.join("usr/bin"))?;
    for (unit, exe, kind) in [("containerd.service", "containerd", "notify"), ("kubelet.service", "kubelet", "simple")]
    {
        std::fs::write(
            units.join(unit),
            format!("[Unit]\nDescription=stub {exe}\n\n[Service]\nType={kind}\nExecStart=/usr/bin/{exe}\n"),
        )?;
        let stub = root.join("usr/bin").join(exe);
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
    }
    let output = Command::new(&analyze)
        .current_dir(root)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system/lazarus.service"))
        .arg(root.join("etc/systemd/system/lazarus.socket"))
        .arg(units.join("kubelet.service"))
        .output()?;
    let findings = text(&output);
    println!("systemd-analyze verify: exit {}, output {:?}", output.status, findings);
    ensure!(output.status.success() && findings.trim().is_empty(), "systemd-analyze verify:\n{findings}");

    // And it does catch mistakes: a misspelt key in an installed unit is reported.
    let service = root.join("etc/systemd/system/lazarus.service");
    let good = std::fs::read(&service)?;
    let mut bad = good.clone();
    bad.extend_from_slice(b"\n[Service]\nRestartSecs=1\n");
    std::fs::write(&service, &bad)?;
    let output = Command::new(&analyze)
        .current_dir(root)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&service)
        .output()?;
    std::fs::write(&service, &good)?;
    ensure!(text(&output).contains("RestartSecs"), "verify must report a misspelt key: {}", text(&output));
    Ok(())
}

fn remove_verify_stubs(root: &Path) -> Result<()> {
    for stub in STUBS {
        let path = root.join(stub);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    for dir in ["usr/lib/systemd", "usr/lib", "usr/bin", "usr/local/bin", "usr/local/share", "usr/local", "usr"] {
        let path = root.join(dir);
        if path.is_dir() && std::fs::read_dir(&path)?.next().is_none() {
            std::fs::remove_dir(&path)?;
        }
    }
    for dir in ["etc/systemd/system", "etc/systemd"] {
        let path = root.join(dir);
        if path.is_dir() && std::fs::read_dir(&path)?.next().is_none() {
            std::fs::remove_dir(&path)?;
        }
    }
    Ok(())
}

/// containerd 1.6 of the test bed (Debian's package) reads the edited config
/// and has the `lazarus` handler with the runc handler's options.
fn containerd_dump_v2(config: &Path) -> Result<()> {
    let containerd = Path::new("/usr/bin/containerd");
    // The test bed provides it: missing is a failure with the fix, not a silent pass.
    ensure!(
        containerd.exists(),
        "no /usr/bin/containerd for the containerd 1.6 config dump; e2e/testbed/testbed.sh up installs it"
    );
    let dump = containerd_dump(containerd, config)?;
    let lazarus = table(&dump, r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lazarus.options]"#)?;
    ensure!(lazarus.contains(r#"BinaryName = "/usr/local/bin/lazarus-runc""#), "{lazarus}");
    ensure!(lazarus.contains("SystemdCgroup = true"), "{lazarus}");
    ensure!(lazarus.contains(r#"Root = "/run/containerd/runc-test""#), "{lazarus}");
    ensure!(dump.contains(r#"sandbox_image = "registry.example/pause:3.9""#), "the rest of the CRI config survives");
    table(&dump, r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]"#)?;
    Ok(())
}

fn containerd_dump(containerd: &Path, config: &Path) -> Result<String> {
    let output = Command::new(containerd).arg("--config").arg(config).args(["config", "dump"]).output()?;
    ensure!(output.status.success(), "{} config dump: {}", containerd.display(), text(&output));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The lines of TOML table `header` in `dump` (up to the next table).
fn table(dump: &str, header: &str) -> Result<String> {
    let mut lines = dump.lines().skip_while(|l| l.trim() != header);
    let Some(first) = lines.next() else { bail!("no {header} in containerd's config dump:\n{dump}") };
    let body: Vec<&str> = lines.take_while(|l| !l.trim_start().starts_with('[')).collect();
    Ok(format!("{first}\n{}", body.join("\n")))
}

/// containerd 2.x: install.sh drops the handler into /etc/containerd/conf.d when
/// the main config (version 3) imports it, and containerd 2.1 of the test bed
/// merges it without losing the runc handler.
#[test]
fn containerd_2_gets_a_conf_d_drop_in_it_merges() -> Result<()> {
    let work = tempfile::tempdir()?;
    let bins = bin_dir(work.path())?;
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("etc/containerd"))?;
    let main = r#"version = 3
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = false
"#;
    std::fs::write(root.join("etc/containerd/config.toml"), main)?;
    let out = install_sh(&root, &bins, &["--no-start", "--no-kubelet"])?;
    let dropin = root.join("etc/containerd/conf.d/lazarus.toml");
    ensure!(out.contains("installed /etc/containerd/conf.d/lazarus.toml"), "{out}");
    ensure!(mode_of(&dropin)? == 0o644);
    ensure!(!root.join("etc/systemd/system/kubelet.service.d").exists(), "--no-kubelet");
    let text = std::fs::read_to_string(&dropin)?;
    ensure!(text.contains("version = 3") && text.contains("SystemdCgroup = false"), "{text}");
    ensure!(std::fs::read_to_string(root.join("etc/containerd/config.toml"))? == main, "main config untouched");
    ensure!(install_sh(&root, &bins, &["--no-start", "--no-kubelet"])?.contains("nothing changed"));

    let containerd21 = Path::new("/opt/lazarus-testbed/containerd-2.1/usr/bin/containerd");
    ensure!(
        containerd21.exists(),
        "{} absent for the containerd 2.1 config dump; e2e/testbed/testbed.sh up --containerd 2.1 unpacks it (once, kept)",
        containerd21.display()
    );
    // The same main config, importing the drop-in from the temporary root.
    let dump_config = work.path().join("containerd-dump.toml");
    std::fs::write(
        &dump_config,
        main.replace("/etc/containerd/conf.d", &root.join("etc/containerd/conf.d").to_string_lossy()),
    )?;
    let dump = containerd_dump(containerd21, &dump_config)?;
    let lazarus = table(&dump, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.lazarus.options]")?;
    ensure!(lazarus.contains("BinaryName = '/usr/local/bin/lazarus-runc'"), "{lazarus}");
    ensure!(lazarus.contains("SystemdCgroup = false"), "{lazarus}");
    table(&dump, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]")?;

    let out = install_sh(&root, &bins, &["--no-start", "--uninstall"])?;
    ensure!(!dropin.exists(), "{out}");
    Ok(())
}

/// Runs kind-config/run.sh with `env` and returns (exit success, output).
fn kind_run(env: &[(&str, &str)]) -> Result<(bool, String)> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("kind-config/run.sh"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output()?;
    Ok((output.status.success(), text(&output)))
}

#[test]
fn kind_script_skips_cleanly_without_docker_or_kind() -> Result<()> {
    let (ok, out) = kind_run(&[("KIND", "/nonexistent/kind")])?;
    println!("{out}");
    ensure!(ok, "exit status must be 0:\n{out}");
    let line = out.lines().find(|l| l.starts_with("skipped: ")).context(format!("no skipped: line:\n{out}"))?;
    ensure!(line.contains("kind (no '/nonexistent/kind' command)"), "{line}");
    ensure!(!out.contains("==>"), "nothing may be built or created when skipping:\n{out}");

    let (ok, out) = kind_run(&[("DOCKER", "/nonexistent/docker"), ("KUBECTL", "/nonexistent/kubectl")])?;
    ensure!(ok, "{out}");
    ensure!(out.contains("docker (no '/nonexistent/docker' command)") && out.contains("kubectl (no"), "{out}");

    // On this machine as it is: a full run where Docker and kind work (not in
    // this suite: minutes and image pulls), else the skip line.
    let docker_works = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    let kind_exists = Command::new("kind").arg("version").output().is_ok_and(|o| o.status.success());
    if docker_works && kind_exists {
        println!("Docker and kind are here: run `bash kind-config/run.sh` by hand for the kind scenario");
    } else {
        let (ok, out) = kind_run(&[])?;
        ensure!(ok && out.lines().any(|l| l.starts_with("skipped: ")), "{out}");
        println!("{out}");
    }
    Ok(())
}

#[test]
fn node_scripts_pass_shellcheck() -> Result<()> {
    ensure!(
        Command::new("shellcheck").arg("--version").output().is_ok(),
        "shellcheck is not installed (Debian package shellcheck; e2e/testbed/testbed.sh up installs it)"
    );
    let repo = repo_root();
    let output = Command::new("shellcheck")
        .current_dir(&repo)
        .args([
            "systemd/install.sh",
            "kind-config/run.sh",
            "kind-config/node-setup.sh",
            "e2e/testbed/testbed.sh",
            "e2e/run-tests.sh",
            "e2e/demo.sh",
            "e2e/lib.sh",
            ".ci/run",
        ])
        .output()?;
    ensure!(output.status.success(), "shellcheck:\n{}", text(&output));
    Ok(())
}
