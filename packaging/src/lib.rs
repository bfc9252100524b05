//! The revision: what `cargo xtask bundle` writes and what `deploy-hook` reads back.
//!
//! - [`config`]: `deploy.yaml` (written by a team) and `deploy/release.yaml` (resolved from it).
//! - [`manifest`]: `deploy/MANIFEST`, the sha256, mode and size of every file, and the revision id.
//! - [`wheel`]: wheel names and tags, and whether a wheel fits an interpreter.
//! - [`env_file`]: the service's EnvironmentFile.
//! - [`procfs`]: `/proc/<pid>/stat` and the process manager's pidfile.
//! - [`unit_file`]: reading systemd unit files (ExecStart and the rest).
//! - `render` (feature `build`): the systemd unit and hypercorn.toml.
//! - `tarball`, `bundle` (feature `build`): the deterministic `.tgz` and its layout.
//!
//! The hook depends on this crate without the `build` feature, so it links only the model and
//! the manifest checks.
#![warn(missing_docs)]

pub mod config;
pub mod env_file;
pub mod manifest;
pub mod procfs;
pub mod unit_file;
pub mod wheel;

#[cfg(feature = "build")]
pub mod bundle;
#[cfg(feature = "verify")]
pub mod inspect;
#[cfg(feature = "verify")]
pub mod install;
#[cfg(feature = "verify")]
pub mod reader;
#[cfg(feature = "build")]
pub mod render;
#[cfg(feature = "build")]
pub mod tarball;

pub use config::{ConfigError, DeployConfig, Release};
pub use manifest::{Manifest, ManifestEntry, ManifestError};

/// Where each part lives inside a revision, relative to its root.
pub mod layout {
    /// The AppSpec, at the archive root as the agent wants it.
    pub const APPSPEC: &str = "appspec.yml";
    /// The hook binary every lifecycle event runs.
    pub const HOOK: &str = "bin/deploy-hook";
    /// The resolved configuration.
    pub const RELEASE_YAML: &str = "deploy/release.yaml";
    /// The manifest of every other file.
    pub const MANIFEST: &str = "deploy/MANIFEST";
    /// The rendered hypercorn configuration.
    pub const HYPERCORN_TOML: &str = "configs/hypercorn.toml";
    /// The launcher ExecStart runs: hypercorn, stopping to accept before it closes idle
    /// connections.
    pub const SERVE_PY: &str = "configs/serve.py";
    /// The `.env` template.
    pub const SAMPLE_ENV: &str = "configs/sample.env";
    /// The pinned requirements.
    pub const REQUIREMENTS: &str = "dependencies/requirements.pip";
    /// The vendored wheels, one per requirement (`dependencies: vendored`).
    pub const WHEELS: &str = "dependencies/wheels";
    /// The static uv for the instances' arch (`dependencies: vendored`).
    pub const UV: &str = "bin/uv";
    /// The application source.
    pub const SRC: &str = "src";
    /// The directory of the rendered unit: `configs/<unit>`.
    pub const CONFIGS: &str = "configs";
    /// Names a source tree may not hold at its top level: the release puts its own there.
    pub const RESERVED_IN_RELEASE: [&str; 6] =
        ["configs", "dependencies", "deploy", ".venv", ".env", "REVISION"];

    /// The directory of the hook's root-owned state on the instance (journal, lock, the root
    /// copies of every release's unit, release.yaml and MANIFEST, the environment file), outside
    /// anything the app user can write. `app` is a validated app name (a single component).
    pub fn state_dir(app: &str) -> String {
        format!("/var/lib/deploy-hook/{app}")
    }

    /// The environment file in [`state_dir`]: the unit's `EnvironmentFile=`, root-owned, seeded
    /// once from `configs/sample.env` and kept across releases.
    pub const STATE_ENV_FILE: &str = "service.env";

    /// The process manager's pidfile in [`state_dir`].
    pub const STATE_PIDFILE: &str = "service.pid";

    /// Path of the rendered unit inside the revision.
    pub fn unit(unit_name: &str) -> String {
        format!("{CONFIGS}/{unit_name}")
    }
}

