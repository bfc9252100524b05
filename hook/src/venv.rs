//! The Python environment: `venvs/<key>`, content-addressed, built at its final path as the app
//! user (venvs are not relocatable), with uv when there is one, else `python -m venv` and pip.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use packaging::config::{Installer, Release, venv_key};

use crate::{
    child::{Budget, Spawn},
    store::{Store, VENV_COMPLETE, write_atomic},
    util::Log,
};

/// What [`ensure`] did.
pub enum Outcome {
    /// A complete venv with this key was there.
    Reused,
    /// Built now, with this installer.
    Built(&'static str),
}

/// Finds `uv` on PATH or in the usual places.
pub fn find_uv() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("uv"))
        .find(|candidate| candidate.is_file())
}

/// The environment of every child the hook starts: minimal, plus proxy and index settings.
pub fn child_env(store: &Store, extra_path: Option<&Path>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("PIP_")
                || (k.starts_with("UV_") && k != "UV_CACHE_DIR")
                || k.eq_ignore_ascii_case("http_proxy")
                || k.eq_ignore_ascii_case("https_proxy")
                || k.eq_ignore_ascii_case("no_proxy")
                || k == "SSL_CERT_FILE"
                || k == "REQUESTS_CA_BUNDLE"
        })
        .collect();
    let mut path = OsString::new();
    if let Some(dir) = extra_path {
        path.push(dir);
        path.push(":");
    }
    path.push("/usr/local/bin:/usr/bin:/bin");
    env.push(("PATH".into(), path));
    env.push(("HOME".into(), store.app_root.clone().into()));
    // Inherited by grandchildren too: after a kill -9 of the hook, the next run finds what it
    // left running by this mark (Store::kill_orphans).
    env.push((crate::store::RUN_MARK.into(), store.app_root.clone().into()));
    env.push(("LANG".into(), "C.UTF-8".into()));
    // Temporary files stay under the app root too, where the next run removes what an
    // interrupted pip or uv left (Store::clean_unfinished).
    env.push(("TMPDIR".into(), store.cache().join("tmp").into()));
    env.push(("PIP_CACHE_DIR".into(), store.cache().join("pip").into()));
    env.push(("UV_CACHE_DIR".into(), store.cache().join("uv").into()));
    env.push(("UV_PYTHON_DOWNLOADS".into(), "never".into()));
    // Trust the instance's CA store, as the distribution's pip does (corporate proxies add
    // their CA there); uv's default is its own bundle.
    if !env.iter().any(|(k, _)| k == "UV_NATIVE_TLS" || k == "UV_SYSTEM_CERTS") {
        env.push(("UV_NATIVE_TLS".into(), "1".into()));
    }
    env.push(("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()));
    env
}

/// Makes `venvs/<key>` exist and be complete. `python` is the interpreter's host path.
pub fn ensure(
    store: &Store,
    release: &Release,
    python: &Path,
    requirements: &Path,
    log_file: &Path,
    log: &Log,
) -> anyhow::Result<Outcome> {
    let req_bytes =
        fs::read(requirements).with_context(|| format!("cannot read {}", requirements.display()))?;
    let key = venv_key(release.python.as_str(), release.installer, &req_bytes);
    if key != release.venv_key {
        bail!(
            "release.yaml names the venv {} but its inputs hash to {key}; rebuild the bundle",
            release.venv_key
        );
    }
    let dir = store.venvs().join(&key);
    if dir.join(VENV_COMPLETE).exists() {
        return Ok(Outcome::Reused);
    }
    if !python.is_file() {
        bail!("the interpreter {} does not exist (deploy.yaml python)", release.python);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the unfinished {}", dir.display()))?;
    }
    let uv = match release.installer {
        Installer::Pip => None,
        Installer::Uv => Some(
            find_uv()
                .context("deploy.yaml asks for uv, but no uv is on PATH or in /usr/local/bin, /usr/bin")?,
        ),
        Installer::Auto => find_uv(),
    };
    let guard = RemoveOnDrop(Some(dir.clone()));
    store.mkdir(&dir, 0o755)?;
    for sub in ["pip", "uv"] {
        store.mkdir(&store.cache().join(sub), 0o750)?;
    }
    let env = child_env(store, None);
    // pip and uv get whatever AfterInstall has left; the quick steps a fixed cap within that.
    let budget = Budget::new("AfterInstall", release.timeouts.after_install.secs(), log.elapsed());
    let run = |what: &str, mut cmd: Command, timeout: Option<u64>| {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v))).current_dir(&store.app_root);
        let timeout = timeout.map_or(Duration::MAX, Duration::from_secs);
        budget.run(cmd, Spawn { what, ids: store.owner, timeout, log: log_file })
    };
    let used = if let Some(uv) = &uv {
        log.info(format!("building {key} with {}", uv.display()));
        let mut cmd = Command::new(uv);
        cmd.args(["venv", "--quiet", "--no-config", "--allow-existing", "--python"]).arg(python).arg(&dir);
        run("uv venv", cmd, Some(300))?;
        let mut cmd = Command::new(uv);
        cmd.args(["pip", "install", "--no-config", "--python"])
            .arg(dir.join("bin/python"))
            .arg("-r")
            .arg(requirements);
        run("uv pip install", cmd, None)?;
        "uv"
    } else {
        log.info(format!("building {key} with {} -m venv and pip", python.display()));
        let mut cmd = Command::new(python);
        cmd.args(["-m", "venv"]).arg(&dir);
        run("python -m venv", cmd, Some(300))?;
        let mut cmd = Command::new(dir.join("bin/python"));
        cmd.args(["-m", "pip", "install", "--no-input", "-r"]).arg(requirements);
        run("pip install", cmd, None)?;
        "pip"
    };
    let mut cmd = Command::new(dir.join("bin/python"));
    cmd.args(["-c", "import hypercorn"]);
    run("the venv's import of hypercorn", cmd, Some(120))?;
    let marker = dir.join(VENV_COMPLETE);
    write_atomic(&marker, format!("installer={used}\nkey={key}\n").as_bytes(), 0o644)?;
    store.own(&marker)?;
    guard.disarm();
    Ok(Outcome::Built(used))
}

/// Removes a directory when dropped, unless disarmed: a failed build leaves nothing.
pub struct RemoveOnDrop(pub Option<PathBuf>);

impl RemoveOnDrop {
    /// Keeps the directory: the work in it is complete.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
