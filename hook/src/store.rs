//! The store: the app root (releases, venvs, shared files, `current`) and the root-owned state
//! directory (journal, lock, the root copies of every release's unit, release.yaml and MANIFEST,
//! the environment file, the process manager's pidfile and log, the installers' logs).
//!
//! The trust boundary lives here. The app user can write `shared/` and `cache/`, and usually
//! owns the directory that holds the app root, so it can rename or replace the app root itself.
//! Everything is therefore reached through directory descriptors opened without following a
//! symlink and with their owner checked ([`crate::fsx`]): the app root must be owned by the user
//! the hook runs as, as must `releases/` and `venvs/` in it, and the state directory lives
//! outside the app root, under `/var/lib/deploy-hook/<app>` (mode 0700). Root never reads as
//! input, runs or hands to systemd anything the app user can write.

use std::{
    fs,
    io::{Read, Seek, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use packaging::{config::Release, layout};

use crate::{
    fsx::Dir,
    users::{self, Ids},
    util::{check_interrupted, failpoint, now},
};

/// Prefix of staging directories in `releases/`: unfinished by definition.
pub const STAGING_PREFIX: &str = ".tmp-";
/// Prefix of `current`'s new link before it is renamed over `current`.
pub const CURRENT_TMP: &str = ".current.tmp-";

/// True for the temporary names [`write_atomic`] and [`Dir::write_atomic`] write through
/// (`.<name>.tmp-<pid>`): what a kill before their rename leaves.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files a kill left in `dir` (a directory only root writes, such as
/// `/etc/systemd/system`) for the file names in `names`; returns what it removed.
pub fn remove_temporaries(dir: &Path, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(removed) };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temporary(&name)
            && names.iter().any(|file| {
                name.strip_prefix('.').is_some_and(|rest| rest.starts_with(&format!("{file}.tmp-")))
            })
        {
            let path = entry.path();
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}

/// The environment variable every child of the hook carries, set to the app root.
pub const RUN_MARK: &str = "DEPLOY_HOOK_RUN";

/// Name of the file that marks a venv as complete.
pub const VENV_COMPLETE: &str = ".deploy-complete";

/// The environment file in the state directory, systemd's `EnvironmentFile=`.
pub const ENV_FILE: &str = layout::STATE_ENV_FILE;

/// The cap on files the hook reads from its state (journal excepted: it is read line by line).
pub const READ_CAP: u64 = 4 << 20;

/// True for a revision id as [`packaging::Manifest::revision_id`] makes them: `r-` and 16
/// lower-case hex digits. Every revision name read from a file is checked with this before it
/// becomes part of a path.
pub fn is_revision(name: &str) -> bool {
    name.len() == 18
        && name.starts_with("r-")
        && name[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The app root and the state directory, opened, and who owns what is written under them.
pub struct Store {
    /// The app root on the host (the sandbox root already joined): for messages and for the
    /// children that run as the app user, never for the hook's own file operations.
    pub app_root: PathBuf,
    /// The app root, opened without following a symlink.
    pub dir: Dir,
    /// `/var/lib/deploy-hook/<app>` (under `--root`), mode 0700, owned by the hook's user.
    pub state: Dir,
    /// The app user, when running as root: the owner of `shared/` and `cache/`, and whom
    /// children run as. `None` when the hook runs as the app user itself.
    pub owner: Option<Ids>,
    /// The hook's own uid and gid: the owner of everything else.
    pub me: Ids,
    /// Who runs the installers that build a venv: `nobody` (its uid and gid from the instance's
    /// passwd and group, else 65534) when the hook is root, never the app user; else the hook's
    /// user.
    pub builder: Ids,
    /// The app root was laid out by an older deploy-hook (owned by the app user); the next
    /// [`Store::ensure_layout`] migrates it.
    legacy: bool,
}

fn euid() -> Ids {
    // SAFETY: geteuid and getegid have no preconditions.
    unsafe { Ids { uid: libc::geteuid(), gid: libc::getegid() } }
}

/// Opens (creating what is missing) each component of `rel` beneath `base`, never following a
/// symlink. Components that exist may belong to anyone (the app user's home); created ones
/// belong to `me` with `mode`.
fn walk_create(base: &Dir, rel: &Path, me: Ids, mode: u32) -> anyhow::Result<Dir> {
    // Usually all there: one openat2 (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
    match base.beneath(rel) {
        Ok(dir) => return Ok(dir),
        Err(e)
            if e.root_cause()
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
        Err(e) => return Err(e),
    }
    let mut dir = base.try_clone()?;
    for part in rel.components() {
        let name = part.as_os_str().to_str().context("a path component is not UTF-8")?;
        dir = match dir.stat_at(name)? {
            Some(_) => dir.sub(name)?,
            None => dir.ensure_dir(name, mode, me.uid, me.gid)?,
        };
    }
    Ok(dir)
}

impl Store {
    /// Opens the store of `release` under the sandbox root `root` (`/` on an instance),
    /// resolving the app user, creating the state directory and the app root when missing.
    pub fn open(root_dir: &Path, release: &Release) -> anyhow::Result<Store> {
        let ids = users::resolve(root_dir, release.user.as_str(), release.group.as_str())?;
        let me = euid();
        let root = me.uid == 0;
        if !root && ids.uid != me.uid {
            bail!("run as root or as the app user {} (uid {})", release.user, ids.uid);
        }
        let sandbox = Dir::open_trusted(root_dir)?;
        let state_rel = layout::state_dir(release.app.as_str());
        let state_rel = Path::new(state_rel.trim_start_matches('/'));
        let state_parent =
            walk_create(&sandbox, state_rel.parent().context("the state dir has a parent")?, me, 0o755)?;
        let state_name =
            state_rel.file_name().and_then(|n| n.to_str()).context("the state dir has a name")?;
        let state = state_parent.ensure_dir(state_name, 0o700, me.uid, me.gid)?;
        // SAFETY: fchmod on the descriptor just opened: nobody else may look in.
        if unsafe { libc::fchmod(state.raw(), 0o700) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("cannot chmod {}", state.path.display()));
        }
        let app_rel = Path::new(release.app_root.as_str().trim_start_matches('/'));
        let parent = walk_create(&sandbox, app_rel.parent().context("the app root has a parent")?, me, 0o755)
            .context("the directories above the app root must be real directories (deploy.yaml app_root must name no symlink)")?;
        let name = app_rel.file_name().and_then(|n| n.to_str()).context("the app root has a name")?;
        let dir = parent.ensure_dir(name, 0o755, me.uid, me.gid).or_else(|err| {
            let dir = parent.sub(name)?;
            let uid = dir.stat()?.st_uid;
            if root && uid == ids.uid { Ok(dir) } else { Err(err) }
        })?;
        let legacy = dir.stat()?.st_uid != me.uid;
        if legacy && state.stat_at("journal.jsonl")?.is_some() {
            bail!(
                "{} is owned by the app user {} (uid {}), but this host was deployed with a root-owned app root (its journal is in {}): someone replaced it; move it aside and deploy again",
                dir.path.display(),
                release.user,
                ids.uid,
                state.path.display()
            );
        }
        let builder = if root {
            let nobody = |group| users::resolve(root_dir, "nobody", group).ok();
            nobody("nogroup").or_else(|| nobody("nobody")).unwrap_or(Ids { uid: 65534, gid: 65534 })
        } else {
            me
        };
        if root && builder.uid == ids.uid {
            bail!(
                "the app user {} is the build identity nobody; run the service as a user of its own",
                release.user
            );
        }
        Ok(Store {
            builder,
            app_root: root_dir.join(release.app_root.as_str().trim_start_matches('/')),
            dir,
            state,
            owner: root.then_some(ids),
            me,
            legacy,
        })
    }

    /// The owner of what the app user may write: the app user as root, else the hook's user.
    pub fn app_ids(&self) -> Ids {
        self.owner.unwrap_or(self.me)
    }

    /// `releases/`, as a path through the app root's descriptor.
    pub fn releases(&self) -> PathBuf {
        self.dir.proc_path().join("releases")
    }
    /// `releases/<revision>`, through the descriptor; the revision is checked first.
    pub fn release(&self, revision: &str) -> anyhow::Result<PathBuf> {
        if !is_revision(revision) {
            bail!("{revision:?} is not a revision id (r- and 16 hex digits)");
        }
        Ok(self.releases().join(revision))
    }
    /// True when `revision` is a revision id and its release directory exists.
    pub fn has_release(&self, revision: &str) -> bool {
        self.release(revision).is_ok_and(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
    }
    /// `venvs/`, through the descriptor.
    pub fn venvs(&self) -> PathBuf {
        self.dir.proc_path().join("venvs")
    }
    /// `shared/`, opened without following a symlink, owned by the app user.
    pub fn shared(&self) -> anyhow::Result<Dir> {
        self.dir.sub_owned("shared", self.app_ids().uid)
    }
    /// `cache/` on the host, for the children that run as the app user.
    pub fn cache(&self) -> PathBuf {
        self.app_root.join("cache")
    }
    /// The root-owned copies of a release's unit, release.yaml and MANIFEST.
    pub fn copies(&self, revision: &str) -> anyhow::Result<Dir> {
        if !is_revision(revision) {
            bail!("{revision:?} is not a revision id");
        }
        self.state.sub_owned("releases", self.me.uid)?.sub_owned(revision, self.me.uid)
    }

    /// Creates the layout: `releases/` and `venvs/` owned by the hook's user, `shared/` and
    /// `cache/` by the app user, and the state's `releases/` and `logs/`. Migrates an app root
    /// laid out by an older deploy-hook first. Runs under the lock.
    pub fn ensure_layout(&self, log: &dyn Fn(String)) -> anyhow::Result<()> {
        if self.legacy {
            self.migrate(log)?;
        }
        let (me, app) = (self.me, self.app_ids());
        for (name, mode) in [("releases", 0o755), ("venvs", 0o755)] {
            self.dir.ensure_dir(name, mode, me.uid, me.gid)?;
        }
        self.dir.ensure_dir("shared", 0o750, app.uid, app.gid)?;
        let cache = self.dir.ensure_dir("cache", 0o750, app.uid, app.gid)?;
        self.fresh_tmp(&cache)?;
        for name in ["releases", "logs"] {
            self.state.ensure_dir(name, 0o700, me.uid, me.gid)?;
        }
        Ok(())
    }

    /// `cache/tmp`, the app user's TMPDIR for pip, uv and post-install commands: whatever the
    /// app user put there instead of a directory is removed (never followed) and it is made again.
    fn fresh_tmp(&self, cache: &Dir) -> anyhow::Result<Dir> {
        let app = self.app_ids();
        match cache.stat_at("tmp")? {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_uid == app.uid => {}
            Some(_) => cache.remove("tmp")?,
            None => {}
        }
        cache.ensure_dir("tmp", 0o700, app.uid, app.gid)
    }

    /// Moves an app root laid out by an older deploy-hook (owned by the app user, with the
    /// journal and the lock in it) into the new layout: the app root becomes the hook user's, and
    /// everything in it but `shared/` is moved, unread, to `legacy-<time>/` for the operator to
    /// remove. A regular `shared/.env` seeds the environment file.
    fn migrate(&self, log: &dyn Fn(String)) -> anyhow::Result<()> {
        let me = self.me;
        // SAFETY: fchown/fchmod on the app root's descriptor.
        if unsafe { libc::fchown(self.dir.raw(), me.uid, me.gid) } != 0
            || unsafe { libc::fchmod(self.dir.raw(), 0o755) } != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot take over {}", self.dir.path.display()));
        }
        let aside = format!("legacy-{}", now().replace([':', '-'], ""));
        let legacy = self.dir.ensure_dir(&aside, 0o755, me.uid, me.gid)?;
        let app = self.app_ids();
        for name in self.dir.names()? {
            if name == aside || name.starts_with("legacy-") {
                continue;
            }
            if name == "shared"
                && self
                    .dir
                    .stat_at(&name)?
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_uid == app.uid)
            {
                continue;
            }
            self.dir.rename(&name, &legacy, &name)?;
        }
        self.dir.fsync()?;
        if self.state.stat_at(ENV_FILE)?.is_none()
            && let Ok(shared) = self.shared()
            && let Ok(Some(env)) = shared.read(".env", 1 << 20)
        {
            self.state.write_atomic(ENV_FILE, &env, 0o600, None)?;
            log(format!("{} seeded from shared/.env", self.state.path.join(ENV_FILE).display()));
        }
        log(format!(
            "migrated {} from the app-user-owned layout of an older deploy-hook: its releases, venvs, journal and current moved unread to {aside}/ (remove it once this deployment is healthy; they cannot be rolled back to)",
            self.dir.path.display()
        ));
        Ok(())
    }

    /// The revision `current` points at, when it is a link of ours (`releases/<revision>`).
    pub fn current_revision(&self) -> Option<String> {
        let target = self.dir.readlink("current")?;
        let rev = target.strip_prefix("releases/")?;
        is_revision(rev).then(|| rev.to_owned())
    }

    /// Removes what crashed runs left: processes, staging directories, venvs never marked
    /// complete, and the temporary files of pip and uv. Runs under the lock, so nothing else is
    /// building them.
    pub fn clean_unfinished(&self) -> anyhow::Result<Vec<String>> {
        let mut removed: Vec<String> =
            self.kill_orphans().into_iter().map(|pid| format!("process {pid}")).collect();
        removed.extend(self.clean_tmp()?);
        // `current`'s new link under its temporary name, and files written through a temporary
        // name in the state directory, when a kill came before the rename.
        for name in self.dir.names()? {
            if name.starts_with(CURRENT_TMP) {
                self.dir.remove(&name)?;
                removed.push(name);
            }
        }
        let mut state_dirs = vec![self.state.try_clone()?];
        if let Ok(copies) = self.state.sub_owned("releases", self.me.uid) {
            for name in copies.names()? {
                if let Ok(dir) = copies.sub_owned(&name, self.me.uid) {
                    state_dirs.push(dir);
                }
            }
        }
        for dir in state_dirs {
            for name in dir.names()? {
                if is_temporary(&name) {
                    dir.remove(&name)?;
                    removed.push(dir.path.join(name).display().to_string());
                }
            }
        }
        let releases = self.dir.sub_owned("releases", self.me.uid)?;
        for name in releases.names()? {
            if name.starts_with(STAGING_PREFIX) {
                releases.remove(&name)?;
                removed.push(format!("releases/{name}"));
            }
        }
        let venvs = self.dir.sub_owned("venvs", self.me.uid)?;
        for name in venvs.names()? {
            let complete = venvs
                .sub(&name)
                .ok()
                .filter(|v| v.stat().is_ok_and(|st| st.st_uid == self.me.uid))
                .and_then(|v| v.stat_at(VENV_COMPLETE).ok().flatten())
                .is_some();
            if !complete {
                venvs.remove(&name)?;
                removed.push(format!("venvs/{name}"));
            }
        }
        Ok(removed)
    }

    /// Kills processes that an interrupted run left behind (pip's own children survive the
    /// death of the hook): every process whose environment carries [`RUN_MARK`] for this app
    /// root. Called under the lock, when no live run of the hook has children.
    pub fn kill_orphans(&self) -> Vec<i32> {
        let mut mark = format!("{RUN_MARK}=").into_bytes();
        mark.extend_from_slice(self.app_root.as_os_str().as_encoded_bytes());
        let me = std::process::id() as i32;
        let mut killed = Vec::new();
        let Ok(procs) = fs::read_dir("/proc") else { return killed };
        for entry in procs.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if pid == me || pid <= 1 {
                continue;
            }
            let Ok(environ) = fs::read(entry.path().join("environ")) else { continue };
            if environ.split(|b| *b == 0).any(|var| var == mark.as_slice()) {
                // SAFETY: kill(2) on a pid we just read (never 1 or below); at worst it has exited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.push(pid);
            }
        }
        killed
    }

    /// Empties `cache/tmp`, the TMPDIR of pip, uv and post-install commands, through
    /// descriptors: nothing the app user put there is followed.
    pub fn clean_tmp(&self) -> anyhow::Result<Vec<String>> {
        let app = self.app_ids();
        let Ok(cache) = self.dir.sub_owned("cache", app.uid) else { return Ok(Vec::new()) };
        let tmp = self.fresh_tmp(&cache)?;
        let mut removed = Vec::new();
        for name in tmp.names()? {
            tmp.remove(&name)?;
            removed.push(format!("cache/tmp/{name}"));
        }
        if let Ok(build) = self.dir.sub_owned(crate::venv::BUILD_DIR, self.builder.uid)
            && let Ok(tmp) = build.sub_owned("tmp", self.builder.uid)
        {
            for name in tmp.names()? {
                tmp.remove(&name)?;
                removed.push(format!("{}/tmp/{name}", crate::venv::BUILD_DIR));
            }
        }
        Ok(removed)
    }

    /// Points `current` at `releases/<revision>` atomically: a new link under a temporary name,
    /// renamed over `current`, then the directory fsynced. A real directory at `current` (a host
    /// deployed by the old script) is first moved aside to `releases/legacy-<time>`.
    /// Returns false when `current` already pointed there.
    pub fn switch_current(&self, revision: &str, log: &dyn Fn(String)) -> anyhow::Result<bool> {
        if !is_revision(revision) {
            bail!("{revision:?} is not a revision id");
        }
        let target = format!("releases/{revision}");
        match self.dir.stat_at("current")? {
            Some(st)
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK
                    && self.dir.readlink("current").as_deref() == Some(target.as_str()) =>
            {
                return Ok(false);
            }
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {}
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let aside = format!("legacy-{}", now().replace([':', '-'], ""));
                let releases = self.dir.sub_owned("releases", self.me.uid)?;
                self.dir.rename("current", &releases, &aside)?;
                log(format!("current was a real directory; moved it to releases/{aside}"));
            }
            Some(_) => bail!(
                "{} is neither a symlink nor a directory; remove it by hand",
                self.dir.path.join("current").display()
            ),
            None => {}
        }
        let tmp = format!("{CURRENT_TMP}{}", std::process::id());
        self.dir.remove(&tmp)?;
        self.dir.symlink(&target, &tmp)?;
        failpoint("before rename current");
        self.dir.rename(&tmp, &self.dir, "current")?;
        self.dir.fsync()?;
        Ok(true)
    }

    /// The environment file (`KEY=VALUE` lines): root-owned, in the state directory. Seeds it
    /// from `sample` (the archive's `configs/sample.env`) when it does not exist; never
    /// overwrites it. Returns whether it seeded it.
    pub fn seed_env(&self, sample: &[u8]) -> anyhow::Result<bool> {
        if self.state.stat_at(ENV_FILE)?.is_some() {
            return Ok(false);
        }
        self.state.write_atomic(ENV_FILE, sample, 0o600, None)?;
        Ok(true)
    }

    /// The environment file's variables, for the import check and post-install commands.
    pub fn env_vars(&self) -> anyhow::Result<Vec<(String, String)>> {
        let data = self.state.read(ENV_FILE, READ_CAP)?.unwrap_or_default();
        Ok(packaging::env_file::parse(&String::from_utf8_lossy(&data)))
    }
}

