//! Registry credentials from a docker-style `config.json`, and the
//! `WWW-Authenticate` challenges registries answer with.
//!
//! Supported in `config.json`: `auths.<key>.auth` (base64 `user:password`),
//! `auths.<key>.username` + `password`, and `auths.<key>.identitytoken` (an
//! OAuth2 refresh token for the registry's token server). Keys may be `host`,
//! `host:port`, `https://host` or `https://host/v1/`. Credential helpers
//! (`credsStore`, `credHelpers`) run external programs and are not supported:
//! a registry covered only by them is accessed anonymously, with a log line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

/// The credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading it failed.
    #[error("reading registry credentials {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a docker `config.json`.
    #[error("registry credentials {path} are not a docker config.json: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An entry is malformed.
    #[error("registry credentials {path}: entry {key:?}: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The `auths` key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (Basic, or the token server's Basic).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An OAuth2 refresh token for the registry's token server.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// The `Authorization: Basic …` value, if this is a user and password.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => {
                Some(format!("Basic {}", BASE64.encode(format!("{username}:{password}"))))
            }
            Credential::IdentityToken(_) => None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The parsed `config.json`: credentials per registry host.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    by_host: HashMap<String, Credential>,
    /// Hosts only a credential helper knows (`credHelpers` keys), and whether
    /// a `credsStore` is set.
    helpers: Vec<String>,
    creds_store: Option<String>,
}

/// `https://host/v1/` → `host`; `host:port` stays; Docker Hub's aliases fold
/// into `docker.io`.
pub fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => host,
    }
}

impl Credentials {
    /// Parses the text of a docker `config.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Credentials, CredentialsError> {
        let config: DockerConfig = serde_json::from_str(text)
            .map_err(|e| CredentialsError::Parse { path: path.to_owned(), reason: e.to_string() })?;
        let mut by_host = HashMap::new();
        for (key, entry) in config.auths {
            let entry_err =
                |reason: String| CredentialsError::Entry { path: path.to_owned(), key: key.clone(), reason };
            let credential = if let Some(token) = entry.identity_token.filter(|t| !t.is_empty()) {
                Some(Credential::IdentityToken(token))
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded =
                    BASE64.decode(auth.trim()).map_err(|e| entry_err(format!("\"auth\" is not base64: {e}")))?;
                let decoded = String::from_utf8(decoded).map_err(|_| entry_err("\"auth\" is not UTF-8 text".into()))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| entry_err("\"auth\" does not decode to user:password".into()))?;
                Some(Credential::Basic { username: username.to_owned(), password: password.to_owned() })
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                Some(Credential::Basic { username, password })
            } else {
                None
            };
            if let Some(credential) = credential {
                by_host.insert(normalize_host(&key), credential);
            }
        }
        Ok(Credentials {
            by_host,
            helpers: config.cred_helpers.keys().map(|k| normalize_host(k)).collect(),
            creds_store: config.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
        Credentials::parse(&text, path)
    }

    /// The credential for `registry` (`host[:port]`), if the file has one.
    /// A registry covered only by a credential helper is logged once per call.
    pub fn for_registry(&self, registry: &str, path: &Path) -> Option<&Credential> {
        let host = normalize_host(registry);
        let found = self.by_host.get(&host);
        if found.is_none() {
            if self.helpers.contains(&host) {
                tracing::warn!(
                    registry,
                    credentials = %path.display(),
                    "registry credentials come from a credHelpers entry, which lazarus does not support; \
                     accessing the registry anonymously (put an \"auths\" entry in the file instead)"
                );
            } else if let Some(store) = &self.creds_store {
                tracing::warn!(
                    registry,
                    credentials = %path.display(),
                    creds_store = %store,
                    "no \"auths\" entry for the registry and credsStore is not supported; accessing it anonymously"
                );
            }
        }
        found
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// `service`, if given.
        service: Option<String>,
        /// `scope`, if given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (one challenge; quoted values
/// may contain commas, as scopes do: `scope="repository:a:pull,push"`).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm").cloned().filter(|r| !r.is_empty())?,
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("/etc/lazarus/registry.json")
    }

    #[test]
    fn auths_entries_in_their_three_shapes() {
        let text = r#"{
            "auths": {
                "https://registry.example.com/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                "127.0.0.1:5443": {"username": "ci", "password": "secret"},
                "https://index.docker.io/v1/": {"identitytoken": "refresh-me"},
                "empty.example.com": {}
            },
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"}
        }"#;
        let creds = Credentials::parse(text, path()).expect("parses");
        assert_eq!(
            creds.for_registry("registry.example.com", path()),
            Some(&Credential::Basic { username: "user".into(), password: "pa:ss".into() })
        );
        let ci = creds.for_registry("127.0.0.1:5443", path()).expect("host:port key");
        assert_eq!(ci.basic_header().as_deref(), Some("Basic Y2k6c2VjcmV0"));
        assert_eq!(creds.for_registry("docker.io", path()), Some(&Credential::IdentityToken("refresh-me".into())));
        assert_eq!(creds.for_registry("empty.example.com", path()), None);
        assert_eq!(creds.for_registry("gcr.io", path()), None, "credential helpers are not run");
        assert_eq!(creds.for_registry("127.0.0.1:5000", path()), None, "the port is part of the key");
        assert!(!format!("{ci:?}").contains("secret"), "Debug hides the password");
    }

    #[test]
    fn malformed_files_name_the_file_and_entry() {
        let err = Credentials::parse("{\"auths\": [", path()).expect_err("not JSON");
        assert!(err.to_string().contains("/etc/lazarus/registry.json"), "{err}");
        let err = Credentials::parse(r#"{"auths": {"r.io": {"auth": "***"}}}"#, path()).expect_err("not base64");
        assert!(err.to_string().contains("\"r.io\"") && err.to_string().contains("base64"), "{err}");
        let err = Credentials::parse(r#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#, path()).expect_err("no colon");
        assert!(err.to_string().contains("user:password"), "{err}");
        assert!(Credentials::parse("{}", path()).expect("empty config").by_host.is_empty());
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/job:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:team/job:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=https://a/t, service="s""#),
            Some(Challenge::Bearer { realm: "https://a/t".into(), service: Some("s".into()), scope: None })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=\"s\""), None, "a bearer challenge needs a realm");
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("https://Registry.Example.com/v1/"), "registry.example.com");
        assert_eq!(normalize_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_host("registry-1.docker.io"), "docker.io");
    }
}
