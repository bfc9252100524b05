//! AfterInstall: the seed's job done right. Lock, verify the archive, stage the release with
//! ownership set as files are written, build or reuse the venv, check imports, run post-install
//! commands, mark it ready, install the unit only when it changed, switch `current` atomically,
//! prune.

use std::{
    fs, io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use packaging::{
    Manifest,
    config::Release,
    layout,
    manifest::{EXECUTABLE, SYMLINK, link_stays_inside},
};

use crate::{
    child::{Budget, Spawn},
    context::{Ctx, Revision},
    journal::{Journal, Record, State, states},
    prune,
    service::Service,
    store::{Lock, STAGING_PREFIX, Store, write_atomic},
    users,
    util::{Log, fsync_dir, now},
    venv,
};

/// Seconds to wait for another hook's lock: `DEPLOY_HOOK_LOCK_WAIT`, default 600.
pub fn lock_wait() -> Duration {
    let secs = std::env::var("DEPLOY_HOOK_LOCK_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    Duration::from_secs(secs)
}

/// Opens the store of `release` under `ctx.root`, resolving the app user.
pub fn open_store(ctx: &Ctx, release: &Release) -> anyhow::Result<Store> {
    let ids = users::resolve(&ctx.root, release.user.as_str(), release.group.as_str())?;
    let root = is_root();
    // SAFETY: geteuid has no preconditions.
    if !root && ids.uid != unsafe { libc::geteuid() } {
        bail!("run as root or as the app user {} (uid {})", release.user, ids.uid);
    }
    Ok(Store { app_root: ctx.host(release.app_root.as_str()), owner: root.then_some(ids) })
}

/// True when the hook runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The store of `release` for reading only (`status`): any user who can read it may.
pub fn read_store(ctx: &Ctx, release: &Release) -> Store {
    Store { app_root: ctx.host(release.app_root.as_str()), owner: None }
}

/// Where a file of the revision goes in the release, if it goes at all.
fn release_path(bundle_path: &str) -> Option<String> {
    if let Some(rest) = bundle_path.strip_prefix("src/") {
        return Some(rest.to_owned());
    }
    if bundle_path == layout::HOOK {
        return Some("deploy/deploy-hook".into());
    }
    let top = bundle_path.split('/').next()?;
    matches!(top, "configs" | "dependencies" | "deploy").then(|| bundle_path.to_owned())
}

/// How source files get into a staged release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Hard links to the extracted archive where it is on the same filesystem (the agent only
    /// ever unlinks archive files, and links outlive that), copies elsewhere.
    Link,
    /// Always copies.
    Copy,
}

impl Stage {
    /// `DEPLOY_HOOK_STAGE=copy` forces copies; the default links.
    pub fn from_env() -> Stage {
        match std::env::var("DEPLOY_HOOK_STAGE").as_deref() {
            Ok("copy") => Stage::Copy,
            _ => Stage::Link,
        }
    }
}

/// Files staged: linked and copied.
#[derive(Debug, Default)]
pub struct Staged {
    linked: usize,
    copied: usize,
}

/// Puts the revision's files into `staging`, owned by the app user, never following links.
///
/// Only the application source is ever linked: the hook, release.yaml and the manifest are read
/// or run by root from the archive in later events, so they must not share an inode with a file
/// the app user owns.
fn stage_files(
    store: &Store,
    revision: &Revision,
    manifest: &Manifest,
    staging: &Path,
    stage: Stage,
) -> anyhow::Result<Staged> {
    let mut entries: Vec<(String, u32, PathBuf, bool)> = manifest
        .entries
        .iter()
        .filter_map(|e| {
            let linkable = e.path.starts_with("src/");
            release_path(&e.path).map(|dest| (dest, e.mode, revision.dir.join(&e.path), linkable))
        })
        .collect();
    entries.push(("deploy/MANIFEST".into(), 0o100644, revision.dir.join(layout::MANIFEST), false));
    let mut made = std::collections::HashSet::new();
    let mut staged = Staged::default();
    for (dest, mode, source, linkable) in entries {
        let target = staging.join(&dest);
        let mut parent = PathBuf::from(staging);
        for part in Path::new(&dest).parent().into_iter().flat_map(Path::components) {
            parent.push(part);
            if made.insert(parent.clone()) {
                store.mkdir(&parent, 0o755)?;
            }
        }
        if mode == SYMLINK {
            let link = fs::read_link(&source)?;
            let text = link.to_str().unwrap_or("");
            if !link_stays_inside(&dest, text) {
                bail!("{dest}: symlink to {text:?} would point outside the release");
            }
            symlink(&link, &target).with_context(|| format!("cannot create {}", target.display()))?;
            store.own(&target)?;
            staged.copied += 1;
            continue;
        }
        let perm = if mode == EXECUTABLE { 0o755 } else { 0o644 };
        if stage == Stage::Link && linkable {
            match fs::hard_link(&source, &target) {
                Ok(()) => {
                    fs::set_permissions(&target, fs::Permissions::from_mode(perm))?;
                    store.own(&target)?;
                    staged.linked += 1;
                    continue;
                }
                // Another filesystem, or linking refused: copy.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EPERM | libc::EMLINK)) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot link {}", target.display())),
            }
        }
        let mut from =
            fs::File::open(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perm)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        io::copy(&mut from, &mut to).with_context(|| format!("cannot copy to {}", target.display()))?;
        to.set_permissions(fs::Permissions::from_mode(perm))?;
        if let Some(ids) = store.owner {
            std::os::unix::fs::fchown(&to, Some(ids.uid), Some(ids.gid))?;
        }
        staged.copied += 1;
    }
    Ok(staged)
}

/// `../` repeated for the depth of `rel`'s parent, then `../../shared/<rel>`.
fn shared_link(rel: &str) -> String {
    let depth = rel.matches('/').count();
    format!("{}../../shared/{rel}", "../".repeat(depth))
}

/// `.env`, shared files and dirs, `.venv` and `REVISION`.
fn link_release(
    store: &Store,
    release: &Release,
    revision: &str,
    staging: &Path,
    log: &Log,
) -> anyhow::Result<()> {
    let env = staging.join(".env");
    if store.shared().join(".env").exists() {
        symlink("../../shared/.env", &env)?;
        store.own(&env)?;
        log.info(".env links to shared/.env");
    } else {
        let sample = fs::read(staging.join(layout::SAMPLE_ENV))?;
        write_atomic(&env, &sample, 0o600)?;
        store.own(&env)?;
        log.info(".env installed from configs/sample.env with mode 0600 (create shared/.env to keep one across releases)");
    }
    for rel in &release.shared_files {
        let (shared, in_release) = (store.shared().join(rel.as_str()), staging.join(rel.as_str()));
        if !shared.exists() {
            if in_release.is_file() {
                ensure_parents(store, &store.shared(), rel.as_str())?;
                fs::copy(&in_release, &shared)?;
                store.own(&shared)?;
                log.info(format!("shared/{rel} seeded from the release"));
            } else {
                bail!(
                    "shared file shared/{rel} does not exist and the release has none to seed it; create it"
                );
            }
        }
        ensure_parents(store, staging, rel.as_str())?;
        remove_any(&in_release)?;
        symlink(shared_link(rel.as_str()), &in_release)?;
        store.own(&in_release)?;
    }
    for rel in &release.shared_dirs {
        let (shared, in_release) = (store.shared().join(rel.as_str()), staging.join(rel.as_str()));
        ensure_parents(store, &store.shared(), rel.as_str())?;
        store.mkdir(&shared, 0o750)?;
        ensure_parents(store, staging, rel.as_str())?;
        remove_any(&in_release)?;
        symlink(shared_link(rel.as_str()), &in_release)?;
        store.own(&in_release)?;
    }
    let venv_link = staging.join(".venv");
    symlink(format!("../../venvs/{}", release.venv_key), &venv_link)?;
    store.own(&venv_link)?;
    let rev_file = staging.join("REVISION");
    write_atomic(&rev_file, format!("{revision}\n").as_bytes(), 0o644)?;
    store.own(&rev_file)?;
    Ok(())
}

fn ensure_parents(store: &Store, base: &Path, rel: &str) -> anyhow::Result<()> {
    let mut dir = base.to_path_buf();
    for part in Path::new(rel).parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        store.mkdir(&dir, 0o755)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Reads `KEY=VALUE` lines of an EnvironmentFile (comments and blanks skipped, one level of
/// quotes removed), for the import check and post-install commands.
pub fn read_env_file(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// A command run as the app user in `dir`, the venv first on PATH, the release's .env loaded.
fn release_command(store: &Store, release: &Release, dir: &Path, program: &str) -> Command {
    let venv = store.venvs().join(&release.venv_key);
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(read_env_file(&dir.join(".env")))
        .envs(venv::child_env(store, Some(&venv.join("bin"))))
        .env("VIRTUAL_ENV", &venv)
        // The release stays as shipped: no __pycache__ written into it.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    cmd
}

/// Installs the release's unit into `<root>/etc/systemd/system` when its bytes differ, then
/// reloads systemd. Returns whether it changed.
pub fn install_unit(store: &Store, service: &Service, release_dir: &Path, log: &Log) -> anyhow::Result<bool> {
    let unit = service.unit;
    let wanted = fs::read(release_dir.join(layout::unit(unit)))
        .with_context(|| format!("cannot read the unit {unit} of the release"))?;
    let dest = service.unit_file.clone();
    let dest_dir = dest.parent().context("a unit file has a directory")?;
    if fs::read(&dest).ok().as_deref() == Some(wanted.as_slice()) {
        return Ok(false);
    }
    fs::create_dir_all(dest_dir).with_context(|| format!("cannot create {}", dest_dir.display()))?;
    write_atomic(&dest, &wanted, 0o644)?;
    if store.owner.is_some() {
        std::os::unix::fs::lchown(&dest, Some(0), Some(0))?;
    }
    log.info(format!("installed {}", dest.display()));
    service.daemon_reload(log)?;
    Ok(true)
}

/// Compacts the journal when it grew past its limit; a failure is a warning (the deploy stands
/// and the file stays as it was). Call with the lock held.
pub fn compact_journal(journal: &Journal, log: &Log) {
    match journal.compact_if_large() {
        Ok(Some((before, after))) => {
            log.info(format!("compacted {} from {before} to {after} bytes", journal.path().display()))
        }
        Ok(None) => {}
        Err(err) => log.info(format!("warning: compacting the journal failed, it stays as it was: {err:#}")),
    }
}

/// What is left of AfterInstall's timeout for the next child.
fn budget(release: &Release, log: &Log) -> Budget {
    Budget::new("AfterInstall", release.timeouts.after_install.secs(), log.elapsed())
}

/// Runs AfterInstall for `revision` with the deployment id `deployment_id`; returns the verdict.
pub fn run(ctx: &Ctx, revision: &Revision, deployment_id: &str, log: &mut Log) -> anyhow::Result<String> {
    let release = &revision.release;
    let rev = revision.id.as_str();
    let store = log.step("resolve user and app root", |_| open_store(ctx, release))?;
    log.step("prepare app root", |_| store.ensure_layout())?;
    let holder =
        format!("pid {} (deployment {deployment_id}, AfterInstall, since {})", std::process::id(), now());
    let _lock = log.step("lock", |log| {
        Lock::acquire(&store.app_root.join(".lock"), &holder, lock_wait(), &|m| log.info(m))
    })?;
    log.step("clean unfinished", |log| {
        for path in store.clean_unfinished()? {
            log.info(format!("removed {path}, left by an interrupted run"));
        }
        Ok(())
    })?;
    let manifest = log.step("verify revision", |_| {
        let manifest = Manifest::parse(&revision.manifest_text)?;
        manifest.verify_tree(&revision.dir)?;
        Ok(manifest)
    })?;
    let journal = Journal::new(&store.app_root);
    let records = journal.read()?;
    let release_dir = store.release(rev);
    let known = matches!(states(&records).get(rev), Some(State::Ready | State::Live | State::Bad))
        && release_dir.is_dir();
    let logs_file = store.logs().join(format!("{deployment_id}.log"));
    let venv_note;
    if known {
        log.info(format!("release {rev} is already built: a flip, not a rebuild"));
        venv_note = "flip";
        if !release_dir.join(".venv/bin/python").exists() {
            // Its venv was removed by hand: build that again, keep the release as it is.
            log.step("python environment", |log| {
                let python = PathBuf::from(release.python.as_str());
                venv::ensure(
                    &store,
                    release,
                    &python,
                    &release_dir.join(layout::REQUIREMENTS),
                    &logs_file,
                    log,
                )
            })?;
        }
    } else {
        if release_dir.exists() {
            // Renamed into place but never recorded: a crash between the two. Build it again.
            fs::remove_dir_all(&release_dir)?;
        }
        let staging = store.releases().join(format!("{STAGING_PREFIX}{rev}-{}", std::process::id()));
        let guard = venv::RemoveOnDrop(Some(staging.clone()));
        let built = (|| -> anyhow::Result<&'static str> {
            log.step("stage release", |log| {
                store.mkdir(&staging, 0o755)?;
                let staged = stage_files(&store, revision, &manifest, &staging, Stage::from_env())?;
                link_release(&store, release, rev, &staging, log)?;
                log.info(format!(
                    "{} files linked and {} copied into {}",
                    staged.linked,
                    staged.copied,
                    staging.display()
                ));
                Ok(())
            })?;
            let outcome = log.step("python environment", |log| {
                let python = PathBuf::from(release.python.as_str());
                venv::ensure(&store, release, &python, &staging.join(layout::REQUIREMENTS), &logs_file, log)
            })?;
            log.step("import check", |log| {
                let module = release_module(&staging)?;
                let mut cmd = release_command(&store, release, &staging, "python");
                cmd.args([
                    "-c",
                    "import importlib, sys; import hypercorn; importlib.import_module(sys.argv[1])",
                    &module,
                ]);
                budget(release, log).run(
                    cmd,
                    Spawn {
                        what: "the import check",
                        ids: store.owner,
                        timeout: Duration::from_secs(120),
                        log: &logs_file,
                    },
                )
            })?;
            for post in &release.post_install {
                log.step(&format!("post-install {}", post.name), |log| {
                    let mut cmd = release_command(&store, release, &staging, post.run.program().as_str());
                    cmd.args(post.run.args().iter().map(|a| a.as_str()))
                        .env("DEPLOY_REVISION", rev)
                        .env("DEPLOYMENT_ID", deployment_id);
                    let what = format!("post-install command {:?}", post.name.as_str());
                    let spawn = Spawn {
                        what: &what,
                        ids: store.owner,
                        timeout: Duration::from_secs(post.timeout.secs().into()),
                        log: &logs_file,
                    };
                    budget(release, log).run(cmd, spawn)
                })?;
            }
            log.step("mark ready", |_| {
                fs::rename(&staging, &release_dir).with_context(|| {
                    format!("cannot rename {} to {}", staging.display(), release_dir.display())
                })?;
                fsync_dir(&store.releases())?;
                Ok(())
            })?;
            Ok(match outcome {
                venv::Outcome::Reused => "venv reused",
                venv::Outcome::Built("uv") => "venv built with uv",
                venv::Outcome::Built(_) => "venv built with pip",
            })
        })();
        match built {
            Ok(note) => {
                guard.disarm();
                venv_note = note;
                journal.append(&record(deployment_id, rev, State::Ready, log, release))?;
            }
            Err(err) => {
                drop(guard);
                let _ = store.clean_tmp();
                let _ = journal.append(
                    &record(deployment_id, rev, State::Failed, log, release).message(format!("{err:#}")),
                );
                return Err(err);
            }
        }
    }
    let service = ctx.service(release, &store);
    log.step("install unit", |log| install_unit(&store, &service, &release_dir, log))?;
    let previous = store.current_revision();
    let switched = log.step("switch current", |log| store.switch_current(rev, &|m| log.info(m)))?;
    let last_live = records.iter().rev().find(|r| r.state == State::Live);
    let same_deployment = last_live.is_some_and(|r| r.revision == rev && r.deployment_id == deployment_id);
    if switched || !same_deployment {
        let mut live = record(deployment_id, rev, State::Live, log, release);
        if let Some(p) = previous.as_deref().filter(|p| *p != rev) {
            live = live.message(format!("previous {p}"));
        }
        journal.append(&live)?;
    }
    if let Err(err) = log.step("prune", |log| prune::prune(&store, &journal, release.keep_releases, log)) {
        log.info(format!("warning: pruning failed, the deploy stands: {err:#}"));
    }
    compact_journal(&journal, log);
    let secs = log.elapsed().as_secs_f64();
    Ok(if !switched && same_deployment && known {
        format!(
            "after-install ok: revision {rev} already live (deployment {deployment_id}), nothing to do, {secs:.1}s"
        )
    } else {
        let from = match previous {
            Some(p) if p != rev => format!(", previous {p}"),
            _ => String::new(),
        };
        format!(
            "after-install ok: revision {rev} live (deployment {deployment_id}) in {secs:.1}s, {venv_note}{from}"
        )
    })
}

/// The module of the service's ASGI app, from the rendered unit's last ExecStart word.
fn release_module(staging: &Path) -> anyhow::Result<String> {
    let hypercorn = staging.join("configs");
    for entry in fs::read_dir(&hypercorn)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "service") {
            let text = fs::read_to_string(&path)?;
            if let Some(exec) = text.lines().find_map(|l| l.strip_prefix("ExecStart=")) {
                let last = exec.rsplit(' ').next().unwrap_or("").trim_matches('"');
                if let Some((module, _)) = last.split_once(':') {
                    return Ok(module.to_owned());
                }
            }
        }
    }
    bail!("cannot find the ASGI app in the release's unit")
}

fn record(deployment_id: &str, rev: &str, state: State, log: &Log, release: &Release) -> Record {
    let mut record = Record::new(deployment_id, rev, "AfterInstall", state);
    record.steps = log.steps.iter().cloned().collect();
    record.venv = Some(release.venv_key.clone());
    record
}
