//! The Python environment: `venvs/<key>`, content-addressed, built at its final path (venvs are
//! not relocatable) with uv when the build identity can run one (the revision's own, or one on
//! the instance), else `python -m venv` and pip, from the revision's wheels when it ships them
//! (see `wheels.rs`), bytecode compiled at build time. The installers run as the build identity
//! (`nobody` when the hook is root), never as the app user, in a directory the app user cannot
//! write, with their caches and temporary files in `<app_root>/.build` (the build identity's,
//! mode 0700); once built and checked, the venv is given to the hook's user (root) and made
//! read-only before anything runs from it.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use packaging::config::{Installer, Release};

use crate::{
    child::{Budget, Spawn},
    space,
    store::{Store, VENV_COMPLETE},
    util::Log,
    wheels,
};

/// The build identity's directory in the app root: installer caches and temporary files.
pub const BUILD_DIR: &str = ".build";

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
            packaging::passed_to_installers(&k) && k != "UV_CACHE_DIR"
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
    // their CA there); uv's default is its own bundle. Both names: uv before 0.11 knows only
    // UV_NATIVE_TLS; uv 0.13.9 reads UV_SYSTEM_CERTS and warns that UV_NATIVE_TLS is deprecated
    // unless UV_SYSTEM_CERTS is set too.
    if !env.iter().any(|(k, _)| k == "UV_NATIVE_TLS" || k == "UV_SYSTEM_CERTS") {
        env.push(("UV_SYSTEM_CERTS".into(), "1".into()));
        env.push(("UV_NATIVE_TLS".into(), "1".into()));
    }
    env.push(("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()));
    env
}

/// What the venv `key` lacks to be complete: its marker, or a part a venv whose removal was
/// cut short (by an older deploy-hook, or by hand) may have lost while keeping its marker.
pub fn missing_part(store: &Store, key: &str) -> Option<&'static str> {
    [VENV_COMPLETE, "bin/python", "pyvenv.cfg"]
        .into_iter()
        .find(|part| !store.venvs().join(key).join(part).exists())
}

/// Makes `venvs/<key>` exist and be complete with release.yaml's interpreter; `archive` is the
/// extracted revision (where a vendored `bin/uv` is). A complete venv is reused
/// only when the interpreter is the one that built it (its real version, ABI, arch and libc, as
/// recorded in the marker); otherwise it is built again, saying why. Before a build, the app
/// root's filesystem must have `need` bytes (`space::venv_need`) and `space::MARGIN` available
/// to unprivileged users.
#[allow(clippy::too_many_arguments)]
pub fn ensure(
    store: &Store,
    release: &Release,
    req_bytes: &[u8],
    requirements: &Path,
    archive: &Path,
    log_file: &Path,
    need: u64,
    log: &Log,
) -> anyhow::Result<Outcome> {
    let python = Path::new(release.python.as_str());
    let key = release.expected_venv_key(req_bytes);
    if key != release.venv_key {
        bail!(
            "release.yaml names the venv {} but its inputs hash to {key}; rebuild the bundle",
            release.venv_key
        );
    }
    if !python.is_file() {
        bail!("the interpreter {} does not exist (deploy.yaml python)", release.python);
    }
    // The interpreter and uv are run as the build identity, never as the app user, whose
    // processes could change what they answer.
    let ids = store.owner.map(|_| store.builder);
    // The interpreter's self-description is needed first only to judge a venv that is there; for
    // a new one it is asked while the venv is built (a first deployment is a few short children
    // in a row), and checked before the venv is marked complete.
    std::thread::scope(|scope| {
        let probing = scope.spawn(|| wheels::probe(python, ids));
        let join = |handle: std::thread::ScopedJoinHandle<'_, anyhow::Result<wheels::Probed>>| {
            handle.join().map_err(|_| anyhow::format_err!("the probe of {} panicked", python.display()))?
        };
        let venvs = store.dir.sub_owned("venvs", store.me.uid)?;
        let existing = match venvs.sub_owned(&key, store.me.uid) {
            Ok(done) => done.read(VENV_COMPLETE, 64 << 10)?,
            Err(_) => None,
        };
        // The probe's answer is checked before the installer's: its failure says more about a
        // broken interpreter.
        let (built, probed) = match existing {
            Some(marker) => {
                let probed = join(probing)?;
                if reusable(store, &key, &marker, &probed, python, log) {
                    return Ok(Outcome::Reused);
                }
                (build(store, release, &key, need, requirements, archive, log_file, log, ids), probed)
            }
            None => {
                let built = build(store, release, &key, need, requirements, archive, log_file, log, ids);
                (built, join(probing)?)
            }
        };
        let (used, guard) = built?;
        let built = venvs.sub_owned(&key, store.me.uid)?;
        let marker = format!("installer={used}\nkey={key}\n{}", wheels::marker_line(&probed));
        built.write_atomic(VENV_COMPLETE, marker.as_bytes(), 0o644, None)?;
        guard.disarm();
        Ok(Outcome::Built(used))
    })
}

/// Whether the complete venv `key`, whose marker says `marker`, may be reused with the
/// interpreter that describes itself as `probed`; says why not.
fn reusable(
    store: &Store,
    key: &str,
    marker: &[u8],
    probed: &wheels::Probed,
    python: &Path,
    log: &Log,
) -> bool {
    let missing = missing_part(store, key);
    match wheels::recorded_identity(&String::from_utf8_lossy(marker)) {
        _ if missing.is_some() => log.info(format!(
            "venv {key} is marked complete but has no {}: building it again",
            missing.unwrap_or_default()
        )),
        Some(built_by) if built_by == probed.identity => return true,
        Some(built_by) => log.info(format!(
            "venv {key} was built by {built_by}, but {} is now {}: building it again",
            python.display(),
            probed.identity
        )),
        None => {
            log.info(format!("venv {key} does not record the interpreter that built it: building it again"))
        }
    }
    false
}

