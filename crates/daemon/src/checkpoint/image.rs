//! Packaging a checkpoint tree as an OCI image: a layer holding the tree
//! (checkpointctl's layout) but for its large files, which are blobs of their
//! own, moved into the store as CRIU wrote them ([`lazarus_format::tree_files`]);
//! an image config; a manifest carrying the annotations containerd, CRI-O,
//! Podman and checkpointctl look for.

#![expect(clippy::disallowed_methods, reason = "packaging runs on the blocking pool (capture::commit)")]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use lazarus_format::digest::{HashingReader, HashingWriter};
use lazarus_format::tree_files;
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, Os, RootFsBuilder,
};

use super::capture::Compression;
use lazarus_store::Store;

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading the tree or writing the layer.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Building OCI documents.
    #[error("building the OCI {what}: {reason}")]
    Oci {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Writing blobs to the store.
    #[error(transparent)]
    Store(#[from] lazarus_store::StoreError),
    /// A stored layer does not have its digest.
    #[error("layer {layer} is damaged: its data has {actual}")]
    Damaged {
        /// The layer's digest (and, for a file, its path in the tree).
        layer: String,
        /// What the data hashes to.
        actual: String,
    },
}

/// Writes the whole tree of the stored checkpoint `manifest` as one tar
/// (checkpointctl's layout) into `out`: the first layer's entries, then the
/// large files stored as they are. Every layer is checked against its
/// digest on the way; a damaged one fails the call (throw `out` away).
pub fn write_stored_tree(store: &Store, manifest: &ImageManifest, out: impl Write) -> Result<(), PackageError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { action, path, source }
    };
    let Some((layer, files)) = manifest.layers().split_first() else {
        return Err(PackageError::Oci { what: "manifest", reason: "it has no layer".to_owned() });
    };
    let mut stored = Vec::with_capacity(files.len());
    for file in files {
        let digest = file.digest().to_string();
        let title = file.annotations().as_ref().and_then(|a| a.get(tree_files::TITLE)).cloned().ok_or_else(|| {
            PackageError::Oci { what: "manifest", reason: format!("layer {digest} has no {}", tree_files::TITLE) }
        })?;
        let path = store.blob_path(&digest)?;
        let blob = File::open(&path).map_err(io("opening", &path))?;
        let compressed = file.media_type().to_string() == tree_files::MEDIA_TYPE_ZSTD;
        let size = if compressed {
            let annotated = file.annotations().as_ref().and_then(|a| a.get(tree_files::FILE_SIZE));
            annotated.and_then(|v| v.parse().ok()).ok_or_else(|| PackageError::Oci {
                what: "manifest",
                reason: format!("layer {digest} has no {}", tree_files::FILE_SIZE),
            })?
        } else {
            file.size()
        };
        stored.push(tree_files::StoredFile { title, digest, file: blob, size, compressed });
    }
    let expected = layer.digest().to_string();
    let path = store.blob_path(&expected)?;
    let input = File::open(&path).map_err(io("opening", &path))?;
    let mut hashing = std::io::BufReader::with_capacity(1 << 20, HashingReader::new(input));
    let written = lazarus_format::compression::decompressing(&mut hashing)
        .and_then(|decoded| tree_files::write_tree_tar(decoded, stored, out));
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading", &path))?;
    let actual = hashing.into_inner().into_digester().oci();
    if actual != expected {
        return Err(PackageError::Damaged { layer: expected, actual });
    }
    let damaged = written.map_err(io("archiving the tree of", &path))?;
    if let Some((title, actual)) = damaged.into_iter().next() {
        return Err(PackageError::Damaged { layer: title, actual });
    }
    Ok(())
}

/// A checkpoint in the layout other runtimes read, for a push.
#[derive(Debug)]
pub struct Compatible {
    /// Its manifest's digest in the store (not in the index).
    pub manifest_digest: String,
    /// Its blobs, leased until the push is done.
    #[expect(dead_code, reason = "held, not read: the leases keep the blobs from garbage collection")]
    blobs: Vec<lazarus_store::BlobInfo>,
}