/// An exclusive `flock` on the state directory's `lock`, held until dropped (and released by
/// the kernel if the process dies). The file names the holder, for the messages of those who
/// wait. Only the hook's user can open it.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Waits up to `wait` for the lock of `store`, naming the holder while waiting and on failure.
    pub fn acquire(
        store: &Store,
        holder: &str,
        wait: Duration,
        log: &dyn Fn(String),
    ) -> anyhow::Result<Lock> {
        let path = store.state.path.join("lock");
        let mut file = store.state.open_file("lock", libc::O_RDWR | libc::O_CREAT, 0o600)?;
        let started = Instant::now();
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let mut other = String::new();
                    let _ = file.rewind().and_then(|_| (&file).take(4096).read_to_string(&mut other));
                    let other = match other.trim() {
                        "" => "another process (it has not written its name yet)",
                        name => name,
                    };
                    if started.elapsed() >= wait {
                        bail!(
                            "{} is still held after {}s by {other}; another deployment runs on this host",
                            path.display(),
                            wait.as_secs()
                        );
                    }
                    if !said {
                        log(format!("waiting up to {}s for the lock held by {other}", wait.as_secs()));
                        said = true;
                    }
                    check_interrupted()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{holder}")?;
        file.sync_all()?;
        Ok(Lock { _file: file })
    }
}

