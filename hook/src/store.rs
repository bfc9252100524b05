//! The instance layout under the app root: releases, venvs, shared files, the lock, `current`.
//!
//! Nothing here follows a symlink when it changes ownership or deletes: ownership is set on file
//! descriptors or with `lchown` as files are written, and `remove_dir_all` does not follow links.

use std::{
    fs,
    io::{Read, Seek, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt, lchown},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    users::Ids,
    util::{check_interrupted, fsync_dir, now},
};

/// Prefix of staging directories in `releases/`: unfinished by definition.
pub const STAGING_PREFIX: &str = ".tmp-";
/// The environment variable every child of the hook carries, set to the app root.
pub const RUN_MARK: &str = "DEPLOY_HOOK_RUN";

/// Name of the file that marks a venv as complete.
pub const VENV_COMPLETE: &str = ".deploy-complete";

/// The app root and who owns what is written under it.
pub struct Store {
    /// The app root, on the host (the sandbox root already joined).
    pub app_root: PathBuf,
    /// Owner of everything the app user may read or write; `None` when not running as root.
    pub owner: Option<Ids>,
}

impl Store {
    /// `releases/`.
    pub fn releases(&self) -> PathBuf {
        self.app_root.join("releases")
    }
    /// `releases/<revision>`.
    pub fn release(&self, revision: &str) -> PathBuf {
        self.releases().join(revision)
    }
    /// `venvs/`.
    pub fn venvs(&self) -> PathBuf {
        self.app_root.join("venvs")
    }
    /// `shared/`.
    pub fn shared(&self) -> PathBuf {
        self.app_root.join("shared")
    }
    /// `cache/`.
    pub fn cache(&self) -> PathBuf {
        self.app_root.join("cache")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.app_root.join("logs")
    }
    /// `current`.
    pub fn current(&self) -> PathBuf {
        self.app_root.join("current")
    }

    /// Sets the owner of `path` (never following a symlink) when running as root.
    pub fn own(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(ids) = self.owner {
            lchown(path, Some(ids.uid), Some(ids.gid))
                .with_context(|| format!("cannot set the owner of {}", path.display()))?;
        }
        Ok(())
    }

    /// Creates a directory owned by the app user with `mode`; an existing one is left as is.
    pub fn mkdir(&self, path: &Path, mode: u32) -> anyhow::Result<()> {
        match fs::create_dir(path) {
            Ok(()) => {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
                self.own(path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(path)?.is_dir() {
                    bail!("{} exists and is not a directory", path.display());
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// Creates the app root and its directories.
    pub fn ensure_layout(&self) -> anyhow::Result<()> {
        if !self.app_root.exists() {
            fs::create_dir_all(&self.app_root)
                .with_context(|| format!("cannot create the app root {}", self.app_root.display()))?;
            fs::set_permissions(&self.app_root, fs::Permissions::from_mode(0o755))?;
            self.own(&self.app_root)?;
        }
        for (dir, mode) in [
            (self.releases(), 0o755),
            (self.venvs(), 0o755),
            (self.shared(), 0o750),
            (self.cache(), 0o750),
            (self.cache().join("tmp"), 0o700),
            (self.logs(), 0o750),
        ] {
            self.mkdir(&dir, mode)?;
        }
        Ok(())
    }

    /// The revision `current` points at, when it is a link of ours (`releases/<revision>`).
    pub fn current_revision(&self) -> Option<String> {
        let target = fs::read_link(self.current()).ok()?;
        let target = target.to_str()?;
        let rev = target.strip_prefix("releases/")?;
        (!rev.contains('/') && !rev.is_empty()).then(|| rev.to_owned())
    }

    /// Removes what crashed runs left: processes, staging directories, venvs never marked
    /// complete, and the temporary files of pip and uv. Runs under the lock, so nothing else is
    /// building them.
    pub fn clean_unfinished(&self) -> anyhow::Result<Vec<String>> {
        let mut removed: Vec<String> =
            self.kill_orphans().into_iter().map(|pid| format!("process {pid}")).collect();
        removed.extend(self.clean_tmp()?);
        for (dir, unfinished) in [
            (
                self.releases(),
                &(|name: &str, _: &Path| name.starts_with(STAGING_PREFIX)) as &dyn Fn(&str, &Path) -> bool,
            ),
            (self.venvs(), &|_: &str, path: &Path| !path.join(VENV_COMPLETE).exists()),
        ] {
            for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if entry.file_type()?.is_dir() && unfinished(&name, &path) {
                    fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                    removed.push(path.strip_prefix(&self.app_root).unwrap_or(&path).display().to_string());
                }
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
            if pid == me {
                continue;
            }
            let Ok(environ) = fs::read(entry.path().join("environ")) else { continue };
            if environ.split(|b| *b == 0).any(|var| var == mark.as_slice()) {
                // SAFETY: kill(2) on a pid we just read; at worst it has exited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.push(pid);
            }
        }
        killed
    }

    /// Empties `cache/tmp`, the TMPDIR of pip, uv and post-install commands.
    pub fn clean_tmp(&self) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(self.cache().join("tmp")) else { return Ok(removed) };
        for entry in entries {
            let path = entry?.path();
            let res = if fs::symlink_metadata(&path)?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path.strip_prefix(&self.app_root).unwrap_or(&path).display().to_string());
        }
        Ok(removed)
    }

    /// Points `current` at `releases/<revision>` atomically: a new link under a temporary name,
    /// renamed over `current`, then the directory fsynced. A real directory at `current` (a host
    /// deployed by the old script) is first moved aside to `releases/legacy-<time>`.
    /// Returns false when `current` already pointed there.
    pub fn switch_current(&self, revision: &str, log: &dyn Fn(String)) -> anyhow::Result<bool> {
        let current = self.current();
        let target = format!("releases/{revision}");
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if fs::read_link(&current)?.as_os_str() == target.as_str() {
                    return Ok(false);
                }
            }
            Ok(meta) if meta.is_dir() => {
                let aside = self.releases().join(format!("legacy-{}", now().replace([':', '-'], "")));
                fs::rename(&current, &aside)
                    .with_context(|| format!("cannot move the directory {} aside", current.display()))?;
                log(format!("current was a real directory; moved it to {}", aside.display()));
            }
            Ok(_) => bail!("{} is neither a symlink nor a directory; remove it by hand", current.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", current.display())),
        }
        let tmp = self.app_root.join(format!(".current.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        self.own(&tmp)?;
        fs::rename(&tmp, &current)
            .with_context(|| format!("cannot rename {} over current", tmp.display()))?;
        fsync_dir(&self.app_root)?;
        Ok(true)
    }
}

/// An exclusive `flock` on `<app_root>/.lock`, held until dropped (and released by the kernel
/// if the process dies). The file names the holder, for the messages of those who wait.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Waits up to `wait` for the lock, naming the holder while waiting and on failure.
    pub fn acquire(path: &Path, holder: &str, wait: Duration, log: &dyn Fn(String)) -> anyhow::Result<Lock> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        let started = Instant::now();
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let mut other = String::new();
                    let _ = file.rewind().and_then(|_| file.read_to_string(&mut other));
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
/// the directory. The file gets `mode`; the caller sets its owner.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let name = path.file_name().context("a file path has a name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    fsync_dir(dir)?;
    Ok(())
}