/// For the stored checkpoint `manifest_digest` with large files of its own:
/// the same checkpoint as one compressed tar layer (what containerd, CRI-O and
/// checkpointctl read), written into the store next to it (not indexed: its
/// blobs live as long as the returned leases, then the store's garbage
/// collection takes them). `None`: it is one layer already.
pub fn compatible(
    store: &Store,
    manifest_digest: &str,
    compression: Compression,
) -> Result<Option<Compatible>, PackageError> {
    let oci = |what| move |e: oci_spec::OciSpecError| PackageError::Oci { what, reason: e.to_string() };
    let manifest = ImageManifest::from_reader(&store.read_blob(manifest_digest)?[..]).map_err(oci("manifest"))?;
    if manifest.layers().len() <= 1 {
        return Ok(None);
    }
    let mut diff_id = String::new();
    let layer = store.write_blob_streamed(|out| {
        let compressed = compressor(out, compression)?;
        let mut hashing = HashingWriter::new(compressed);
        write_stored_tree(store, &manifest, &mut hashing).map_err(std::io::Error::other)?;
        let (digester, mut compressed) = hashing.finish();
        compressed.flush()?;
        drop(compressed);
        diff_id = digester.oci();
        Ok(())
    })?;
    let mut config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&store.read_blob(manifest.config().digest().as_ref())?)
            .map_err(|e| PackageError::Oci { what: "image config", reason: e.to_string() })?;
    let mut rootfs = config.rootfs().clone();
    rootfs.set_diff_ids(vec![diff_id]);
    config.set_rootfs(rootfs);
    let config_blob = store.write_blob_bytes(&config.to_string().map_err(oci("image config"))?.into_bytes())?;
    let mut converted = manifest.clone();
    converted.set_config(config_blob.descriptor(MediaType::ImageConfig));
    converted.set_layers(vec![layer.descriptor(layer_media_type(compression))]);
    let manifest_blob = store.write_blob_bytes(&converted.to_string().map_err(oci("manifest"))?.into_bytes())?;
    Ok(Some(Compatible {
        manifest_digest: manifest_blob.digest.clone(),
        blobs: vec![layer, config_blob, manifest_blob],
    }))
}

/// A packaged, not yet committed, checkpoint image.
#[derive(Debug)]
pub struct Packaged {
    /// The manifest's bytes (commit them with [`Store::commit`]).
    pub manifest: Vec<u8>,
    /// Compressed layer size.
    pub layer_size: u64,
    /// The layer and config blobs. Holding them keeps the store's garbage
    /// collection away from them until the manifest is committed: keep this
    /// value alive until [`Store::commit`] returns.
    pub blobs: Vec<lazarus_store::BlobInfo>,
}

/// A layer's compressor over `out`: zstd level 3 on two threads (the container
/// is running again, the node is not ours alone), or gzip. Finished when dropped.
fn compressor<'a>(out: impl Write + 'a, compression: Compression) -> std::io::Result<Box<dyn Write + 'a>> {
    Ok(match compression {
        Compression::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(out, 3)?;
            encoder.multithread(2)?;
            Box::new(encoder.auto_finish())
        }
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast())),
    })
}

/// The media type of a layer compressed with `compression`.
fn layer_media_type(compression: Compression) -> MediaType {
    match compression {
        Compression::Zstd => MediaType::ImageLayerZstd,
        Compression::Gzip => MediaType::ImageLayerGzip,
    }
}

/// Writes the tree at `tree` as a compressed tar to `layer_path`; returns the
/// uncompressed digest (the image's diff id).
fn write_layer(tree: &Path, layer_path: &Path, compression: Compression) -> Result<String, PackageError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { action, path, source }
    };
    let file = File::create(layer_path).map_err(io("creating", layer_path))?;
    let compressed = compressor(BufWriter::new(file), compression).map_err(io("compressing", layer_path))?;
    let mut tar = tar::Builder::new(HashingWriter::new(compressed));
    tar.follow_symlinks(false);
    let mut names: Vec<_> =
        std::fs::read_dir(tree).map_err(io("reading", tree))?.filter_map(Result::ok).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let path = tree.join(&name);
        let result =
            if path.is_dir() { tar.append_dir_all(&name, &path) } else { tar.append_path_with_name(&path, &name) };
        result.map_err(io("archiving", &path))?;
    }
    let mut hashing = tar.into_inner().map_err(io("archiving", tree))?;
    hashing.flush().map_err(io("writing", layer_path))?;
    let (digester, compressed) = hashing.finish();
    drop(compressed); // finishes the compressor and flushes the file
    Ok(digester.oci())
}

