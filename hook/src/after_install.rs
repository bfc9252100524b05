//! AfterInstall: the seed's job done right. Lock, verify the archive, stage the release with
//! ownership set as files are written, build or reuse the venv, check imports, run post-install
//! commands, mark it ready, install the unit only when it changed, switch `current` atomically,
//! prune.

use std::{
    fs, io,
    io::Write,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink},
    },
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
    child::{Budget, ChildFailed, Ending, Spawn},
    context::{Ctx, Revision},
    fsx::{self, Dir},
    journal::{Journal, Record, State, states},
    prune,
    space::{self, Need},
    store::{Lock, READ_CAP, STAGING_PREFIX, Store, lock_wait, write_atomic},
    unit,
    util::{Log, now},
    venv,
};

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

/// Puts the revision's files into `staging` (a path through the app root's descriptor), owned by
/// the hook's user and read-only to the app user, never following links.
///
/// Every file is hard-linked from the archive where it is owned by the hook's user and on the
/// same filesystem: releases are immutable to the app user, so sharing an inode with the
/// archive the agent extracted as root gives the app user nothing.
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
            let linkable = true;
            release_path(&e.path).map(|dest| (dest, e.mode, revision.dir.join(&e.path), linkable))
        })
        .collect();
    entries.push(("deploy/MANIFEST".into(), 0o100644, revision.dir.join(layout::MANIFEST), true));
    let mut made = std::collections::HashSet::new();
    let mut staged = Staged::default();
    for (dest, mode, source, linkable) in entries {
        let target = staging.join(&dest);
        let mut parent = PathBuf::from(staging);
        for part in Path::new(&dest).parent().into_iter().flat_map(Path::components) {
            parent.push(part);
            if made.insert(parent.clone()) {
                mkdir(&parent)?;
            }
        }
        if mode == SYMLINK {
            let link = fs::read_link(&source)?;
            let text = link.to_str().unwrap_or("");
            if !link_stays_inside(&dest, text) {
                bail!("{dest}: symlink to {text:?} would point outside the release");
            }
            symlink(&link, &target).with_context(|| format!("cannot create {}", target.display()))?;
            staged.copied += 1;
            continue;
        }
        let perm = if mode == EXECUTABLE { 0o755 } else { 0o644 };
        let owned = fs::symlink_metadata(&source).is_ok_and(|m| m.uid() == store.me.uid && m.is_file());
        if stage == Stage::Link && linkable && owned {
            match fs::hard_link(&source, &target) {
                Ok(()) => {
                    fs::set_permissions(&target, fs::Permissions::from_mode(perm))?;
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
        staged.copied += 1;
    }
    Ok(staged)
}

/// What a release directory lacks, if anything: its `REVISION` naming `revision`, the `.venv`
/// link, or any file of the manifest (by name: a release only ever loses files).
fn release_missing(dir: &Path, manifest: &Manifest, revision: &str) -> Option<String> {
    match fs::read_to_string(dir.join("REVISION")) {
        Ok(text) if text.trim() == revision => {}
        _ => return Some("REVISION".into()),
    }
    let paths = manifest.entries.iter().filter_map(|e| release_path(&e.path));
    [".venv".to_owned(), "deploy/MANIFEST".to_owned()]
        .into_iter()
        .chain(paths)
        .find(|rel| fs::symlink_metadata(dir.join(rel)).is_err())
}

/// `../` repeated for the depth of `rel`'s parent, then `../../shared/<rel>`.
fn shared_link(rel: &str) -> String {
    let depth = rel.matches('/').count();
    format!("{}../../shared/{rel}", "../".repeat(depth))
}

/// Shared files and dirs, `.venv` and `REVISION`. Shared paths live in the app user's
/// `shared/`: they are created through its descriptor, exclusively and never through a symlink,
/// and whatever the app user already put at a shared path is left as it is.
fn link_release(
    store: &Store,
    release: &Release,
    revision: &str,
    staging: &Path,
    log: &Log,
) -> anyhow::Result<()> {
    let app = store.app_ids();
    for rel in &release.shared_files {
        let in_release = staging.join(rel.as_str());
        let (parent, name) = shared_parent(store, rel.as_str())?;
        if parent.stat_at(&name)?.is_none() {
            if !fs::symlink_metadata(&in_release).is_ok_and(|m| m.is_file()) {
                bail!(
                    "shared file shared/{rel} does not exist and the release has none to seed it; create it"
                );
            }
            let data = fsx::read_trusted(&in_release, 1 << 30)?;
            match parent.create_new(&name, 0o640) {
                Ok(mut file) => {
                    file.write_all(&data)?;
                    // SAFETY: fchown on the file we just created.
                    if unsafe { libc::fchown(file.as_raw_fd(), app.uid, app.gid) } != 0 {
                        return Err(io::Error::last_os_error())
                            .context(format!("cannot set the owner of shared/{rel}"));
                    }
                    log.info(format!("shared/{rel} seeded from the release"));
                }
                // Made by the app user in between: theirs, as it would have been a moment later.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create shared/{rel}")),
            }
        }
        ensure_parents(staging, rel.as_str())?;
        remove_any(&in_release)?;
        symlink(shared_link(rel.as_str()), &in_release)?;
    }
    for rel in &release.shared_dirs {
        let in_release = staging.join(rel.as_str());
        let (parent, name) = shared_parent(store, rel.as_str())?;
        parent.ensure_dir(&name, 0o750, app.uid, app.gid)?;
        ensure_parents(staging, rel.as_str())?;
        remove_any(&in_release)?;
        symlink(shared_link(rel.as_str()), &in_release)?;
    }
    symlink(format!("../../venvs/{}", release.venv_key), staging.join(".venv"))?;
    write_atomic(&staging.join("REVISION"), format!("{revision}\n").as_bytes(), 0o644)?;
    Ok(())
}

/// The directory holding the shared path `rel` (created as the app user's where missing, never
/// through a symlink) and the last component's name.
fn shared_parent(store: &Store, rel: &str) -> anyhow::Result<(Dir, String)> {
    let app = store.app_ids();
    let mut dir = store.shared()?;
    let mut parts: Vec<&str> = rel.split('/').collect();
    let name = parts.pop().context("a shared path has a name")?.to_owned();
    for part in parts {
        dir = dir.ensure_dir(part, 0o755, app.uid, app.gid)?;
    }
    Ok((dir, name))
}

fn mkdir(path: &Path) -> anyhow::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(fs::set_permissions(path, fs::Permissions::from_mode(0o755))?),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs::symlink_metadata(path)?.is_dir() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn ensure_parents(base: &Path, rel: &str) -> anyhow::Result<()> {
    let mut dir = base.to_path_buf();
    for part in Path::new(rel).parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        mkdir(&dir)?;
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

/// A command run as the app user in `dir` (the path the app user sees), the venv first on
/// PATH, the environment file's variables set.
fn release_command(store: &Store, release: &Release, dir: &Path, program: &str) -> anyhow::Result<Command> {
    let venv = store.app_root.join("venvs").join(&release.venv_key);
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(store.env_vars()?)
        .envs(venv::child_env(store, Some(&venv.join("bin"))))
        .env("VIRTUAL_ENV", &venv)
        // The release is read-only to the app user: no __pycache__ written into it.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    Ok(cmd)
}

/// Writes the root-owned copies of this revision's unit, release.yaml and MANIFEST, from the
/// archive, into the state directory: rollback and revert install and read those, never the
/// release directory's.
fn save_copies(store: &Store, revision: &Revision) -> anyhow::Result<()> {
    let me = store.me;
    let dir = store.state.sub_owned("releases", me.uid)?.ensure_dir(&revision.id, 0o700, me.uid, me.gid)?;
    let unit_name = revision.release.unit.as_str();
    let unit = fsx::read_trusted(&revision.dir.join(layout::unit(unit_name)), READ_CAP)?;
    dir.write_atomic(unit_name, &unit, 0o644, None)?;
    let yaml = fsx::read_trusted(&revision.dir.join(layout::RELEASE_YAML), READ_CAP)?;
    dir.write_atomic("release.yaml", &yaml, 0o644, None)?;
    dir.write_atomic("MANIFEST", revision.manifest_text.as_bytes(), 0o644, None)?;
    if let Some(socket) = revision.release.socket_unit() {
        let bytes = fsx::read_trusted(&revision.dir.join(layout::unit(&socket)), READ_CAP)?;
        dir.write_atomic(&socket, &bytes, 0o644, None)?;
    }
    Ok(())
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

/// The script [`compile_release`] runs.
const COMPILE_PY: &str = include_str!("python/compile.py");

/// Compiles the staged release's Python files into `__pycache__` (hash-checked pycs for the
/// release's interpreter), so the service, which cannot write the root-owned release, does not
/// compile the application on every start. A pyc of the live release `live` whose source hash
/// matches is hard-linked instead, so a redeploy compiles only the files that changed. Run as
/// root, in the releases directory, on names, never paths through the app user's directories:
/// compiling parses the source from the archive, it runs none of it (`-I -S`: no site, no
/// environment, no working directory on the path). A file that does not compile is left to
/// Python at import: some trees carry `.py` files that are not meant for this interpreter.
/// Returns that warning, if any; a compilation that was not started, ran out of time or was
/// interrupted is an error.
fn compile_release(
    release: &Release,
    releases: &Path,
    staging_name: &str,
    live: Option<&str>,
    log_file: &Path,
    budget: Budget,
) -> anyhow::Result<Option<String>> {
    let mut cmd = Command::new(release.python.as_str());
    cmd.args(["-I", "-S", "-c", COMPILE_PY, staging_name, live.unwrap_or("")])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .current_dir(releases);
    let spawn =
        Spawn { what: "bytecode compilation", ids: None, timeout: Duration::from_secs(300), log: log_file };
    match budget.run(cmd, spawn) {
        Ok(()) => Ok(None),
        Err(err)
            if !crate::util::interrupted()
                && err.downcast_ref::<ChildFailed>().is_some_and(|f| f.ending == Ending::Exited) =>
        {
            Ok(Some(format!("warning: {err:#}; those files compile at import instead")))
        }
        Err(err) => Err(err),
    }
}

/// What is left of AfterInstall's timeout for the next child.
fn budget(release: &Release, log: &Log) -> Budget {
    Budget::new("AfterInstall", release.timeouts.after_install.secs(), log.elapsed())
}

/// What a release of `manifest` takes in the app root: the blocks of every file that will be
/// copied (all of them with `Stage::Copy`, else those the archive cannot lend by a hard link:
/// another filesystem, not the hook user's), plus `space::LINKED_RELEASE`. Returns the bytes and
/// how many files of how many are copied.
fn release_need(
    store: &Store,
    revision: &Revision,
    manifest: &Manifest,
    stage: Stage,
) -> (u64, usize, usize) {
    let dev = store.dir.stat().map(|s| s.st_dev).ok();
    let files = manifest
        .entries
        .iter()
        .filter(|e| release_path(&e.path).is_some())
        .map(|e| (e.path.as_str(), e.size))
        .chain([(layout::MANIFEST, revision.manifest_text.len() as u64)]);
    let (mut bytes, mut copied, mut total) = (space::LINKED_RELEASE, 0, 0);
    for (path, size) in files {
        total += 1;
        let linkable = stage == Stage::Link
            && fs::symlink_metadata(revision.dir.join(path))
                .is_ok_and(|m| m.is_file() && m.uid() == store.me.uid && Some(m.dev()) == dev);
        if !linkable {
            bytes += space::on_disk(size);
            copied += 1;
        }
    }
    (bytes, copied, total)
}

/// What AfterInstall writes into the state directory: the root copies of the unit, socket
/// unit, release.yaml and MANIFEST, the journal's rewrite when it is compacted, and
/// `space::MARGIN` for the installer logs and journal records.
fn state_need(revision: &Revision, manifest: &Manifest, journal: &Journal) -> Vec<(String, u64)> {
    let release = &revision.release;
    let mut copied = vec![layout::unit(release.unit.as_str()), layout::RELEASE_YAML.to_owned()];
    copied.extend(release.socket_unit().map(|s| layout::unit(&s)));
    let copies: u64 = space::on_disk(revision.manifest_text.len() as u64)
        + manifest
            .entries
            .iter()
            .filter(|e| copied.contains(&e.path))
            .map(|e| space::on_disk(e.size))
            .sum::<u64>();
    let mut parts = vec![("root copies".to_owned(), copies)];
    if let Ok(meta) = fs::metadata(journal.path()) {
        parts.push(("journal rewrite".to_owned(), space::on_disk(meta.len())));
    }
    parts.push(("margin".to_owned(), space::MARGIN));
    parts
}

/// Adds what is left on the app root's and the state directory's filesystems to an error a full
/// disk may explain (`space::annotate`).
fn space_note(store: &Store, err: anyhow::Error) -> anyhow::Error {
    space::annotate(err, &[("app root", &store.dir), ("state", &store.state)])
}

/// Runs AfterInstall for `revision` with the deployment id `deployment_id`; returns the verdict.
/// A child's failure, or an ENOSPC / EDQUOT error, says how much space is left where.
pub fn run(ctx: &Ctx, revision: &Revision, deployment_id: &str, log: &mut Log) -> anyhow::Result<String> {
    let release = &revision.release;
    // Before anything is written anywhere: release.yaml names the app root that everything
    // after this creates, locks and cleans.
    let manifest = log.step("verify revision", |_| revision.verify())?;
    let store = log.step("resolve user and app root", |_| Store::open(&ctx.root, release))?;
    deploy(ctx, revision, deployment_id, log, &manifest, &store).map_err(|err| space_note(&store, err))
}

/// AfterInstall from the lock on, with the revision verified and the store open.
fn deploy(
    ctx: &Ctx,
    revision: &Revision,
    deployment_id: &str,
    log: &mut Log,
    manifest: &Manifest,
    store: &Store,
) -> anyhow::Result<String> {
    let release = &revision.release;
    let rev = revision.id.as_str();
    let holder =
        format!("pid {} (deployment {deployment_id}, AfterInstall, since {})", std::process::id(), now());
    let _lock = log.step("lock", |log| Lock::acquire(store, &holder, lock_wait(), &|m| log.info(m)))?;
    log.step("prepare app root", |log| store.ensure_layout(&|m| log.info(m)))?;
    log.step("clean unfinished", |log| {
        let service = ctx.service(release, store);
        let unit_dir = service.unit_file.parent().context("a unit file has a directory")?;
        let mut removed = store.clean_unfinished()?;
        removed
            .extend(crate::store::remove_temporaries(unit_dir, &[release.unit.as_str(), &service.socket])?);
        for path in removed {
            log.info(format!("removed {path}, left by an interrupted run"));
        }
        Ok(())
    })?;
    let journal = Journal::new(&store.state)?;
    let records = journal.read()?;
    let release_dir = store.release(rev)?;
    let recorded = matches!(states(&records).get(rev), Some(State::Ready | State::Live | State::Bad))
        && store.has_release(rev);
    let missing = if recorded { release_missing(&release_dir, manifest, rev) } else { None };
    if let Some(what) = &missing {
        log.info(format!(
            "release {rev} is recorded as built but is incomplete ({what}), as a removal cut short leaves it: building it again"
        ));
    }
    let known = recorded && missing.is_none();
    let wheels = space::wheel_bytes(release, manifest);
    // Before anything is written into either: room for the release, the venv (when it is not
    // complete), the root copies and the journal, for unprivileged users. Root could go on into
    // the reserved blocks, and leave the app nothing to write its own files with.
    log.step("free space", |log| {
        let mut app = Vec::new();
        if !known {
            let (bytes, copied, total) = release_need(store, revision, manifest, Stage::from_env());
            app.push((format!("release ({copied} of {total} files copied)"), bytes));
        }
        if venv::missing_part(store, &release.venv_key).is_some() {
            app.push(("venv".to_owned(), space::venv_need(wheels)));
        }
        app.push(("margin".to_owned(), space::MARGIN));
        let needs = [
            Need { role: "app root", dir: &store.dir, parts: app },
            Need { role: "state", dir: &store.state, parts: state_need(revision, manifest, &journal) },
        ];
        let found = space::ensure(&format!("revision {rev}"), &needs)?;
        let shown: Vec<String> = needs
            .iter()
            .zip(&found)
            .map(|(n, f)| format!("{} on {} ({})", space::human(f.bytes), f.mount.display(), n.role))
            .collect();
        log.info(format!("available to unprivileged users: {}", shown.join(", ")));
        Ok(())
    })?;
    let logs_file = store.state.path.join("logs").join(format!("{deployment_id}.log"));
    log.step("environment file", |log| {
        let sample = fsx::read_trusted(&revision.dir.join(layout::SAMPLE_ENV), READ_CAP)?;
        if store.seed_env(&sample)? {
            log.info(format!(
                "{} seeded from configs/sample.env (mode 0600, root's; edit it there, it is kept across releases)",
                store.state.path.join(crate::store::ENV_FILE).display()
            ));
        }
        Ok(())
    })?;
    log.step("save root copies", |_| save_copies(store, revision))?;
    let requirements_shown = |dir: &str| store.app_root.join("releases").join(dir).join(layout::REQUIREMENTS);
    let venv_note;
    if known {
        log.info(format!("release {rev} is already built: a flip, not a rebuild"));
        venv_note = "flip";
        // Its venv is reused only when complete (it may have been removed by hand or cut
        // short): else built again, keeping the release as it is.
        if let Some(part) = venv::missing_part(store, &release.venv_key) {
            log.info(format!("venv {} has no {part}: building it again", release.venv_key));
            log.step("python environment", |log| {
                let requirements = fsx::read_trusted(&release_dir.join(layout::REQUIREMENTS), READ_CAP)?;
                venv::ensure(
                    store,
                    release,
                    &requirements,
                    &requirements_shown(rev),
                    &revision.dir,
                    &logs_file,
                    space::venv_need(wheels),
                    log,
                )
            })?;
        }
    } else {
        let releases = store.dir.sub_owned("releases", store.me.uid)?;
        // Renamed into place but never recorded: a crash between the two. Build it again.
        releases.remove(rev)?;
        let staging_name = format!("{STAGING_PREFIX}{rev}-{}", std::process::id());
        let staging = store.releases().join(&staging_name);
        let staging_shown = store.app_root.join("releases").join(&staging_name);
        let guard = venv::RemoveOnDrop(Some(staging.clone()));
        let built = (|| -> anyhow::Result<&'static str> {
            log.step("stage release", |log| {
                releases.ensure_dir(&staging_name, 0o755, store.me.uid, store.me.gid)?;
                let staged = stage_files(store, revision, manifest, &staging, Stage::from_env())?;
                link_release(store, release, rev, &staging, log)?;
                log.info(format!(
                    "{} files linked and {} copied into {}",
                    staged.linked,
                    staged.copied,
                    staging_shown.display()
                ));
                Ok(())
            })?;
            // The release's bytecode is compiled (by the system interpreter, as root) while the
            // venv is built (by the installers, as the build identity): neither needs the other.
            let (outcome, compiled) = std::thread::scope(|scope| {
                let (budget, logs_file) = (budget(release, log), &logs_file);
                let (releases_dir, name) = (store.releases(), staging_name.as_str());
                let live = store.current_revision().filter(|live| live != rev);
                let compiling = scope.spawn(move || {
                    compile_release(release, &releases_dir, name, live.as_deref(), logs_file, budget)
                });
                let outcome = log.step("python environment", |log| {
                    let requirements = fsx::read_trusted(&staging.join(layout::REQUIREMENTS), READ_CAP)?;
                    venv::ensure(
                        store,
                        release,
                        &requirements,
                        &requirements_shown(&staging_name),
                        &revision.dir,
                        logs_file,
                        space::venv_need(wheels),
                        log,
                    )
                });
                let compiled = compiling
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::format_err!("bytecode compilation panicked")));
                (outcome, compiled)
            });
            let outcome = outcome?;
            log.step("compile bytecode", |log| {
                if let Some(warning) = compiled? {
                    log.info(warning);
                }
                Ok(())
            })?;
            log.step("import check", |log| {
                let unit_text =
                    fsx::read_trusted(&revision.dir.join(layout::unit(release.unit.as_str())), READ_CAP)?;
                let module = unit::asgi_module(&String::from_utf8_lossy(&unit_text))?;
                let mut cmd = release_command(store, release, &staging_shown, "python")?;
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
                    let mut cmd =
                        release_command(store, release, &staging_shown, post.run.program().as_str())?;
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
                releases.rename(&staging_name, &releases, rev)?;
                releases.fsync()?;
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
                // What is left once the staging is gone: what the next try has.
                let err = space_note(store, err);
                let _ = journal.append(
                    &record(deployment_id, rev, State::Failed, log, release).message(format!("{err:#}")),
                );
                return Err(err);
            }
        }
    }
    let service = ctx.service(release, store);
    log.step("install unit", |log| {
        // From the archive the agent extracted as root: never from the release directory.
        let wanted = fsx::read_trusted(&revision.dir.join(layout::unit(release.unit.as_str())), READ_CAP)?;
        let socket = match release.socket_unit() {
            Some(socket) => Some(fsx::read_trusted(&revision.dir.join(layout::unit(&socket)), READ_CAP)?),
            None => None,
        };
        unit::install(&service, &wanted, socket.as_deref(), log)
    })?;
    let previous = store.current_revision();
    let switched = log.step("switch current", |log| store.switch_current(rev, &|m| log.info(m)))?;
    let last_live = records.iter().rev().find(|r| r.state == State::Live);
    let same_deployment = last_live.is_some_and(|r| r.revision == rev && r.deployment_id == deployment_id);
    if switched || !same_deployment {
        let mut live = record(deployment_id, rev, State::Live, log, release);
        if let Some(p) = previous.as_deref().filter(|p| *p != rev) {
            live = live.message(format!("previous {p}"));
        }
        if let Err(err) = journal.append(&live) {
            // The journal must say what `current` is on: when it cannot say the switch
            // happened (a full disk), the switch is undone.
            return Err(match switched.then(|| undo_switch(ctx, store, previous.as_deref(), log)) {
                None | Some(Ok(())) => err.context(format!(
                    "cannot record {rev} as live; current is back on {}",
                    previous.as_deref().unwrap_or("no release")
                )),
                Some(Err(back)) => err.context(format!(
                    "cannot record {rev} as live, and going back failed too ({back:#}); current is on {rev}"
                )),
            });
        }
    }
    if let Err(err) = log.step("prune", |log| prune::prune(store, &journal, release.keep_releases, log)) {
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

/// Puts `current` and the unit back on `previous` (or removes `current` when there was none).
fn undo_switch(ctx: &Ctx, store: &Store, previous: Option<&str>, log: &Log) -> anyhow::Result<()> {
    match previous {
        Some(p) => {
            crate::lifecycle::install_unit_of(ctx, store, p, log)?;
            store.switch_current(p, &|m| log.info(m))?;
        }
        None => {
            store.dir.remove("current")?;
            store.dir.fsync()?;
        }
    }
    Ok(())
}

fn record(deployment_id: &str, rev: &str, state: State, log: &Log, release: &Release) -> Record {
    let mut record = Record::new(deployment_id, rev, "AfterInstall", state);
    record.steps = log.steps.iter().cloned().collect();
    record.venv = Some(release.venv_key.clone());
    record
}
