//! Checkpoints pushed to the test bed's real registry (Distribution on
//! 127.0.0.1:5000, plain HTTP, listed as insecure in the lazarus config the
//! tests write): versions and `-latest`, registry retention, the annotation
//! path, and registries that go away mid-push or are down.
//!
//! The registry is queried with plain `curl` and hashed here, independently
//! of lazarus's own client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, E2E_LABEL, Testbed, container_config, pod_config, rand_u64, wait_for};
use lazarus_proto::v1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A namespace of its own: these tests sweep only their own pods.
const NAMESPACE: &str = "lazarus-e2e-registry";
const CONTAINER: &str = "worker";
const COUNTER: &str = "i=0; while true; do echo $i > /count; i=$((i+1)); sleep 1; done";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    registry: String,
}

impl Bed {
    async fn new() -> Result<Bed> {
        let bed = Testbed::load()?;
        let cri = Cri::connect(&bed.containerd_socket()?)?;
        let registry = bed.var("REGISTRY")?.to_owned();
        let mut bed = Bed { bed, dir: tempfile::tempdir()?, cri, registry };
        bed.sweep().await?;
        Ok(bed)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A lazarus config listing `insecure` registries.
    fn config(&self, insecure: &[&str]) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("config-{:x}.toml", rand_u64()));
        let list: Vec<String> = insecure.iter().map(|r| format!("{r:?}")).collect();
        std::fs::write(&path, format!("insecure_registries = [{}]\n", list.join(", ")))?;
        Ok(path)
    }

    /// `lazarus checkpoint CONTAINER --config CONFIG [extra]`.
    fn checkpoint(&self, container: &str, config: &Path, extra: &[&str]) -> Result<Output> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", container])
            .args(extra)
            .arg("--config")
            .arg(config)
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .output()?;
        Ok(out)
    }

    /// A checkpoint that must succeed and be pushed: (local reference, registry reference).
    fn checkpoint_pushed(&self, container: &str, config: &Path, extra: &[&str]) -> Result<(String, String)> {
        let out = self.checkpoint(container, config, extra)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "lazarus checkpoint failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        ensure!(lines.len() == 2, "expected the local and the registry reference, got:\n{stdout}");
        Ok((lines[0].to_owned(), lines[1].to_owned()))
    }

    /// Runs a pod with one counting container; returns the container id.
    async fn start_pod(&mut self, pod: &str, annotations: &[(&str, &str)]) -> Result<String> {
        let image = self.bed.workload_image()?.to_owned();
        let config = pod_config(pod, NAMESPACE, &self.dir.path().join("pods"), annotations);
        let pod_id = self.cri.run_pod(&config).await?;
        self.cri.pull(&image, &config).await?;
        let container = container_config(&config, CONTAINER, &image, &["/bin/sh", "-c", COUNTER]);
        let id = self.cri.create_container(&pod_id, container, &config).await?;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(20), "the counter to start", || {
            let mut cri = cri.clone();
            let id = id.clone();
            async move { cri.read_counter(&id).await.ok().filter(|n| *n >= 1) }
        })
        .await?;
        Ok(id)
    }

    /// Stops and removes this test file's pods (and no one else's).
    async fn sweep(&mut self) -> Result<()> {
        let filter = v1::PodSandboxFilter {
            label_selector: [
                (E2E_LABEL.to_owned(), "true".to_owned()),
                ("io.kubernetes.pod.namespace".to_owned(), NAMESPACE.to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let pods =
            self.cri.runtime.list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner();
        for pod in pods.items {
            self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
            self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod.id }).await?;
        }
        Ok(())
    }

    /// Digests in the local store's index.json (read directly), oldest first.
    fn local_digests(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(self.state_dir().join("store/index.json"))?;
        let index: serde_json::Value = serde_json::from_str(&text)?;
        Ok(index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["digest"].as_str().map(str::to_owned))
            .collect())
    }

    fn local_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(std::fs::read(self.state_dir().join("store/blobs/sha256").join(hex))?)
    }
}

