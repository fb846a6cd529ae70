//! Marker files under the run directory: one empty-ish file per container
//! id in a directory per kind (`frozen/`, `stopping/`). They are shared by
//! the daemon and the CLI, survive a restart of either (the run directory
//! is a tmpfs: they do not survive a reboot, nor need to).

use std::path::{Path, PathBuf};

/// One kind of marker.
#[derive(Debug, Clone)]
pub struct Markers {
    dir: PathBuf,
}

impl Markers {
    /// Markers in `<run_dir>/<kind>`.
    pub fn new(run_dir: &Path, kind: &str) -> Self {
        Markers { dir: run_dir.join(kind) }
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(container_id)
    }

    /// Sets the marker of `container_id`, recording this process's id.
    pub async fn set(&self, container_id: &str) -> std::io::Result<()> {
        let path = self.path(container_id);
        let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        tokio::fs::create_dir_all(&self.dir).await.map_err(context)?;
        tokio::fs::write(&path, format!("{}\n", std::process::id())).await.map_err(context)
    }

    /// Removes the marker of `container_id`, if there is one.
    pub async fn clear(&self, container_id: &str) {
        let path = self.path(container_id);
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a marker file");
        }
    }

    /// Whether `container_id` has a marker.
    pub async fn exists(&self, container_id: &str) -> bool {
        tokio::fs::try_exists(self.path(container_id)).await.unwrap_or(false)
    }

    /// Container ids with a marker.
    pub async fn list(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else { return ids };
        while let Ok(Some(entry)) = entries.next_entry().await {
            ids.push(entry.file_name().to_string_lossy().into_owned());
        }
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn markers_are_set_listed_and_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let markers = Markers::new(dir.path(), "frozen");
        assert!(markers.list().await.is_empty());
        markers.set("b").await.expect("set");
        markers.set("a").await.expect("set");
        assert!(markers.exists("a").await);
        assert_eq!(markers.list().await, vec!["a".to_owned(), "b".to_owned()]);
        assert!(dir.path().join("frozen/a").is_file());
        markers.clear("a").await;
        markers.clear("a").await;
        assert!(!markers.exists("a").await);
        assert!(!Markers::new(dir.path(), "stopping").exists("b").await, "kinds are separate");
    }
}
