//! Which checkpoints to try, newest first: an explicit reference, or for
//! `latest` the pod's repository (else the local store).

use super::*;
use std::collections::BTreeMap;

use lazarus_format::annotations as ann;
use lazarus_store::query;

/// One concrete checkpoint to try.
#[derive(Debug, Clone)]
pub(super) enum Candidate {
    /// In the node-local store, by manifest digest.
    Local { reference: String, digest: String },
    /// A checkpoint archive on the node (kubelet's checkpoint API writes these).
    Archive { path: PathBuf },
    /// In a registry, by tag or digest.
    Registry { reference: Reference },
}

impl Candidate {
    pub(super) fn reference(&self) -> String {
        match self {
            Candidate::Local { reference, .. } => reference.clone(),
            Candidate::Archive { path } => path.display().to_string(),
            Candidate::Registry { reference } => reference.to_string(),
        }
    }

    /// The time tag of a checkpoint of `container` (what the checkpoints of
    /// one pod cut share); `None` for an archive.
    pub(super) fn time_tag(&self, container: &str) -> Option<String> {
        match self {
            Candidate::Local { reference, .. } => {
                let named = reference.strip_prefix("local:")?.split('@').next()?;
                named.rsplit_once(':').map(|(_, tag)| tag.to_owned())
            }
            Candidate::Archive { .. } => None,
            Candidate::Registry { reference } => {
                reference.tag.as_deref()?.strip_prefix(container)?.strip_prefix('-').map(str::to_owned)
            }
        }
    }

    /// The identity failures are remembered by.
    pub(super) fn identity(&self) -> String {
        match self {
            Candidate::Local { digest, .. } => digest.clone(),
            Candidate::Archive { path } => path.display().to_string(),
            Candidate::Registry { reference } => reference.digest.clone().unwrap_or_else(|| reference.to_string()),
        }
    }
}

impl Restorer {
    pub(super) fn resolve(&self, reference: &str) -> Result<Candidate, RestoreError> {
        if reference.starts_with('/') {
            let path = std::fs::canonicalize(reference).map_err(|e| RestoreError::NotFound {
                reference: reference.to_owned(),
                reason: format!("archive: {e}"),
            })?;
            checks::archive_allowed(&path, &self.config.allowed_dirs)
                .map_err(|failure| RestoreError::Check { reference: reference.to_owned(), failure })?;
            return Ok(Candidate::Archive { path });
        }
        if reference.starts_with("local:") {
            let found = query::find(&self.store, reference)
                .map_err(|reason| RestoreError::NotFound { reference: reference.to_owned(), reason })?;
            return Ok(Candidate::Local { reference: found.reference(), digest: found.digest });
        }
        checks::registry_allowed(reference, &self.config.allowed_registries)
            .map_err(|failure| RestoreError::Check { reference: reference.to_owned(), failure })?;
        let parsed = Reference::parse(reference).map_err(|e| {
            RestoreError::Annotation(AnnotationError {
                annotation: ra::RESTORE_FROM.to_owned(),
                value: reference.to_owned(),
                reason: e.to_string(),
            })
        })?;
        if parsed.tag.is_none() && parsed.digest.is_none() {
            return Err(RestoreError::NotFound {
                reference: reference.to_owned(),
                reason: "a registry reference needs a tag or a digest (or use latest with lazarus.dev/checkpoint-repository)".to_owned(),
            });
        }
        Ok(Candidate::Registry { reference: parsed })
    }

    /// A registry candidate by tag becomes one by digest (what failures are remembered by).
    pub(super) async fn pin(&self, candidate: Candidate) -> Result<Candidate, RestoreError> {
        match candidate {
            Candidate::Registry { reference } if reference.digest.is_none() => {
                let resolved = self
                    .fetcher
                    .resolve(&reference)
                    .await
                    .map_err(|source| RestoreError::Fetch { reference: reference.to_string(), source })?;
                Ok(Candidate::Registry { reference: resolved.reference })
            }
            other => Ok(other),
        }
    }

    /// The pod's checkpoint repository, if it names one.
    pub(super) fn repository_of(annotations: &HashMap<String, String>) -> Option<Result<Reference, RestoreError>> {
        let value = annotations.get(ann::CHECKPOINT_REPOSITORY)?.trim();
        Some(Reference::parse(value).map_err(|e| {
            RestoreError::Annotation(AnnotationError {
                annotation: ann::CHECKPOINT_REPOSITORY.to_owned(),
                value: value.to_owned(),
                reason: e.to_string(),
            })
        }))
    }