/// `curl` against the registry; the body, failing on an HTTP error.
fn curl(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("curl").args(["-sS", "--fail", "--max-time", "30"]).args(args).output()?;
    ensure!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(out.stdout)
}

/// The HTTP status of a request.
fn curl_status(args: &[&str]) -> Result<u16> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The registry's tags of `repository`, sorted.
fn tags(registry: &str, repository: &str) -> Result<Vec<String>> {
    let body = curl(&[&format!("http://{registry}/v2/{repository}/tags/list")])?;
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let mut tags: Vec<String> = list["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    tags.sort();
    Ok(tags)
}

/// The digest the registry announces for a tag (HEAD, `Docker-Content-Digest`).
fn tag_digest(registry: &str, repository: &str, tag: &str) -> Result<String> {
    let headers = curl(&[
        "-I",
        "-H",
        &format!("Accept: {MANIFEST_ACCEPT}"),
        &format!("http://{registry}/v2/{repository}/manifests/{tag}"),
    ])?;
    String::from_utf8_lossy(&headers)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest").then(|| value.trim().to_owned())
        })
        .with_context(|| format!("no Docker-Content-Digest for {repository}:{tag}"))
}

/// Fetches manifest `digest` and every blob it names with curl, checks each
/// against its digest and size; returns the manifest.
fn fetch_all(registry: &str, repository: &str, digest: &str) -> Result<serde_json::Value> {
    let bytes = curl(&[
        "-H",
        &format!("Accept: {MANIFEST_ACCEPT}"),
        &format!("http://{registry}/v2/{repository}/manifests/{digest}"),
    ])?;
    ensure!(sha256(&bytes) == digest, "manifest {digest} hashes to {}", sha256(&bytes));
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)?;
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().cloned().unwrap_or_default());
    ensure!(descriptors.len() == 2, "config and one layer expected: {manifest}");
    for descriptor in descriptors {
        let blob_digest = descriptor["digest"].as_str().context("descriptor digest")?;
        let size = descriptor["size"].as_u64().context("descriptor size")?;
        let blob = curl(&["-L", &format!("http://{registry}/v2/{repository}/blobs/{blob_digest}")])?;
        ensure!(sha256(&blob) == blob_digest, "blob {blob_digest} hashes to {}", sha256(&blob));
        ensure!(blob.len() as u64 == size, "blob {blob_digest}: {} bytes, manifest says {size}", blob.len());
    }
    Ok(manifest)
}

/// `registry/repository:tag@digest` → (tag, digest).
fn split_pushed<'a>(pushed: &'a str, repository_name: &str) -> Result<(&'a str, &'a str)> {
    let rest = pushed
        .strip_prefix(&format!("{repository_name}:"))
        .with_context(|| format!("{pushed} is not in {repository_name}"))?;
    rest.split_once('@').with_context(|| format!("{pushed} has no digest"))
}

