//! What every event starts from: the sandbox root, the revision the binary belongs to, its
//! resolved configuration and manifest, and the agent's environment.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, format_err};
use appspec::HookEnv;
use packaging::{Manifest, Release, layout};

use crate::{
    process::Supervisor,
    service::{Manager, Service},
    store::Store,
};

/// The revision this binary was shipped in.
pub struct Revision {
    /// The extracted archive (`.../deployment-archive`).
    pub dir: PathBuf,
    /// deploy/release.yaml.
    pub release: Release,
    /// deploy/MANIFEST's text.
    pub manifest_text: String,
    /// The revision id, from the manifest.
    pub id: String,
    /// sha256 of the release.yaml bytes `release` was parsed from, checked against the manifest
    /// by [`Revision::verify`].
    release_sha256: String,
}

impl Revision {
    /// The revision whose `bin/deploy-hook` (or `deploy/deploy-hook` in a release) is running.
    pub fn of_this_binary() -> anyhow::Result<Revision> {
        let exe = std::env::current_exe().context("cannot find the path of this binary")?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| format_err!("{} is not inside a revision", exe.display()))?;
        Revision::load(dir)
    }

    /// Reads the revision extracted at `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Revision> {
        let release_path = dir.join(layout::RELEASE_YAML);
        let text = fs::read_to_string(&release_path).with_context(|| {
            format!("cannot read {} (is this binary inside a revision?)", release_path.display())
        })?;
        let release = Release::parse(&release_path, &text)?;
        let manifest_path = dir.join(layout::MANIFEST);
        let manifest_text = fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?;
        let id = Manifest::revision_id(&manifest_text);
        let release_sha256 = packaging::manifest::sha256_hex(text.as_bytes());
        Ok(Revision { dir: dir.to_owned(), release, manifest_text, id, release_sha256 })
    }

    /// Checks the whole revision against its MANIFEST, and that the release.yaml this revision
    /// was read from is the one the MANIFEST lists. Nothing is written anywhere before this
    /// passes: release.yaml names the app root and the user everything else acts on.
    pub fn verify(&self) -> anyhow::Result<Manifest> {
        let manifest = Manifest::parse(&self.manifest_text)?;
        manifest.verify_tree(&self.dir)?;
        match manifest.entries.iter().find(|e| e.path == layout::RELEASE_YAML) {
            Some(entry) if entry.sha256 == self.release_sha256 => Ok(manifest),
            Some(_) => anyhow::bail!(
                "{}: changed while it was read; the MANIFEST lists other bytes",
                self.dir.join(layout::RELEASE_YAML).display()
            ),
            None => anyhow::bail!("{}: {} is not listed", layout::MANIFEST, layout::RELEASE_YAML),
        }
    }
}

/// Options every command shares.
pub struct Ctx {
    /// Every instance-side absolute path lives under this (`/` on an instance).
    pub root: PathBuf,
    /// How services are driven.
    pub manager: Manager,
}

impl Ctx {
    /// The host path of an instance path.
    pub fn host(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The service of `release`, as this context's manager drives it.
    pub fn service<'a>(&self, release: &'a Release, store: &Store) -> Service<'a> {
        let unit = release.unit.as_str();
        let socket_name = format!("{}.socket", unit.strip_suffix(".service").unwrap_or(unit));
        Service {
            manager: self.manager,
            unit,
            unit_file: self.host("/etc/systemd/system").join(unit),
            socket_activation: release.socket_activation,
            socket_file: self.host("/etc/systemd/system").join(&socket_name),
            socket_changed: self.host("/run/deploy-hook").join(format!("{socket_name}.changed")),
            reload_pending: self.host("/run/deploy-hook").join(format!("{unit}.reload-pending")),
            socket: socket_name,
            supervisor: Supervisor { root: self.root.clone(), state: store.state.path.clone() },
        }
    }
}

/// The agent's environment, validated.
pub fn hook_env() -> anyhow::Result<HookEnv> {
    Ok(HookEnv::from_lookup(|name| std::env::var(name).ok())?)
}
