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
use lazarus_format::{chunks, tree_files};
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
    let stored = stored_files(files, |digest| store.blob_path(digest).map_err(|e| e.to_string()))
        .map_err(|reason| PackageError::Oci { what: "manifest", reason })?;
    let expected = layer.digest().to_string();
    let path = store.blob_path(&expected)?;
    let input = File::open(&path).map_err(io("opening", &path))?;
    let mut hashing = std::io::BufReader::with_capacity(1 << 20, HashingReader::new(input));
    let written = lazarus_format::compression::decompressing(&mut hashing)
        .map_err(|e| tree_files::TreeFileError::Io { action: "decompressing", path: path.clone(), source: e })
        .and_then(|decoded| tree_files::write_tree_tar(decoded, &stored, out));
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading", &path))?;
    let actual = hashing.into_inner().into_digester().oci();
    if actual != expected {
        return Err(PackageError::Damaged { layer: expected, actual });
    }
    match written {
        Ok(()) => Ok(()),
        Err(tree_files::TreeFileError::Damaged { digest, title, actual }) => {
            Err(PackageError::Damaged { layer: format!("{digest} ({title})"), actual })
        }
        Err(e) => Err(PackageError::Io { action: "archiving the tree of", path, source: std::io::Error::other(e) }),
    }
}

/// The large files of a checkpoint from its layers after the first, each blob found by `blob`:
/// a layer that is a whole file ([`tree_files::MEDIA_TYPE`], `+zstd`), or consecutive chunk
/// layers with one title ([`chunks::MEDIA_TYPE`], `+zstd`). Anything else is refused, naming it.
pub fn stored_files(
    layers: &[oci_spec::image::Descriptor],
    blob: impl Fn(&str) -> Result<std::path::PathBuf, String>,
) -> Result<Vec<tree_files::StoredFile>, String> {
    let mut files: Vec<tree_files::StoredFile> = Vec::new();
    let mut chunked_title: Option<String> = None;
    for layer in layers {
        let digest = layer.digest().to_string();
        let annotation = |key: &str| layer.annotations().as_ref().and_then(|a| a.get(key)).cloned();
        let title =
            annotation(tree_files::TITLE).ok_or_else(|| format!("layer {digest} has no {}", tree_files::TITLE))?;
        let media = layer.media_type().to_string();
        let (chunk, compressed, size_key) = match media.as_str() {
            tree_files::MEDIA_TYPE => (false, false, None),
            tree_files::MEDIA_TYPE_ZSTD => (false, true, Some(tree_files::FILE_SIZE)),
            chunks::MEDIA_TYPE => (true, false, None),
            chunks::MEDIA_TYPE_ZSTD => (true, true, Some(chunks::CHUNK_SIZE)),
            other => {
                return Err(format!(
                    "layer {digest} has media type {other}, expected {}, {} or their +zstd forms",
                    tree_files::MEDIA_TYPE,
                    chunks::MEDIA_TYPE
                ));
            }
        };
        let size = match size_key {
            None => layer.size(),
            Some(key) => annotation(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("layer {digest} ({title}) has no {key}"))?,
        };
        let piece = tree_files::StoredPiece { blob: blob(&digest)?, digest, size, compressed };
        match files.last_mut() {
            Some(last) if chunk && chunked_title.as_deref() == Some(title.as_str()) => last.pieces.push(piece),
            _ => {
                if files.iter().any(|f| f.title == title) {
                    return Err(format!("{title} is stored twice (layer {})", piece.digest));
                }
                chunked_title = chunk.then(|| title.clone());
                files.push(tree_files::StoredFile { title, pieces: vec![piece] });
            }
        }
    }
    Ok(files)
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
    /// Bytes this checkpoint added to the store: its layers but the chunks the store had.
    pub written: u64,
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
                        .chain(adopted.iter().flat_map(|(_, s)| s.chunks.iter().map(|c| c.blob.digest.clone())))
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
                for chunk in &stored.chunks {
                    let mut annotations = HashMap::from([(tree_files::TITLE.to_owned(), file.title.clone())]);
                    let media = if chunk.compressed {
                        annotations.insert(chunks::CHUNK_SIZE.to_owned(), chunk.size.to_string());
                        chunks::MEDIA_TYPE_ZSTD
                    } else {
                        chunks::MEDIA_TYPE
                    };
                    let mut descriptor = chunk.blob.descriptor(MediaType::Other(media.to_owned()));
                    descriptor.set_annotations(Some(annotations));
                    layers.push(descriptor);
                }
            }
            layers
        })
        .annotations(manifest_annotations)
        .build()
        .map_err(oci("manifest"))?;
    let manifest = manifest.to_string().map_err(oci("manifest"))?.into_bytes();
    let layer_size = layer.size + adopted.iter().flat_map(|(_, s)| &s.chunks).map(|c| c.blob.size).sum::<u64>();
    let written = layer.size + adopted.iter().map(|(_, s)| s.written).sum::<u64>();
    let mut blobs = vec![layer, config_blob];
    blobs.extend(adopted.into_iter().flat_map(|(_, s)| s.chunks).map(|c| c.blob));
    Ok(Packaged { manifest, layer_size, written, blobs })
}