    /// Newest first, the checkpoints of this container in the pod's repository
    /// (by time tag). Empty if there are none; an error if the registry cannot be asked.
    async fn registry_candidates(
        &self,
        repository: &Reference,
        container: &str,
    ) -> Result<Vec<Candidate>, RestoreError> {
        let name = repository.repository_name();
        checks::registry_allowed(&name, &self.config.allowed_registries)
            .map_err(|failure| RestoreError::Check { reference: name.clone(), failure })?;
        let tags = self
            .fetcher
            .client()
            .list_tags(repository)
            .await
            .map_err(|e| RestoreError::Fetch { reference: name.clone(), source: FetchError::from(e) })?;
        let prefix = format!("{container}-");
        let mut ours: Vec<String> = tags
            .into_iter()
            .filter(|t| t.strip_prefix(&prefix).is_some_and(lazarus_registry::push::is_time_suffix))
            .collect();
        ours.sort();
        ours.reverse();
        ours.into_iter()
            .map(|tag| {
                repository
                    .with_tag(&tag)
                    .map(|reference| Candidate::Registry { reference })
                    .map_err(|e| RestoreError::Corrupt { reference: name.clone(), reason: format!("tag {tag}: {e}") })
            })
            .collect()
    }

    /// Newest first: this container's checkpoints in the pod's repository, or
    /// (no repository, or the registry unreachable) in the local store. Also
    /// says where it looked.
    pub(super) async fn latest_candidates(&self, subject: &Subject) -> Result<(Vec<Candidate>, String), RestoreError> {
        if let Some(repository) = Self::repository_of(&subject.annotations) {
            let repository = repository?;
            match self.registry_candidates(&repository, &subject.container).await {
                Ok(found) => return Ok((found, format!("repository {}", repository.repository_name()))),
                Err(err @ RestoreError::Check { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list the repository; looking in the local store");
                }
            }
        }
        Ok((self.local_candidates(subject)?, format!("the local store ({})", subject.key())))
    }

    /// Newest first: the local store's checkpoints of this pod's container.
    fn local_candidates(&self, subject: &Subject) -> Result<Vec<Candidate>, RestoreError> {
        let key = subject.key();
        let listed = query::entries(&self.store, Some(&key))
            .map_err(|reason| RestoreError::NotFound { reference: format!("latest of {key}"), reason })?;
        let mut listed: Vec<_> = listed.into_iter().collect();
        listed.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(listed.into_iter().rev().map(|l| Candidate::Local { reference: l.reference(), digest: l.digest }).collect())
    }
}

/// The newest time tag per container name (or of one container).
pub(super) fn newest_per_container(tags: &[String], only: Option<&str>) -> Vec<String> {
    let mut newest: BTreeMap<&str, &String> = BTreeMap::new();
    for tag in tags {
        let Some((container, suffix)) = tag.len().checked_sub(21).and_then(|i| tag.split_at_checked(i)) else {
            continue;
        };
        let Some(suffix) = suffix.strip_prefix('-') else { continue };
        if !lazarus_registry::push::is_time_suffix(suffix) || only.is_some_and(|o| o != container) {
            continue;
        }
        if newest.get(container).is_none_or(|n| *n < tag) {
            newest.insert(container, tag);
        }
    }
    newest.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_tag_of_a_candidate() {
        let local = Candidate::Local {
            reference: "local:ns/job/worker:20261122T235133.919Z@sha256:ab".into(),
            digest: "sha256:ab".into(),
        };
        assert_eq!(local.time_tag("worker").as_deref(), Some("20261122T235133.919Z"));
        let reference = Reference::parse("reg.example:5000/team/job:db-20261122T235133.919Z").expect("parse");
        assert_eq!(Candidate::Registry { reference }.time_tag("db").as_deref(), Some("20261122T235133.919Z"));
        let other = Reference::parse("reg.example:5000/team/job:worker-20261122T235133.919Z").expect("parse");
        assert_eq!(Candidate::Registry { reference: other }.time_tag("db"), None);
        assert_eq!(Candidate::Archive { path: "/a.tar".into() }.time_tag("db"), None);
    }

    #[test]
    fn newest_tag_per_container() {
        let tags: Vec<String> = [
            "app-20261122T000000.000Z",
            "app-20261123T000000.000Z",
            "app-latest",
            "side-car-20261101T000000.000Z",
            "x-notatime",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            newest_per_container(&tags, None),
            vec!["app-20261123T000000.000Z", "side-car-20261101T000000.000Z"]
        );
        assert_eq!(newest_per_container(&tags, Some("side-car")), vec!["side-car-20261101T000000.000Z"]);
    }
}
