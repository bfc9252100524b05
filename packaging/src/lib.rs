//! The revision: what `cargo xtask bundle` writes and what `deploy-hook` reads back.
//!
//! - [`config`]: `deploy.yaml` (written by a team) and `deploy/release.yaml` (resolved from it).
//! - [`manifest`]: `deploy/MANIFEST`, the sha256, mode and size of every file, and the revision id.
//! - [`wheel`]: wheel names and tags, and whether a wheel fits an interpreter.
//! - `render` (feature `build`): the systemd unit and hypercorn.toml.
//! - `tarball`, `bundle` (feature `build`): the deterministic `.tgz` and its layout.
//!
//! The hook depends on this crate without the `build` feature, so it links only the model and
//! the manifest checks.
#![warn(missing_docs)]

pub mod config;
pub mod manifest;
pub mod wheel;

#[cfg(feature = "build")]
pub mod bundle;
#[cfg(feature = "verify")]
pub mod inspect;
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

    /// Path of the rendered unit inside the revision.
    pub fn unit(unit_name: &str) -> String {
        format!("{CONFIGS}/{unit_name}")
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