/// The environment variables that reach pip and uv (proxy and package index settings), the one
/// list of them: the hook passes these of its own environment to the installers and its other
/// children (`hook::venv::child_env`), and a rehearsal passes them to the hook.
pub fn passed_to_installers(name: &str) -> bool {
    name.starts_with("PIP_")
        || name.starts_with("UV_")
        || ["http_proxy", "https_proxy", "no_proxy"].iter().any(|p| name.eq_ignore_ascii_case(p))
        || name == "SSL_CERT_FILE"
        || name == "REQUESTS_CA_BUNDLE"
}

/// An `http://HOST[:PORT][/PATH]` URL, split (the health check's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to, port 80 when the URL names none (`[v6]:port` for IPv6).
    pub addr: String,
    /// The authority as written, for the `Host:` header.
    pub host: String,
    /// The path, `/` when the URL has none.
    pub path: String,
}

impl HttpUrl {
    /// Splits `url`; the one parser of health URLs: deploy.yaml's and release.yaml's
    /// `health.url` are checked by it while they are parsed, and the hook's check and the
    /// rehearsal's port probe split them with it. Control characters and whitespace are refused
    /// (the URL goes into the request line), as are an empty host and a bracketed IPv6 address
    /// followed by anything but `:PORT`.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        config::no_control(url)?;
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// health URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || url.contains(char::is_whitespace) {
            return Err(format!("{url:?} is not an http://HOST[:PORT]/PATH URL"));
        }
        let addr = match authority.strip_prefix('[').and_then(|v6| v6.split_once(']')) {
            Some((_, "")) => format!("{authority}:80"),
            Some((_, port)) if port.starts_with(':') => authority.to_owned(),
            Some(_) => {
                return Err(format!(
                    "{url:?} is not an http://HOST[:PORT]/PATH URL: [IPV6] may be followed only by :PORT"
                ));
            }
            None if authority.contains(':') => authority.to_owned(),
            None => format!("{authority}:80"),
        };
        Ok(HttpUrl { addr, host: authority.to_owned(), path: path.to_owned() })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(out, "{b:02x}").expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::HttpUrl;

    #[test]
    fn what_reaches_the_installers() {
        for name in [
            "PIP_INDEX_URL",
            "UV_INDEX_URL",
            "http_proxy",
            "HTTPS_PROXY",
            "No_Proxy",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
        ] {
            assert!(super::passed_to_installers(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "LD_PRELOAD",
            "PYTHONPATH",
            "AWS_SECRET_ACCESS_KEY",
            "ssl_cert_file",
            "pip_index_url",
        ] {
            assert!(!super::passed_to_installers(name), "{name}");
        }
    }

    #[test]
    fn http_urls() {
        let url = HttpUrl::parse("http://127.0.0.1:8000/healthz").unwrap();
        assert_eq!(
            (url.addr.as_str(), url.host.as_str(), url.path.as_str()),
            ("127.0.0.1:8000", "127.0.0.1:8000", "/healthz")
        );
        assert_eq!(HttpUrl::parse("http://localhost").unwrap().addr, "localhost:80");
        assert_eq!(HttpUrl::parse("http://localhost").unwrap().path, "/");
        assert_eq!(HttpUrl::parse("http://[::1]:9000/h").unwrap().addr, "[::1]:9000");
        assert_eq!(HttpUrl::parse("http://[::1]/h").unwrap().addr, "[::1]:80");
        let err = |url: &str| HttpUrl::parse(url).unwrap_err();
        assert_eq!(err("https://x/"), r#""https://x/": only http:// health URLs are supported"#);
        assert_eq!(err("http:///healthz"), r#""http:///healthz" is not an http://HOST[:PORT]/PATH URL"#);
        assert_eq!(err("http://x/a b"), r#""http://x/a b" is not an http://HOST[:PORT]/PATH URL"#);
        assert!(err("http://x/\r\nHost: y").contains("control character"));
        assert!(err("http://[::1]x/").contains("[IPV6] may be followed only by :PORT"));
    }
}
