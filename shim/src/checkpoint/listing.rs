//! `lazarus checkpoints list` and `lazarus checkpoints inspect`.

use std::collections::BTreeMap;

use oci_spec::image::ImageManifest;

use super::annotations as ann;
use crate::store::{Entry, Store};

/// One row of the listing.
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

/// Prints the listing.
pub fn list(store: &Store, container: Option<&str>) -> Result<(), String> {
    let rows = entries(store, container)?;
    if rows.is_empty() {
        eprintln!("no checkpoints{}", container.map(|c| format!(" of {c}")).unwrap_or_default());
        return Ok(());
    }
    println!("{:<60} {:<19} {:>10}  CREATED", "CHECKPOINT", "DIGEST", "SIZE");
    for row in rows {
        println!(
            "{:<60} {:<19} {:>10}  {}",
            row.name,
            &row.digest[..row.digest.len().min(19)],
            human(row.size()),
            row.created
        );
    }
    Ok(())
}

/// Prints one checkpoint's details.
pub fn inspect(store: &Store, reference: &str) -> Result<(), String> {
    let found = find(store, reference)?;
    let manifest = found.manifest.as_ref().ok_or_else(|| format!("manifest {} is unreadable", found.digest))?;
    let annotations: BTreeMap<String, String> = manifest
        .annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    println!("reference:   {}", found.reference());
    println!("created:     {}", found.created);
    for layer in manifest.layers() {
        println!("layer:       {} {} ({})", layer.digest(), human(layer.size()), layer.media_type());
    }
    let ms = |key: &str, div: f64| {
        annotations.get(key).and_then(|v| v.parse::<f64>().ok()).map(|v| format!("{:.1} ms", v / div))
    };
    if let Some(t) = ms("lazarus.dev/criu-freezing-time-us", 1000.0) {
        println!("freezing:    {t}");
    }
    if let Some(t) = ms(ann::LAZARUS_FROZEN_TIME_MS, 1.0) {
        println!("frozen:      {t} (the whole cut: dump and writable layer)");
    }
    if let Some(t) = ms("lazarus.dev/criu-frozen-time-us", 1000.0) {
        println!("criu frozen: {t}");
    }
    if let Some(trigger) = annotations.get(ann::LAZARUS_TRIGGER) {
        println!("trigger:     {trigger}");
    }
    if let Some(t) = ms("lazarus.dev/dump-time-ms", 1.0) {
        println!("dump call:   {t}");
    }
    println!("annotations:");
    for (k, v) in &annotations {
        println!("  {k}: {v}");
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