fn is_time_tag(tag: &str) -> bool {
    tag.strip_prefix(&format!("{CONTAINER}-"))
        .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[8] == b'T')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_latest_and_retention_in_the_registry() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let registry = bed.registry.clone();
    let repository = format!("lazarus-e2e/versions-{:x}", rand_u64());
    let repository_name = format!("{registry}/{repository}");
    let config = bed.config(&[&registry])?;
    let id = bed.start_pod("versions", &[("lazarus.dev/checkpoint-keep", "3")]).await?;
    let key = format!("{NAMESPACE}/versions/{CONTAINER}");

    let mut pushed = Vec::new();
    for n in 0..4 {
        let (local, remote) = bed.checkpoint_pushed(&key, &config, &["--repository", &repository_name])?;
        println!("checkpoint {n}: {local}\n              {remote}");
        let (tag, digest) = split_pushed(&remote, &repository_name)?;
        ensure!(is_time_tag(tag), "tag {tag} is not {CONTAINER}-<time>");
        ensure!(local.ends_with(&format!("@{digest}")), "the registry holds the local manifest: {local} vs {remote}");
        ensure!(local.contains(&tag[CONTAINER.len() + 1..]), "same time tag locally and in the registry");
        pushed.push((tag.to_owned(), digest.to_owned()));
    }

    // Exactly the newest three time tags and -latest; retention removed the first.
    let tags = tags(&registry, &repository)?;
    let mut expected: Vec<String> = pushed[1..].iter().map(|(t, _)| t.clone()).collect();
    expected.push(format!("{CONTAINER}-latest"));
    expected.sort();
    ensure!(tags == expected, "registry tags {tags:?}, expected {expected:?}");
    let status = curl_status(&[
        "-H",
        &format!("Accept: {MANIFEST_ACCEPT}"),
        &format!("http://{registry}/v2/{repository}/manifests/{}", pushed[0].1),
    ])?;
    ensure!(status == 404, "the oldest manifest was deleted from the registry (HTTP {status})");

    // -latest is the newest local checkpoint; the local store kept three too.
    let local = bed.local_digests()?;
    ensure!(local.len() == 3, "local retention keeps 3, found {}", local.len());
    let newest = local.last().context("a local checkpoint")?;
    let latest = tag_digest(&registry, &repository, &format!("{CONTAINER}-latest"))?;
    ensure!(latest == *newest && latest == pushed[3].1, "-latest {latest}, newest local {newest}");
    for (tag, digest) in &pushed[1..] {
        ensure!(tag_digest(&registry, &repository, tag)? == *digest, "{tag} names {digest}");
    }

    // Everything -latest names is fetchable, matches its digests, and is what the local store holds.
    let manifest = fetch_all(&registry, &repository, &latest)?;
    let layer = manifest["layers"][0]["digest"].as_str().context("layer")?;
    let remote_layer = curl(&[&format!("http://{registry}/v2/{repository}/blobs/{layer}")])?;
    ensure!(remote_layer == bed.local_blob(layer)?, "the registry's layer equals the local one");
    ensure!(
        manifest["annotations"]["org.criu.checkpoint.container.name"] == CONTAINER,
        "checkpoint annotations pushed: {manifest}"
    );
    ensure!(
        bed.cri.container_status(&id).await?.state == v1::ContainerState::ContainerRunning as i32,
        "the container kept running"
    );
    bed.sweep().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_annotation_names_the_repository() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let registry = bed.registry.clone();
    let repository = format!("lazarus-e2e/annotated-{:x}", rand_u64());
    let repository_name = format!("{registry}/{repository}");
    let config = bed.config(&[&registry])?;
    bed.start_pod("annotated", &[("lazarus.dev/checkpoint-repository", &repository_name)]).await?;

    let (local, remote) = bed.checkpoint_pushed(&format!("{NAMESPACE}/annotated/{CONTAINER}"), &config, &[])?;
    println!("annotation path: {local}\n                 {remote}");
    let (tag, digest) = split_pushed(&remote, &repository_name)?;
    let tags = tags(&registry, &repository)?;
    ensure!(tags == vec![tag.to_owned(), format!("{CONTAINER}-latest")], "tags {tags:?}");
    ensure!(tag_digest(&registry, &repository, &format!("{CONTAINER}-latest"))? == digest, "-latest");
    fetch_all(&registry, &repository, digest)?;

    // A malformed annotation: the local checkpoint is taken, the command
    // reports the annotation, its value and why, and exits non-zero.
    let bad = "127.0.0.1:5000/Not_Valid";
    bed.start_pod("malformed", &[("lazarus.dev/checkpoint-repository", bad)]).await?;
    let before = bed.local_digests()?.len();
    let out = bed.checkpoint(&format!("{NAMESPACE}/malformed/{CONTAINER}"), &config, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a malformed repository annotation fails the push");
    ensure!(
        stderr.contains(&format!("lazarus.dev/checkpoint-repository={bad:?} rejected")),
        "stderr names the annotation and value:\n{stderr}"
    );
    ensure!(bed.local_digests()?.len() == before + 1, "the local checkpoint was still taken");
    ensure!(String::from_utf8_lossy(&out.stdout).starts_with("local:"), "the local reference is printed");
    bed.sweep().await?;
    Ok(())
}