/// Packages `tree` into blobs of `store` and returns the manifest to commit.
/// `scratch` is a directory for the layer file (not inside `tree`).
pub fn package(
    store: &Store,
    tree: &Path,
    scratch: &Path,
    compression: Compression,
    annotations: &BTreeMap<String, String>,
    created: &str,
) -> Result<Packaged, PackageError> {
    let oci = |what| move |e: oci_spec::OciSpecError| PackageError::Oci { what, reason: e.to_string() };
    // The large files first: they leave the tree, the layer holds the rest.
    let large = tree_files::large_files(tree, tree_files::MIN_SIZE).map_err(|source| PackageError::Io {
        action: "reading",
        path: tree.to_owned(),
        source,
    })?;
    let adopted = adopt_all(store, &large)?;
    let layer_path = scratch.join("layer");
    let diff_id = write_layer(tree, &layer_path, compression)?;
    let layer_file = File::open(&layer_path).map_err(|source| PackageError::Io {
        action: "opening",
        path: layer_path.clone(),
        source,
    })?;
    let layer = store.write_blob(layer_file)?;
    let _ = std::fs::remove_file(&layer_path);

    let labels: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::from(lazarus_format::annotations::go_arch()))
        .os(Os::Linux)
        .created(created.to_owned())
        .config(ConfigBuilder::default().labels(labels).build().map_err(oci("image config"))?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    std::iter::once(diff_id)
                        .chain(adopted.iter().map(|(_, s)| s.blob.digest.clone()))
                        .collect::<Vec<_>>(),
                )
                .build()
                .map_err(oci("rootfs"))?,
        )
        .build()
        .map_err(oci("image config"))?;
    let config_bytes = config.to_string().map_err(oci("image config"))?.into_bytes();
    let config_blob = store.write_blob_bytes(&config_bytes)?;

    let digest = |d: &str| Digest::from_str(d).map_err(|e| PackageError::Oci { what: "digest", reason: e.to_string() });
    let layer_media = layer_media_type(compression);
    let mut manifest_annotations: HashMap<String, String> = labels_with_created(annotations, created);
    manifest_annotations.shrink_to_fit();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(digest(&config_blob.digest)?)
                .size(config_blob.size)
                .build()
                .map_err(oci("config descriptor"))?,
        )
        .layers({
            let mut layers = vec![
                DescriptorBuilder::default()
                    .media_type(layer_media)
                    .digest(digest(&layer.digest)?)
                    .size(layer.size)
                    .build()
                    .map_err(oci("layer descriptor"))?,
            ];
            for (file, stored) in &adopted {
                let mut annotations = HashMap::from([(tree_files::TITLE.to_owned(), file.title.clone())]);
                let media = if stored.compressed {
                    annotations.insert(tree_files::FILE_SIZE.to_owned(), file.size.to_string());
                    tree_files::MEDIA_TYPE_ZSTD
                } else {
                    tree_files::MEDIA_TYPE
                };
                let mut descriptor = stored.blob.descriptor(MediaType::Other(media.to_owned()));
                descriptor.set_annotations(Some(annotations));
                layers.push(descriptor);
            }
            layers
        })
        .annotations(manifest_annotations)
        .build()
        .map_err(oci("manifest"))?;
    let manifest = manifest.to_string().map_err(oci("manifest"))?.into_bytes();
    let layer_size = layer.size + adopted.iter().map(|(_, s)| s.blob.size).sum::<u64>();
    let mut blobs = vec![layer, config_blob];
    blobs.extend(adopted.into_iter().map(|(_, s)| s.blob));
    Ok(Packaged { manifest, layer_size, blobs })
}

/// How a large file went into the store.
#[derive(Debug)]
struct StoredAs {
    blob: lazarus_store::BlobInfo,
    /// zstd-compressed (it paid), rather than the file as it is.
    compressed: bool,
}

/// One large file into the store: as it is (moved, no copy), or — when
/// sampling says zstd halves it at least — compressed at level 1.
fn store_file(store: &Store, file: &tree_files::TreeFile) -> Result<StoredAs, PackageError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { action, path, source }
    };
    let opened = File::open(&file.path).map_err(io("opening", &file.path))?;
    if !tree_files::pays_to_compress(&opened, file.size).map_err(io("sampling", &file.path))? {
        drop(opened);
        return Ok(StoredAs { blob: store.adopt_file(&file.path)?, compressed: false });
    }
    let blob = store.write_blob_streamed(|out| {
        let mut encoder = zstd::stream::write::Encoder::new(out, 1)?;
        encoder.multithread(2)?;
        std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &opened), &mut encoder)?;
        encoder.finish()?;
        Ok(())
    })?;
    std::fs::remove_file(&file.path).map_err(io("removing", &file.path))?;
    Ok(StoredAs { blob, compressed: true })
}

/// Moves the large files into the store (hashed while they are synced to
/// disk), two at a time: each is one CPU's hashing.
fn adopt_all(
    store: &Store,
    large: &[tree_files::TreeFile],
) -> Result<Vec<(tree_files::TreeFile, StoredAs)>, PackageError> {
    let stored = lazarus_format::fsutil::on_workers(
        large,
        2,
        |file| store_file(store, file),
        || {
            Err(PackageError::Io {
                action: "storing",
                path: large.first().map(|f| f.path.clone()).unwrap_or_default(),
                source: std::io::Error::other("a worker storing the checkpoint's large files panicked"),
            })
        },
    );
    large.iter().cloned().zip(stored).map(|(file, stored)| stored.map(|s| (file, s))).collect()
}

fn labels_with_created(annotations: &BTreeMap<String, String>, created: &str) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.insert(lazarus_format::annotations::CREATED.to_owned(), created.to_owned());
    all
}
