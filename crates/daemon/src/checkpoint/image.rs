//! Packaging a checkpoint tree as an OCI image: one layer holding the tree
//! (checkpointctl's layout), an image config, a manifest carrying the
//! annotations containerd, CRI-O, Podman and checkpointctl look for.

#![expect(clippy::disallowed_methods, reason = "packaging runs on the blocking pool (capture::commit)")]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use lazarus_format::digest::HashingWriter;
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder,
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

/// Writes the tree at `tree` as a compressed tar to `layer_path`; returns the
/// uncompressed digest (the image's diff id).
fn write_layer(tree: &Path, layer_path: &Path, compression: Compression) -> Result<String, PackageError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { action, path, source }
    };
    let file = File::create(layer_path).map_err(io("creating", layer_path))?;
    let compressed: Box<dyn Write> = match compression {
        Compression::Zstd => {
            let mut encoder =
                zstd::stream::write::Encoder::new(BufWriter::new(file), 3).map_err(io("compressing", layer_path))?;
            // Two threads: the container is running again, the node is not ours alone.
            encoder.multithread(2).map_err(io("compressing", layer_path))?;
            Box::new(encoder.auto_finish())
        }
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast())),
    };
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
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![diff_id]).build().map_err(oci("rootfs"))?)
        .build()
        .map_err(oci("image config"))?;
    let config_bytes = config.to_string().map_err(oci("image config"))?.into_bytes();
    let config_blob = store.write_blob_bytes(&config_bytes)?;

    let digest = |d: &str| Digest::from_str(d).map_err(|e| PackageError::Oci { what: "digest", reason: e.to_string() });
    let layer_media = match compression {
        Compression::Zstd => MediaType::ImageLayerZstd,
        Compression::Gzip => MediaType::ImageLayerGzip,
    };
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
        .layers(vec![
            DescriptorBuilder::default()
                .media_type(layer_media)
                .digest(digest(&layer.digest)?)
                .size(layer.size)
                .build()
                .map_err(oci("layer descriptor"))?,
        ])
        .annotations(manifest_annotations)
        .build()
        .map_err(oci("manifest"))?;
    let manifest = manifest.to_string().map_err(oci("manifest"))?.into_bytes();
    Ok(Packaged { manifest, layer_size: layer.size, blobs: vec![layer, config_blob] })
}

fn labels_with_created(annotations: &BTreeMap<String, String>, created: &str) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.insert(lazarus_format::annotations::CREATED.to_owned(), created.to_owned());
    all
}
