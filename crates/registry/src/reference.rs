//! Image references: `host[:port]/path/segments[:tag][@sha256:hex]`, checked
//! against the grammar of the distribution project's `reference` package.
//!
//! lazarus always wants an explicit registry host (the first component must
//! contain a `.` or a `:`, or be `localhost`): a checkpoint repository that
//! silently meant Docker Hub would push a node's memory to the internet.

use std::fmt;

/// Longest repository path the distribution grammar allows.
const MAX_NAME_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;

/// A malformed reference, tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// Why it is refused.
    pub reason: String,
}

fn refuse(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError { input: input.to_owned(), reason: reason.into() }
}

/// A parsed image reference. Without tag and digest it names a repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` as written (`registry.example.com`, `127.0.0.1:5000`).
    pub registry: String,
    /// `team/job`.
    pub repository: String,
    /// `job-20261122T235133.919Z`, if given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, if given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `host[:port]/path[:tag][@sha256:hex]`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(refuse(input, "empty"));
        }
        if text.contains("://") {
            return Err(refuse(input, "a reference has no scheme: write host[:port]/repository"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|reason| refuse(input, reason))?;
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            refuse(
                input,
                "expected host[:port]/repository (the registry host is required, e.g. registry.example.com/team/job)",
            )
        })?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(refuse(
                input,
                format!(
                    "{registry:?} is not a registry host (it needs a '.', a ':port' or to be \"localhost\"); \
                     write the registry explicitly, e.g. docker.io/{rest}"
                ),
            ));
        }
        validate_domain(registry).map_err(|reason| refuse(input, reason))?;
        // A ':' after the last '/' separates the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => {
                validate_tag(tag).map_err(|reason| refuse(input, reason))?;
                (repository, Some(tag.to_owned()))
            }
            _ => (path, None),
        };
        validate_repository(repository).map_err(|reason| refuse(input, reason))?;
        Ok(Reference { registry: registry.to_owned(), repository: repository.to_owned(), tag, digest })
    }

    /// The same repository with `tag` (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        validate_tag(tag).map_err(|reason| refuse(tag, reason))?;
        Ok(Reference { tag: Some(tag.to_owned()), digest: None, ..self.clone() })
    }

    /// The same reference with `digest`.
    pub fn with_digest(&self, digest: &str) -> Result<Reference, ReferenceError> {
        validate_digest(digest).map_err(|reason| refuse(digest, reason))?;
        Ok(Reference { digest: Some(digest.to_owned()), ..self.clone() })
    }

    /// The repository alone: `host/path`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to put after `/v2/<name>/manifests/`: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }

    /// The host the registry API is served on (`docker.io` is served on
    /// `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// `host[:port]`: dot-separated DNS components (letters, digits, inner
/// dashes), an optional numeric port. IPv6 literals are not supported.
pub fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if host.starts_with('[') {
        return Err("IPv6 registry addresses are not supported".into());
    }
    if host.is_empty() {
        return Err("empty registry host".into());
    }
    for component in host.split('.') {
        let ok = !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !component.starts_with('-')
            && !component.ends_with('-');
        if !ok {
            return Err(format!(
                "registry host {host:?}: {component:?} is not a valid host name component (letters, digits, inner '-')"
            ));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(format!("registry port {port:?} is not a number from 0 to 65535"));
    }
    Ok(())
}

/// `path-component ('/' path-component)*`, each `[a-z0-9]+` joined by `.`,
/// `_`, `__` or runs of `-`; at most 255 characters.
pub fn validate_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository path".into());
    }
    if path.len() > MAX_NAME_LEN {
        return Err(format!("repository path is {} characters long, more than {MAX_NAME_LEN}", path.len()));
    }
    for component in path.split('/') {
        if !valid_path_component(component) {
            return Err(format!(
                "repository path component {component:?} is invalid: lower-case letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or '-'+, between alphanumerics.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if bytes.is_empty() {
        return Err("empty tag".into());
    }
    if bytes.len() > MAX_TAG_LEN {
        return Err(format!("tag {tag:?} is longer than {MAX_TAG_LEN} characters"));
    }
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err(format!("tag {tag:?} is invalid: letters, digits, '_', '.', '-', not starting with '.' or '-'"));
    }
    Ok(())
}

/// `sha256:<64 lower-case hex>` (the only algorithm lazarus writes).
pub fn validate_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} is not sha256:<hex> (other algorithms are not supported)"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {digest:?}: expected 64 lower-case hex digits after sha256:"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "5d8759ad1d41c0aa8bd4b84cc5a3b3c2c6e1d2c0b8fb8d2c1a0e5f3a9b7c6d5e";

    #[test]
    fn repositories_tags_and_digests_parse() {
        let r = Reference::parse("registry.example.com/team/job").expect("repository");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("registry.example.com", "team/job"));
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, None));
        assert_eq!(r.to_string(), "registry.example.com/team/job");

        let r = Reference::parse("127.0.0.1:5000/lazarus-e2e/x:worker-20261122T235133.919Z").expect("tag and port");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "lazarus-e2e/x");
        assert_eq!(r.tag.as_deref(), Some("worker-20261122T235133.919Z"));

        let text = format!("localhost:5000/a/b_c__d.e--f:latest@sha256:{HEX}");
        let r = Reference::parse(&text).expect("tag and digest");
        assert_eq!(r.repository, "a/b_c__d.e--f");
        assert_eq!(r.manifest_reference(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(r.to_string(), text);

        let r = Reference::parse(&format!("docker.io/library/busybox@sha256:{HEX}")).expect("digest only");
        assert_eq!((r.tag.as_deref(), r.api_host()), (None, "registry-1.docker.io"));
    }

    #[test]
    fn malformed_references_name_the_input_and_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("team/job", "not a registry host"),
            ("job", "host[:port]/repository"),
            ("https://registry.example.com/team/job", "no scheme"),
            ("registry.example.com/Team/job", "component \"Team\""),
            ("registry.example.com/team//job", "component \"\""),
            ("registry.example.com/team/job-", "component \"job-\""),
            ("registry.example.com/team/job:", "empty tag"),
            ("registry.example.com/team/job:-x", "tag \"-x\""),
            ("registry.example.com:99999/job", "port"),
            ("bad_host.example.com/job", "host name component"),
            ("registry.example.com/job@sha256:abc", "64 lower-case hex"),
            ("registry.example.com/job@md5:abc", "not sha256"),
            ("[::1]:5000/job", "IPv6"),
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.contains(why), "{bad}: {message}");
        }
        let long = format!("r.io/{}", "a".repeat(256));
        assert!(Reference::parse(&long).expect_err("too long").reason.contains("255"));
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(validate_tag("worker-20261122T235133.919Z").is_ok());
        assert!(validate_tag("_x").is_ok());
        assert!(validate_tag(&"a".repeat(128)).is_ok());
        assert!(validate_tag(&"a".repeat(129)).is_err());
        for bad in [".x", "-x", "a/b", "a:b", "a b", ""] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        let r = Reference::parse("r.io/a").expect("repo");
        assert_eq!(r.with_tag("t").expect("tag").to_string(), "r.io/a:t");
        assert!(r.with_tag("bad tag").is_err());
    }
}