/// Builds `venvs/<key>` from nothing: installers as the build identity `ids`, then checked and
/// given to root. Returns the installer used and the guard that removes the venv unless the
/// caller marks it complete.
#[allow(clippy::too_many_arguments)]
fn build(
    store: &Store,
    release: &Release,
    key: &str,
    need: u64,
    requirements: &Path,
    archive: &Path,
    log_file: &Path,
    log: &Log,
    ids: Option<crate::users::Ids>,
) -> anyhow::Result<(&'static str, RemoveOnDrop)> {
    let python = Path::new(release.python.as_str());
    let venvs = store.dir.sub_owned("venvs", store.me.uid)?;
    // The path the installers see: venvs bake it in.
    let dir = store.app_root.join("venvs").join(key);
    venvs.remove(key).context("cannot remove an unfinished venv")?;
    space::ensure(
        &format!("venv {key}"),
        &[space::Need {
            role: "app root",
            dir: &store.dir,
            parts: vec![("venv".into(), need), ("margin".into(), space::MARGIN)],
        }],
    )?;
    let uv = match release.installer {
        Installer::Pip => None,
        Installer::Uv => Some(
            wheels::pick_uv(Some(archive), ids)
                .map_err(|why| anyhow::format_err!("deploy.yaml asks for installer: uv, but {why}"))?,
        ),
        Installer::Auto => match wheels::pick_uv(Some(archive), ids) {
            Ok(uv) => Some(uv),
            Err(why) => {
                log.info(format!("installer auto: venv + pip instead of uv: {why}"));
                None
            }
        },
    };
    // Vendored: the revision's wheels only, each checked against its hash, no index.
    let offline = match &release.wheels {
        Some(_) => {
            let wheels_dir = requirements.parent().context("requirements have a directory")?.join("wheels");
            wheels::offline_args(&wheels_dir)
        }
        None => Vec::new(),
    };
    let guard = RemoveOnDrop(Some(store.venvs().join(key)));
    let builder = store.builder;
    venvs.ensure_dir(key, 0o755, builder.uid, builder.gid)?;
    let build = store.dir.ensure_dir(BUILD_DIR, 0o700, builder.uid, builder.gid)?;
    for sub in ["pip", "uv", "tmp"] {
        build.ensure_dir(sub, 0o700, builder.uid, builder.gid)?;
    }
    let build_dir = store.app_root.join(BUILD_DIR);
    let mut env = child_env(store, None);
    env.retain(|(k, _)| !["HOME", "TMPDIR", "PIP_CACHE_DIR", "UV_CACHE_DIR"].iter().any(|v| k == v));
    for (k, sub) in [("HOME", ""), ("TMPDIR", "tmp"), ("PIP_CACHE_DIR", "pip"), ("UV_CACHE_DIR", "uv")] {
        env.push((k.into(), build_dir.join(sub).into()));
    }
    env.push(("PIP_ROOT_USER_ACTION".into(), "ignore".into()));
    // pip and uv get whatever AfterInstall has left; the quick steps a fixed cap within that.
    let budget = Budget::new("AfterInstall", release.timeouts.after_install.secs(), log.elapsed());
    let run = |what: &str, mut cmd: Command, timeout: Option<u64>| {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v))).current_dir(&store.app_root);
        let timeout = timeout.map_or(Duration::MAX, Duration::from_secs);
        budget.run(cmd, Spawn { what, ids, timeout, log: log_file })
    };
    let used = if let Some(uv) = &uv {
        log.info(format!("building {key} with {}", uv.display()));
        let mut cmd = Command::new(uv);
        cmd.args(["venv", "--quiet", "--no-config", "--allow-existing", "--python"]).arg(python).arg(&dir);
        run("uv venv", cmd, Some(300))?;
        let mut cmd = Command::new(uv);
        cmd.args(["pip", "install", "--no-config", "--compile-bytecode", "--python"])
            .arg(dir.join("bin/python"));
        if !offline.is_empty() {
            cmd.arg("--offline").args(&offline);
        }
        cmd.arg("-r").arg(requirements);
        run("uv pip install", cmd, None)?;
        "uv"
    } else {
        log.info(format!("building {key} with {} -m venv and pip", python.display()));
        let mut cmd = Command::new(python);
        cmd.args(["-m", "venv"]).arg(&dir);
        run("python -m venv", cmd, Some(300))?;
        let mut cmd = Command::new(dir.join("bin/python"));
        cmd.args(["-m", "pip", "install", "--no-input"]).args(&offline).arg("-r").arg(requirements);
        run("pip install", cmd, None)?;
        "pip"
    };
    let mut cmd = Command::new(dir.join("bin/python"));
    cmd.args(["-c", "import hypercorn"]);
    run("the venv's import of hypercorn", cmd, Some(120))?;
    // From here on nobody but root can change it: no write access for group or others.
    let built = venvs.sub_owned(key, builder.uid)?;
    built.chown_tree(store.me.uid, store.me.gid)?;
    if built.stat_at("bin")?.is_none() {
        bail!("{} has no bin/ after the build; it was moved or replaced while it was built", dir.display());
    }
    Ok((used, guard))
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
