//! `lazarus checkpoints list` and `lazarus checkpoints inspect`: printing the
//! store's checkpoints (the queries are `lazarus_store::query`).

use std::collections::BTreeMap;

use lazarus_format::annotations as ann;
use lazarus_format::fsutil::human_size;
use lazarus_store::Store;
use lazarus_store::query::{entries, find};

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
            human_size(row.size()),
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
        println!("layer:       {} {} ({})", layer.digest(), human_size(layer.size()), layer.media_type());
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