/// Writes `data` to `path` through a temporary file in the same directory: fsync, rename, fsync
/// the directory. The file gets `mode`; the caller sets its owner. Only for paths in a tree only
/// the hook's user can write (a staged release, `/etc/systemd/system`).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let name = path.file_name().context("a file path has a name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(data).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
    let dir_name = dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    failpoint(&format!("before rename {dir_name}/{name}"));
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    crate::util::fsync_dir(dir)?;
    Ok(())
}

/// Seconds to wait for another hook's lock: `DEPLOY_HOOK_LOCK_WAIT`, default 600.
pub fn lock_wait() -> Duration {
    let secs = std::env::var("DEPLOY_HOOK_LOCK_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_those_atomic_writes_make() {
        for name in [".python-app.service.tmp-123", ".journal.jsonl.tmp-9", ".MANIFEST.tmp-4242"] {
            assert!(is_temporary(name), "{name}");
        }
        for name in ["python-app.service", ".tmp-r-0123", ".x.tmp-", ".x.tmp-12a", "journal.jsonl.tmp-1"] {
            assert!(!is_temporary(name), "{name}");
        }
    }

    #[test]
    fn only_the_named_files_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".app.service.tmp-7", ".other.service.tmp-7", "app.service", ".app.socket.tmp-8"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let removed = remove_temporaries(dir.path(), &["app.service", "app.socket"]).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".other.service.tmp-7", "app.service"]);
    }
}