/// A TCP relay between lazarus and the registry that can cut every
/// connection once `cut_after` bytes have gone upstream since it was armed.
struct Relay {
    port: u16,
    state: Arc<RelayState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RelayState {
    uploaded: AtomicU64,
    cut_after: AtomicU64,
    cut: AtomicBool,
}

impl Relay {
    async fn start(upstream: String) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(RelayState { cut_after: AtomicU64::new(u64::MAX), ..Default::default() });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.cut.load(Ordering::SeqCst) {
                    continue; // gone: the connection is dropped at once
                }
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(pipe(client, server, shared.clone()));
            }
        });
        Ok(Relay { port, state, task })
    }

    /// Cuts everything once `bytes` more have been sent upstream.
    fn arm(&self, bytes: u64) {
        self.state.uploaded.store(0, Ordering::SeqCst);
        self.state.cut_after.store(bytes, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, state: Arc<RelayState>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 4096];
        loop {
            if state.cut.load(Ordering::SeqCst) {
                return false;
            }
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => n,
            };
            let total = state.uploaded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > state.cut_after.load(Ordering::SeqCst) {
                state.cut.store(true, Ordering::SeqCst);
                return false; // the registry "goes away": both sockets are dropped
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return true;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 4096];
        loop {
            if state.cut.load(Ordering::SeqCst) {
                return;
            }
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        clean = &mut up => if clean { down.await },
        () = &mut down => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_goes_away_or_is_down_leaves_both_sides_intact() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let registry = bed.registry.clone();
    let relay = Relay::start(registry.clone()).await?;
    let relayed = format!("127.0.0.1:{}", relay.port);
    let repository = format!("lazarus-e2e/cut-{:x}", rand_u64());
    let through_relay = format!("{relayed}/{repository}");
    let config = bed.config(&[&relayed])?;
    bed.start_pod("cut", &[]).await?;
    let key = format!("{NAMESPACE}/cut/{CONTAINER}");

    // A first checkpoint through the relay succeeds.
    let (_, remote) = bed.checkpoint_pushed(&key, &config, &["--repository", &through_relay])?;
    let (first_tag, first) = split_pushed(&remote, &through_relay)?;
    let (first_tag, first) = (first_tag.to_owned(), first.to_owned());
    ensure!(
        tag_digest(&registry, &repository, &format!("{CONTAINER}-latest"))? == first,
        "-latest after the first push"
    );

    // The next push loses the registry halfway through the layer (the
    // config blob and the requests before take a few KiB): the push fails,
    // the local checkpoint stays.
    let layer_size = fetch_all(&registry, &repository, &first)?["layers"][0]["size"].as_u64().unwrap_or(0);
    ensure!(layer_size > 16 * 1024, "the layer ({layer_size} bytes) is too small to cut in the middle");
    relay.arm(4096 + layer_size / 2);
    let local_before = bed.local_digests()?;
    let out = bed.checkpoint(&key, &config, &["--repository", &through_relay])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("cut mid-push:\nstdout: {stdout}stderr: {stderr}");
    ensure!(relay.state.cut.load(Ordering::SeqCst), "the relay cut the connection");
    ensure!(!out.status.success(), "a failed push exits non-zero");
    ensure!(
        stderr.contains(&format!("pushing to {through_relay}"))
            && stderr.contains(&format!("registry {relayed}"))
            && stderr.contains("uploading blob")
            && stderr.contains("is kept"),
        "the error names the repository, the registry, the step and the kept local checkpoint:\n{stderr}"
    );
    let local_after = bed.local_digests()?;
    ensure!(local_after.len() == local_before.len() + 1, "the local checkpoint was committed");
    let new_local = local_after.last().context("newest")?;
    ensure!(stdout.trim() == stdout.lines().next().unwrap_or("").trim(), "only the local reference is printed");
    ensure!(stdout.trim().ends_with(new_local.as_str()), "stdout names the new local checkpoint: {stdout}");

    // The registry still serves the previous checkpoint, complete, as -latest.
    ensure!(
        tag_digest(&registry, &repository, &format!("{CONTAINER}-latest"))? == first,
        "-latest still names the previous checkpoint"
    );
    let tags_now = tags(&registry, &repository)?;
    ensure!(tags_now == vec![first_tag.clone(), format!("{CONTAINER}-latest")], "no new tag appeared: {tags_now:?}");
    fetch_all(&registry, &repository, &first)?;

    // A registry that is down (nothing listens): a clear error, the local checkpoint kept.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let down = format!("127.0.0.1:{port}");
    let config_down = bed.config(&[&down])?;
    let out = bed.checkpoint(&key, &config_down, &["--repository", &format!("{down}/{repository}")])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("registry down: {stderr}");
    ensure!(!out.status.success(), "a failed push exits non-zero");
    ensure!(
        stderr.contains(&format!("registry {down}")) && stderr.to_lowercase().contains("connection refused"),
        "the error names the registry and the refusal:\n{stderr}"
    );
    ensure!(bed.local_digests()?.len() == local_after.len() + 1, "the local checkpoint was committed");

    // A registry not listed as insecure is never spoken to over plain HTTP:
    // with the default settings lazarus uses HTTPS and the plain registry fails the handshake.
    let strict = bed.config(&[])?;
    let out = bed.checkpoint(&key, &strict, &["--repository", &format!("{registry}/{repository}")])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("not insecure: {stderr}");
    ensure!(!out.status.success(), "https to a plain-HTTP registry fails");
    ensure!(stderr.contains("insecure_registries"), "the error hints at insecure_registries:\n{stderr}");
    ensure!(tag_digest(&registry, &repository, &format!("{CONTAINER}-latest"))? == first, "-latest untouched");
    bed.sweep().await?;
    Ok(())
}

/// A second Distribution registry started by the test itself: HTTPS with a
/// certificate from a CA made here with openssl, and htpasswd (Basic) auth.
struct TlsRegistry {
    child: std::process::Child,
    address: String,
    ca: PathBuf,
    log: PathBuf,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str], dir: &Path) -> Result<Vec<u8>> {
    let out =
        Command::new(program).args(args).current_dir(dir).output().with_context(|| format!("running {program}"))?;
    ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

impl TlsRegistry {
    async fn start(dir: &Path) -> Result<TlsRegistry> {
        std::fs::create_dir_all(dir)?;
        let days = ["-days", "2"];
        run(
            "openssl",
            &[
                &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"][..],
                &days,
                &["-subj", "/CN=lazarus-e2e-ca"],
            ]
            .concat(),
            dir,
        )?;
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            dir,
        )?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        run(
            "openssl",
            &[
                &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"][..],
                &days,
                &["-out", "server.pem", "-extfile", "ext.cnf"],
            ]
            .concat(),
            dir,
        )?;
        // Distribution's htpasswd wants bcrypt; libxcrypt (through Python's crypt) makes it.
        let hash = run(
            "/usr/bin/python3",
            &["-W", "ignore", "-c", "import crypt; print(crypt.crypt('secret', crypt.mksalt(crypt.METHOD_BLOWFISH)))"],
            dir,
        )?;
        let hash = String::from_utf8(hash)?.trim().to_owned();
        ensure!(hash.starts_with("$2"), "no bcrypt hash: {hash}");
        std::fs::write(dir.join("htpasswd"), format!("user:{hash}\n"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let d = dir.display();
        std::fs::write(
            dir.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n\
                 http:\n  addr: {address}\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n\
                 auth:\n  htpasswd:\n    realm: lazarus-e2e\n    path: {d}/htpasswd\n"
            ),
        )?;
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("registry.err"))?)
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = TlsRegistry { child, address, ca: dir.join("ca.pem"), log };
        let ca = registry.ca.display().to_string();
        let url = format!("https://{}/v2/", registry.address);
        let started = wait_for(Duration::from_secs(20), "the TLS registry to answer", || {
            let status = curl_status(&["--cacert", &ca, &url]).ok();
            async move { status.filter(|s| *s == 401) }
        })
        .await;
        if started.is_err() || registry.child.try_wait()?.is_some() {
            let err = std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default();
            anyhow::bail!(
                "the TLS registry did not start: {}",
                err.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        Ok(registry)
    }

    /// curl with the CA and the credentials.
    fn curl(&self, args: &[&str]) -> Result<Vec<u8>> {
        let ca = self.ca.display().to_string();
        curl(&[&["--cacert", ca.as_str(), "-u", "user:secret"][..], args].concat())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_credentials_and_a_private_ca() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let tls = TlsRegistry::start(&bed.dir.path().join("tls-registry")).await?;
    let repository = "lazarus-e2e/tls";
    let repository_name = format!("{}/{repository}", tls.address);
    let credentials = bed.dir.path().join("docker-config.json");
    // "dXNlcjpzZWNyZXQ=" is base64("user:secret"); the key is written the way `docker login` does.
    std::fs::write(
        &credentials,
        format!(r#"{{"auths":{{"https://{}":{{"auth":"dXNlcjpzZWNyZXQ="}}}}}}"#, tls.address),
    )?;
    let write_config = |name: &str, text: String| -> Result<PathBuf> {
        let path = bed.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_line = format!("registry_ca_files = [{:?}]\n", tls.ca.display().to_string());
    let credentials_line = format!("registry_credentials = {:?}\n", credentials.display().to_string());
    let full = write_config("tls.toml", format!("{ca_line}{credentials_line}"))?;
    let no_credentials = write_config("tls-anonymous.toml", ca_line.clone())?;
    let no_ca = write_config("tls-no-ca.toml", credentials_line.clone())?;
    bed.start_pod("tls", &[]).await?;
    let key = format!("{NAMESPACE}/tls/{CONTAINER}");

    let (local, remote) = bed.checkpoint_pushed(&key, &full, &["--repository", &repository_name])?;
    println!("https + credentials: {local}\n                     {remote}");
    let (tag, digest) = split_pushed(&remote, &repository_name)?;
    let tags: serde_json::Value =
        serde_json::from_slice(&tls.curl(&[&format!("https://{}/v2/{repository}/tags/list", tls.address)])?)?;
    let mut names: Vec<&str> = tags["tags"].as_array().context("tags")?.iter().filter_map(|t| t.as_str()).collect();
    names.sort_unstable();
    ensure!(names == [tag, &format!("{CONTAINER}-latest")], "tags {names:?}");
    let manifest = tls.curl(&[
        "-H",
        &format!("Accept: {MANIFEST_ACCEPT}"),
        &format!("https://{}/v2/{repository}/manifests/{CONTAINER}-latest", tls.address),
    ])?;
    ensure!(sha256(&manifest) == digest, "-latest is the pushed manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    let layer = manifest["layers"][0]["digest"].as_str().context("layer")?;
    let blob = tls.curl(&["-L", &format!("https://{}/v2/{repository}/blobs/{layer}", tls.address)])?;
    ensure!(sha256(&blob) == layer, "the layer fetched over https matches its digest");

    // Without credentials: the Basic challenge cannot be answered.
    let out = bed.checkpoint(&key, &no_credentials, &["--repository", &repository_name])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("anonymous: {}", stderr.lines().last().unwrap_or_default());
    ensure!(!out.status.success(), "anonymous push to an htpasswd registry fails");
    ensure!(
        stderr.contains("authentication failed") && stderr.contains("registry_credentials"),
        "the error says credentials are missing:\n{stderr}"
    );
    // Without the CA: the certificate is not trusted.
    let out = bed.checkpoint(&key, &no_ca, &["--repository", &repository_name])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("without the CA: {}", stderr.lines().last().unwrap_or_default());
    ensure!(!out.status.success(), "a push without the private CA fails");
    ensure!(stderr.contains("registry_ca_files"), "the error hints at registry_ca_files:\n{stderr}");
    println!("tls registry log: {}", tls.log.display());
    bed.sweep().await?;
    Ok(())
}
