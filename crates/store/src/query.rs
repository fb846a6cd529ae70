//! Queries over the store's checkpoints: by container, by reference.

use oci_spec::image::ImageManifest;

use lazarus_format::annotations as ann;

use crate::{Entry, Store};

/// A stored checkpoint, as listings and restores see it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// `namespace/pod/container:tag`.
    pub name: String,
    /// `namespace/pod/container`.
    pub key: String,
    /// Manifest digest.
    pub digest: String,
    /// Creation time.
    pub created: String,
    /// Manifest (annotations, layers).
    pub manifest: Option<ImageManifest>,
}

impl Listed {
    /// `local:name@digest`.
    pub fn reference(&self) -> String {
        format!("local:{}@{}", self.name, self.digest)
    }

    /// Size of the layers.
    pub fn size(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.layers().iter().map(|l| l.size()).sum())
    }
}

fn annotation<'a>(entry: &'a Entry, key: &str) -> &'a str {
    entry.descriptor.annotations().as_ref().and_then(|a| a.get(key)).map_or("", String::as_str)
}

/// Every checkpoint in the store (optionally of one container), oldest first.
pub fn entries(store: &Store, container: Option<&str>) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    for entry in store.list().map_err(|e| e.to_string())? {
        let key = annotation(&entry, ann::CONTAINER_KEY).to_owned();
        if container.is_some_and(|c| c != key) {
            continue;
        }
        let digest = entry.descriptor.digest().to_string();
        let manifest =
            store.read_blob(&digest).ok().and_then(|bytes| serde_json::from_slice::<ImageManifest>(&bytes).ok());
        out.push(Listed {
            name: annotation(&entry, ann::REF_NAME).to_owned(),
            key,
            digest,
            created: annotation(&entry, ann::CREATED).to_owned(),
            manifest,
        });
    }
    Ok(out)
}

/// Finds one checkpoint: `local:key:tag[@digest]`, `key:tag`, `key` (its
/// newest), or a manifest digest.
pub fn find(store: &Store, reference: &str) -> Result<Listed, String> {
    let reference = reference.strip_prefix("local:").unwrap_or(reference);
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None if reference.starts_with("sha256:") => ("", Some(reference)),
        None => (reference, None),
    };
    let all = entries(store, None)?;
    let found = all.into_iter().rev().find(|l| {
        digest.is_none_or(|d| l.digest == d)
            && (name.is_empty() || l.name == name || (!name.contains(':') && l.key == name))
    });
    found.ok_or_else(|| format!("no checkpoint {reference:?} in the local store {}", store.root().display()))
}
