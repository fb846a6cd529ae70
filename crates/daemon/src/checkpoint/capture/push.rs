//! Pushing a committed checkpoint to a registry; never undoes the local one.

use super::*;

impl Checkpointer {
    /// Pushes a committed checkpoint and applies registry retention; records
    /// the outcome in `checkpoint` and the metrics.
    pub(super) async fn push(
        &self,
        checkpoint: &mut Checkpoint,
        container_id: &str,
        container_name: &str,
        repository: &Reference,
        keep: usize,
    ) {
        let started = Instant::now();
        let pod = checkpoint.key.rsplit_once('/').map_or(checkpoint.key.as_str(), |(pod, _)| pod).to_owned();
        // The store's layout shares chunks between versions: only what the registry lacks is
        // sent. Other runtimes read one tar of the tree: with `registry_layout = "portable"` the
        // checkpoint is pushed in that layout (written now, after the local checkpoint is committed).
        let converted = match self.config.registry_layout {
            RegistryLayout::Incremental => Ok(None),
            RegistryLayout::Portable => {
                let (store, digest, compression) =
                    (self.store.clone(), checkpoint.digest.clone(), self.config.compression);
                crate::blocking::run(move || crate::checkpoint::image::compatible(&store, &digest, compression)).await
            }
        };
        let (pushed_digest, _compatible) = match converted {
            Ok(Some(compatible)) => (compatible.manifest_digest.clone(), Some(compatible)),
            Ok(None) => (checkpoint.digest.clone(), None),
            Err(e) => {
                self.metrics.checkpoint_pushed(false);
                tracing::warn!(pod = %pod, container = container_name, container_id, error = %e, "writing the checkpoint in the registry's layout failed; nothing is pushed, the local checkpoint is kept");
                checkpoint.push_error = Some(format!("pushing to {repository}: {e}"));
                return;
            }
        };
        let result = match self.registry_client().await {
            Ok(client) => lazarus_registry::push_checkpoint(
                &client,
                &self.store,
                &pushed_digest,
                repository,
                container_name,
                &checkpoint.tag,
            )
            .await
            .map(|pushed| (client, pushed))
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((client, pushed)) => {
                self.metrics.checkpoint_pushed(true);
                tracing::info!(
                    pod = %pod,
                    container = container_name,
                    container_id,
                    reference = %pushed.reference,
                    uploaded = pushed.uploaded,
                    uploaded_bytes = pushed.uploaded_bytes,
                    push_ms = started.elapsed().as_millis() as u64,
                    "checkpoint pushed"
                );
                checkpoint.pushed = Some(pushed.reference);
                match lazarus_registry::apply_retention(&client, repository, container_name, keep).await {
                    Ok(outcome) if !outcome.removed.is_empty() => tracing::info!(
                        pod = %pod,
                        container = container_name,
                        container_id,
                        repository = %repository,
                        removed = outcome.removed.len(),
                        kept = outcome.kept.len(),
                        "registry retention applied"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        pod = %pod,
                        container = container_name,
                        container_id,
                        repository = %repository,
                        error = %e,
                        "registry retention failed; older checkpoints stay in the registry"
                    ),
                }
            }
            Err(error) => {
                self.metrics.checkpoint_pushed(false);
                tracing::warn!(
                    pod = %pod,
                    container = container_name,
                    container_id,
                    registry = %repository.registry,
                    repository = %repository,
                    local = %checkpoint.reference,
                    error = %error,
                    "pushing the checkpoint failed; the local checkpoint is kept and the registry's \
                     previous checkpoints are untouched"
                );
                checkpoint.push_error = Some(format!("pushing to {repository}: {error}"));
            }
        }
    }
}

/// The pod's `lazarus.dev/checkpoint-repository`: `Ok(None)` when not
/// annotated, `Err` (annotation, value and reason) when malformed or when it
/// has a tag or digest (lazarus chooses the tags).
pub fn repository_from_annotations(
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Option<Reference>, String> {
    let Some(value) = annotations.get(ann::CHECKPOINT_REPOSITORY) else { return Ok(None) };
    let reject = |reason: String| format!("{}={value:?} rejected: {reason}", ann::CHECKPOINT_REPOSITORY);
    let reference = Reference::parse(value).map_err(|e| reject(e.reason))?;
    if reference.tag.is_some() || reference.digest.is_some() {
        return Err(reject("expected a repository without tag or digest (lazarus chooses the tags)".into()));
    }
    Ok(Some(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_annotation_is_validated() {
        let mut a = std::collections::HashMap::new();
        assert_eq!(repository_from_annotations(&a), Ok(None));
        a.insert(ann::CHECKPOINT_REPOSITORY.to_owned(), "registry.example.com/team/job".to_owned());
        let r = repository_from_annotations(&a).expect("valid").expect("set");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("registry.example.com", "team/job"));
        for bad in ["team/job", "registry.example.com/Team", "registry.example.com/team/job:v1", ""] {
            a.insert(ann::CHECKPOINT_REPOSITORY.to_owned(), bad.to_owned());
            let err = repository_from_annotations(&a).expect_err(bad);
            assert!(err.starts_with(&format!("lazarus.dev/checkpoint-repository={bad:?} rejected: ")), "{err}");
        }
    }
}
