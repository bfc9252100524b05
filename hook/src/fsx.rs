//! Directory file descriptors: every operation under the app root and the state directory goes
//! through one, never by re-resolving a path string that someone else could have changed.
//!
//! Opening beneath a directory uses `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the
//! kernel has it (Linux 5.6) and an `O_NOFOLLOW` walk, one component at a time, where it does not.
//! Files are opened with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`, and anything but a regular file
//! (a FIFO, a device, a socket) where a file is expected is an error, so no open can hang.

use std::{
    ffi::{CString, OsStr},
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use anyhow::{Context, bail};

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `fstat` of a descriptor.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// What a file type is called in messages.
pub fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "an unknown kind of file",
    }
}

/// A single path component: no `/`, not empty, not `.` or `..`, no NUL.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// An open directory, and the path it was opened by (for messages only).
pub struct Dir {
    fd: OwnedFd,
    /// The path the directory was opened by, for messages and for children that need a path.
    pub path: PathBuf,
}

impl Dir {
    /// Opens a directory the caller trusts by its path (the sandbox root, `/`).
    pub fn open_trusted(path: &Path) -> anyhow::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: open on a NUL-terminated path; the fd is owned below.
        let fd =
            check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })
                .with_context(|| format!("cannot open the directory {}", path.display()))?;
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_owned() })
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> anyhow::Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    /// The raw descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `/proc/self/fd/N`: a path that names exactly this directory however its ancestors are
    /// renamed, for std APIs in a subtree only root can write.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw()))
    }

    /// This directory's `stat`.
    pub fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.raw())
    }

    /// `stat` of `name` without following a symlink; `None` when it does not exist.
    pub fn stat_at(&self, name: &str) -> anyhow::Result<Option<libc::stat>> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: fstatat writes into the zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        match check(unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot inspect {}", self.path.join(name).display())),
        }
    }

    fn openat_raw(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        if !is_name(name) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
        }
        let c = cstr(OsStr::new(name))?;
        // SAFETY: openat on a NUL-terminated name relative to our fd; the fd is owned below.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
                mode as libc::c_uint,
            )
        })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens the directory `name` in this one without following a symlink.
    pub fn sub(&self, name: &str) -> anyhow::Result<Dir> {
        let path = self.path.join(name);
        let fd = self.openat_raw(name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            let what = match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => match self.stat_at(name) {
                    Ok(Some(st)) => format!("it is {}; refusing to follow or use it", kind(st.st_mode)),
                    _ => "it is not a directory".to_owned(),
                },
                _ => String::new(),
            };
            // The io::Error stays the root cause: callers tell a missing directory by it.
            let sep = if what.is_empty() { "" } else { ": " };
            anyhow::Error::new(e).context(format!("cannot open the directory {}{sep}{what}", path.display()))
        })?;
        Ok(Dir { fd, path })
    }

    /// Opens the directory `name` in this one and checks that `uid` owns it.
    pub fn sub_owned(&self, name: &str, uid: u32) -> anyhow::Result<Dir> {
        let dir = self.sub(name)?;
        dir.check_owner(uid)?;
        Ok(dir)
    }

    /// Fails unless `uid` owns this directory.
    pub fn check_owner(&self, uid: u32) -> anyhow::Result<()> {
        let st = self.stat()?;
        if st.st_uid != uid {
            bail!(
                "{} is owned by uid {}, not uid {uid}; someone other than deploy-hook replaced it (move it aside and deploy again)",
                self.path.display(),
                st.st_uid
            );
        }
        Ok(())
    }

    /// Opens the relative directory path `rel` beneath this one, refusing any symlink on the way:
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, else an `O_NOFOLLOW` walk.
    pub fn beneath(&self, rel: &Path) -> anyhow::Result<Dir> {
        let path = self.path.join(rel);
        let c = cstr(rel.as_os_str())?;
        // SAFETY: open_how is plain data; zero is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads the struct and the NUL-terminated path we own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.raw(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            return Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(ret as RawFd) }, path });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // No openat2 here (an old kernel, or a seccomp filter): walk.
            Some(libc::ENOSYS | libc::EPERM) => {}
            Some(libc::ELOOP) => bail!("cannot open {}: a component is a symlink", path.display()),
            Some(libc::EXDEV) => bail!("cannot open {}: it leaves {}", path.display(), self.path.display()),
            _ => return Err(err).with_context(|| format!("cannot open the directory {}", path.display())),
        }
        let mut dir = Dir { fd: self.fd.try_clone()?, path: self.path.clone() };
        for part in rel.components() {
            match part {
                Component::Normal(name) => {
                    let name = name.to_str().context("a path component is not UTF-8")?;
                    dir = dir.sub(name)?;
                }
                Component::CurDir => {}
                _ => bail!("{} leaves {}", rel.display(), self.path.display()),
            }
        }
        Ok(dir)
    }

    /// Creates the directory `name` (mode `mode`, owner `uid:gid`) unless it exists, then opens
    /// it without following a symlink and checks its owner is `uid`.
    pub fn ensure_dir(&self, name: &str, mode: u32, uid: u32, gid: u32) -> anyhow::Result<Dir> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: mkdirat on a NUL-terminated name relative to our fd.
        let created = match check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), 0o700) }) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", self.path.join(name).display()));
            }
        };
        let dir = self.sub(name)?;
        if created {
            // SAFETY: fchown/fchmod on the descriptor we just opened.
            check(unsafe { libc::fchown(dir.raw(), uid, gid) })
                .with_context(|| format!("cannot set the owner of {}", dir.path.display()))?;
            check(unsafe { libc::fchmod(dir.raw(), mode) })?;
        }
        dir.check_owner(uid)?;
        Ok(dir)
    }

    /// Opens the regular file `name` with `flags` (plus `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`);
    /// a symlink, FIFO, device or socket there is an error.
    pub fn open_file(&self, name: &str, flags: libc::c_int, mode: u32) -> anyhow::Result<fs::File> {
        let path = self.path.join(name);
        let fd = self.openat_raw(name, flags, mode).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::format_err!("{} is a symlink; refusing to open it", path.display()),
            _ => anyhow::Error::new(e).context(format!("cannot open {}", path.display())),
        })?;
        let st = fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            bail!("{} is {}, not a regular file; refusing to use it", path.display(), kind(st.st_mode));
        }
        Ok(fs::File::from(fd))
    }

    /// Opens the regular file `name` for reading; `None` when it does not exist.
    pub fn open_read(&self, name: &str) -> anyhow::Result<Option<fs::File>> {
        match self.stat_at(name)? {
            None => Ok(None),
            Some(_) => self.open_file(name, libc::O_RDONLY, 0).map(Some),
        }
    }

    /// Reads the regular file `name`, at most `cap` bytes (more is an error); `None` when it
    /// does not exist.
    pub fn read(&self, name: &str, cap: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(file) = self.open_read(name)? else { return Ok(None) };
        let mut data = Vec::new();
        file.take(cap + 1).read_to_end(&mut data)?;
        if data.len() as u64 > cap {
            bail!("{} is larger than {cap} bytes", self.path.join(name).display());
        }
        Ok(Some(data))
    }

    /// Creates `name` exclusively (never through a symlink or over anything that exists).
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<fs::File> {
        self.openat_raw(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode).map(fs::File::from)
    }

    /// Writes `data` to `name` through a temporary file: fsync, rename, fsync this directory.
    /// The file gets `mode` and, when given, the owner `uid:gid`.
    pub fn write_atomic(
        &self,
        name: &str,
        data: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> anyhow::Result<()> {
        let tmp = format!(".{name}.tmp-{}", std::process::id());
        let _ = self.remove(&tmp);
        let mut file = self
            .create_new(&tmp, mode)
            .with_context(|| format!("cannot write {}", self.path.join(&tmp).display()))?;
        file.write_all(data).with_context(|| format!("cannot write {}", self.path.join(&tmp).display()))?;
        // SAFETY: fchmod/fchown on our own descriptor.
        check(unsafe { libc::fchmod(file.as_raw_fd(), mode) })?;
        if let Some((uid, gid)) = owner {
            check(unsafe { libc::fchown(file.as_raw_fd(), uid, gid) })?;
        }
        file.sync_all().with_context(|| format!("cannot write {}", self.path.join(&tmp).display()))?;
        crate::util::failpoint(&format!("before rename {name}"));
        self.rename(&tmp, self, name)?;
        self.fsync()
    }

    /// Renames `from` here to `to` in `dir`.
    pub fn rename(&self, from: &str, dir: &Dir, to: &str) -> anyhow::Result<()> {
        let (a, b) = (cstr(OsStr::new(from))?, cstr(OsStr::new(to))?);
        // SAFETY: renameat on NUL-terminated names relative to our fds.
        check(unsafe { libc::renameat(self.raw(), a.as_ptr(), dir.raw(), b.as_ptr()) }).with_context(
            || format!("cannot rename {} to {}", self.path.join(from).display(), dir.path.join(to).display()),
        )?;
        Ok(())
    }

    /// Creates the symlink `name` -> `target`.
    pub fn symlink(&self, target: &str, name: &str) -> anyhow::Result<()> {
        let (t, n) = (cstr(OsStr::new(target))?, cstr(OsStr::new(name))?);
        // SAFETY: symlinkat on NUL-terminated strings relative to our fd.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), n.as_ptr()) })
            .with_context(|| format!("cannot create the symlink {}", self.path.join(name).display()))?;
        Ok(())
    }

    /// The target of the symlink `name`, if it is one.
    pub fn readlink(&self, name: &str) -> Option<String> {
        let c = cstr(OsStr::new(name)).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: readlinkat writes at most buf.len() bytes into buf.
        let n = unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 || n as usize >= buf.len() {
            return None;
        }
        buf.truncate(n as usize);
        String::from_utf8(buf).ok()
    }

    /// The names in this directory (not `.` and `..`), sorted.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in
            fs::read_dir(self.proc_path()).with_context(|| format!("cannot list {}", self.path.display()))?
        {
            let name = entry?.file_name();
            match name.to_str() {
                Some(name) => names.push(name.to_owned()),
                None => bail!("{} holds a name that is not UTF-8: {name:?}", self.path.display()),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes `name`, whatever it is, never following a symlink: a directory is emptied through
    /// descriptors, entry by entry, then removed. A missing `name` is fine.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let Some(st) = self.stat_at(name)? else { return Ok(()) };
        let c = cstr(OsStr::new(name))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = self.sub(name)?;
            for entry in sub.names()? {
                sub.remove(&entry)?;
            }
            drop(sub);
            // SAFETY: unlinkat on a NUL-terminated name relative to our fd.
            check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })
        } else {
            check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })
        }
        .map(drop)
        .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        .with_context(|| format!("cannot remove {}", self.path.join(name).display()))
    }

    /// Gives everything under this directory (and itself) to `uid:gid`, never following a
    /// symlink, and takes away set-id bits and write access for group and others.
    pub fn chown_tree(&self, uid: u32, gid: u32) -> anyhow::Result<()> {
        let fix = |fd: RawFd, path: &Path| -> anyhow::Result<()> {
            // SAFETY: fchown/fchmod on a descriptor we hold.
            check(unsafe { libc::fchown(fd, uid, gid) })
                .with_context(|| format!("cannot set the owner of {}", path.display()))?;
            let st = fstat(fd)?;
            check(unsafe { libc::fchmod(fd, st.st_mode & 0o755) })?;
            Ok(())
        };
        fix(self.raw(), &self.path)?;
        for name in self.names()? {
            let st = self.stat_at(&name)?.context("an entry vanished while its owner was set")?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => self.sub(&name)?.chown_tree(uid, gid)?,
                libc::S_IFREG => {
                    let fd = self.openat_raw(&name, libc::O_RDONLY, 0)?;
                    fix(fd.as_raw_fd(), &self.path.join(&name))?;
                }
                libc::S_IFLNK => {
                    let c = cstr(OsStr::new(&name))?;
                    // SAFETY: fchownat with AT_SYMLINK_NOFOLLOW changes the link itself.
                    check(unsafe {
                        libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                    })?;
                }
                _ => bail!("{} is {}; a venv holds none", self.path.join(&name).display(), kind(st.st_mode)),
            }
        }
        Ok(())
    }

    /// fsync of the directory itself.
    pub fn fsync(&self) -> anyhow::Result<()> {
        // SAFETY: fsync on our descriptor.
        check(unsafe { libc::fsync(self.raw()) })
            .with_context(|| format!("cannot fsync {}", self.path.display()))?;
        Ok(())
    }
}

/// Reads a regular file by a path only root can change (a unit file, the archive), without
/// following a final symlink, at most `cap` bytes.
pub fn read_trusted(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags_nofollow()
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let st = fstat(file.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!("{} is {}, not a regular file", path.display(), kind(st.st_mode));
    }
    let mut data = Vec::new();
    file.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        bail!("{} is larger than {cap} bytes", path.display());
    }
    Ok(data)
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

/// The last `lines` lines of `file`, reading at most the last 64 KiB (it may be growing).
pub fn tail(mut file: fs::File, lines: usize) -> String {
    const WINDOW: u64 = 64 << 10;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(WINDOW).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