/// One chunk of a large file in the store.
#[derive(Debug)]
struct StoredChunk {
    blob: lazarus_store::BlobInfo,
    /// The file bytes it holds.
    size: u64,
    /// zstd-compressed (the file compresses: it paid), rather than as it is.
    compressed: bool,
}

/// What storing one large file did.
#[derive(Debug)]
struct StoredAs {
    chunks: Vec<StoredChunk>,
    /// Bytes of chunks written (the others were in the store already).
    written: u64,
}

/// One large file into the store, as content-defined chunks ([`chunks`]): read once, each chunk
/// hashed (and, when sampling says zstd halves the file, compressed at level 1) on two threads;
/// a chunk the store has already (an earlier version of this memory) is not written again, the
/// new ones are synced together. CRIU's file is removed afterwards.
fn store_file(store: &Store, file: &tree_files::TreeFile) -> Result<StoredAs, PackageError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { action, path, source }
    };
    let opened = File::open(&file.path).map_err(io("opening", &file.path))?;
    let compress = tree_files::pays_to_compress(&opened, file.size).map_err(io("sampling", &file.path))?;
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(2);
    let receiver = std::sync::Mutex::new(receiver);
    let store_chunks = || -> Result<Vec<(usize, u64, lazarus_store::Chunk)>, PackageError> {
        let mut done = Vec::new();
        loop {
            let next = receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
            let Ok((index, data)) = next else { return Ok(done) };
            let size = data.len() as u64;
            let stored =
                if compress { zstd::bulk::compress(&data, 1).map_err(io("compressing", &file.path))? } else { data };
            done.push((index, size, store.store_chunk(&stored)?));
        }
    };
    let (cut, outcomes) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2).map(|_| scope.spawn(store_chunks)).collect();
        let cut = chunks::cut(chunks::Chunker::for_size(file.size), &opened, |index, data| {
            sender.send((index, data)).map_err(|_| std::io::Error::other("the chunk writers stopped"))
        });
        drop(sender);
        let outcomes: Vec<_> = workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(io("storing", &file.path)(std::io::Error::other("a chunk writer panicked")))
                })
            })
            .collect();
        (cut, outcomes)
    });
    let mut stored = Vec::new();
    for outcome in outcomes {
        stored.extend(outcome?);
    }
    cut.map_err(io("reading", &file.path))?;
    stored.sort_by_key(|(index, _, _)| *index);
    // Staged chunks become blobs together; in file order, each takes its place back.
    let (mut staged, mut order) = (Vec::new(), Vec::with_capacity(stored.len()));
    for (_, size, chunk) in stored {
        match chunk {
            lazarus_store::Chunk::Existing(blob) => order.push((size, Some(blob))),
            lazarus_store::Chunk::Staged(blob) => {
                staged.push(blob);
                order.push((size, None));
            }
        }
    }
    let mut installed = store.install_staged(staged)?.into_iter();
    let written = installed.as_slice().iter().map(|b| b.size).sum();
    let chunks = order
        .into_iter()
        .filter_map(|(size, existing)| {
            existing.or_else(|| installed.next()).map(|blob| StoredChunk { blob, size, compressed: compress })
        })
        .collect();
    std::fs::remove_file(&file.path).map_err(io("removing", &file.path))?;
    Ok(StoredAs { chunks, written })
}

/// Stores the large files, two at a time.
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
