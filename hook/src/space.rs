//! Free space: what the filesystems of the app root and the state directory have left for
//! unprivileged users (statvfs `f_bavail`, never root's reserved blocks, which the hook as root
//! could fill silently), the estimates AfterInstall checks before it writes, and the note on what
//! is left that a child's failure or an ENOSPC / EDQUOT error of the hook's own gets.

use std::{
    fmt, fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use packaging::{Manifest, config::Release};

use crate::{child::ChildFailed, fsx::Dir};

/// Slack on top of what AfterInstall writes into the app root (directories, the installers'
/// caches and temporary files in `.build/`) and into the state directory (installer logs,
/// journal records, the temporaries of atomic writes).
pub const MARGIN: u64 = 16 << 20;
/// A venv before its requirements: `python -m venv` with pip in it is 26 MiB (CPython 3.11).
pub const VENV_BASE: u64 = 32 << 20;
/// Installed bytes per byte of vendored wheel: the example's wheels (265 KB) install as 2 MiB
/// with their bytecode, 7.5 times their size.
pub const VENV_PER_WHEEL_BYTE: u64 = 8;
/// A venv installed from the index, whose wheels are unknown until the installer fetches them
/// (hypercorn and a web framework, with the installer's cache).
pub const VENV_FROM_INDEX: u64 = 300 << 20;
/// Room taken by a release whose files are hard links to the archive: directories, the
/// symlinks and `REVISION`.
pub const LINKED_RELEASE: u64 = 1 << 20;

/// Space on one filesystem.
#[derive(Debug, Clone)]
pub struct Free {
    /// Bytes available to unprivileged users: `f_bavail * f_frsize`.
    pub bytes: u64,
    /// The mount point of the filesystem (the topmost ancestor on the same device), or the
    /// path measured when that cannot be told.
    pub mount: PathBuf,
    dev: u64,
}

impl Free {
    /// The filesystem holding `path`, or its nearest existing ancestor.
    pub fn of_path(path: &Path) -> anyhow::Result<Free> {
        let mut probe = path.to_path_buf();
        while fs::symlink_metadata(&probe).is_err() {
            probe = probe
                .parent()
                .with_context(|| format!("{} has no existing ancestor", path.display()))?
                .into();
        }
        let c_path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())?;
        // SAFETY: statvfs writes into the zeroed struct we own.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot statvfs {}", probe.display()));
        }
        let dev = fs::metadata(&probe).with_context(|| format!("cannot stat {}", probe.display()))?.dev();
        Ok(Free::new(&stat, &probe, dev))
    }

    /// The filesystem of an open directory (no path followed for the figures; its path only
    /// names the mount point).
    pub fn of_dir(dir: &Dir) -> anyhow::Result<Free> {
        // SAFETY: fstatvfs writes into the zeroed struct we own; the descriptor is open.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(dir.raw(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot statvfs {}", dir.path.display()));
        }
        let dev = dir.stat().with_context(|| format!("cannot stat {}", dir.path.display()))?.st_dev;
        Ok(Free::new(&stat, &dir.path, dev))
    }

    fn new(stat: &libc::statvfs, path: &Path, dev: u64) -> Free {
        Free { bytes: stat.f_bavail * stat.f_frsize, mount: mount_point(path, dev), dev }
    }
}

/// The topmost ancestor of `path` on the device `dev` (for messages only).
fn mount_point(path: &Path, dev: u64) -> PathBuf {
    let mut at = path.to_path_buf();
    while let Some(parent) = at.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !fs::metadata(parent).is_ok_and(|m| m.dev() == dev) {
            break;
        }
        at = parent.to_path_buf();
    }
    at
}

/// Bytes in binary units, one decimal below 10: `0 B`, `512 B`, `0.3 MiB`, `12 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // Below 1 MiB shown as a fraction of one: "0.3 MiB", the unit the checks are read in.
    if unit == 0 && value >= 100.0 {
        return format!("{:.1} MiB", value / 1024.0);
    }
    if value < 10.0 { format!("{value:.1} {}", UNITS[unit]) } else { format!("{value:.0} {}", UNITS[unit]) }
}

/// Bytes a file of `size` takes on disk, counted in 4 KiB blocks.
pub fn on_disk(size: u64) -> u64 {
    size.div_ceil(4096).max(1) * 4096
}

/// What a venv takes: [`VENV_BASE`] plus [`VENV_PER_WHEEL_BYTE`] times the vendored wheels'
/// bytes, or [`VENV_FROM_INDEX`] when the wheels come from the index (`wheels` is `None`).
pub fn venv_need(wheels: Option<u64>) -> u64 {
    match wheels {
        Some(bytes) => VENV_BASE + VENV_PER_WHEEL_BYTE * bytes,
        None => VENV_FROM_INDEX,
    }
}

/// The vendored wheels' bytes by the MANIFEST (`None` when the venv installs from the index).
pub fn wheel_bytes(release: &Release, manifest: &Manifest) -> Option<u64> {
    release.wheels.as_ref().map(|_| {
        manifest
            .entries
            .iter()
            .filter(|e| e.path.starts_with("dependencies/wheels/") && e.path.ends_with(".whl"))
            .map(|e| e.size)
            .sum()
    })
}

/// What is about to be written on the filesystem of one directory.
pub struct Need<'a> {
    /// The directory's role in messages: "app root", "state".
    pub role: &'static str,
    /// The directory.
    pub dir: &'a Dir,
    /// What will be written there, each with its estimate in bytes.
    pub parts: Vec<(String, u64)>,
}

/// Fails unless every filesystem has room, for unprivileged users, for what `needs` will
/// write there (needs on one filesystem added up); `what` names the work in the message.
/// Returns, per need, the space found.
pub fn ensure(what: &str, needs: &[Need<'_>]) -> anyhow::Result<Vec<Free>> {
    let found: Vec<Free> = needs.iter().map(|n| Free::of_dir(n.dir)).collect::<anyhow::Result<_>>()?;
    for (i, free) in found.iter().enumerate() {
        if found[..i].iter().any(|f| f.dev == free.dev) {
            continue;
        }
        let here: Vec<&Need> =
            needs.iter().zip(&found).filter(|(_, f)| f.dev == free.dev).map(|(n, _)| n).collect();
        let total: u64 = here.iter().flat_map(|n| &n.parts).map(|(_, bytes)| bytes).sum();
        if total <= free.bytes {
            continue;
        }
        let detail: Vec<String> = here
            .iter()
            .map(|n| {
                let parts: Vec<String> =
                    n.parts.iter().map(|(name, b)| format!("{name} {}", human(*b))).collect();
                format!("{} {}: {}", n.role, n.dir.path.display(), parts.join(", "))
            })
            .collect();
        bail!(
            "not enough space on {} for {what}: needs about {} ({}), {} available to unprivileged users; root's reserved blocks are not counted",
            free.mount.display(),
            human(total),
            detail.join("; "),
            human(free.bytes)
        );
    }
    Ok(found)
}

/// `; 0.3 MiB left on /home (app root), 12 GiB on /var (state)`, for each directory whose
/// filesystem can be measured (one filesystem named once, with its roles joined).
pub fn left_note(places: &[(&str, &Dir)]) -> String {
    let measured: Vec<(&str, Free)> =
        places.iter().filter_map(|(role, dir)| Free::of_dir(dir).ok().map(|f| (*role, f))).collect();
    render_left(&measured)
}

fn render_left(measured: &[(&str, Free)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (i, (_, free)) in measured.iter().enumerate() {
        if measured[..i].iter().any(|(_, f)| f.dev == free.dev) {
            continue;
        }
        let roles: Vec<&str> = measured.iter().filter(|(_, f)| f.dev == free.dev).map(|(r, _)| *r).collect();
        parts.push(format!("{} on {} ({})", human(free.bytes), free.mount.display(), roles.join(" and ")));
    }
    if parts.is_empty() {
        return String::new();
    }
    parts[0] = parts[0].replacen(" on ", " left on ", 1);
    format!("; {}", parts.join(", "))
}

/// ENOSPC or EDQUOT.
fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// An I/O error, or a whole error, with the note on space appended.
#[derive(Debug)]
struct Noted(String);

impl fmt::Display for Noted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Noted {}

fn is_noted(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<Noted>()
        || err.downcast_ref::<io::Error>().and_then(|e| e.get_ref()).is_some_and(|inner| inner.is::<Noted>())
}

/// Adds what is left on the filesystems of `places` ([`left_note`]) to an error a full disk may
/// explain: a child's failure (the note goes before the tail of its output, so the verdict's
/// first line has it) and an ENOSPC / EDQUOT error from the hook's own writes (at the end).
/// Any other error, or one already noted, is returned as it is.
pub fn annotate(err: anyhow::Error, places: &[(&str, &Dir)]) -> anyhow::Error {
    annotate_with(err, || left_note(places))
}

fn annotate_with(mut err: anyhow::Error, note: impl FnOnce() -> String) -> anyhow::Error {
    if let Some(child) = err.downcast_mut::<ChildFailed>() {
        if child.note.is_empty() {
            child.note = note();
        }
        return err;
    }
    if err.chain().any(is_noted) {
        return err;
    }
    if !err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(is_no_space)) {
        return err;
    }
    if let Some(io) = err.downcast_mut::<io::Error>().filter(|e| is_no_space(e)) {
        let original = std::mem::replace(io, io::Error::other("replaced"));
        let text = format!("{original}{}", note());
        *io = io::Error::new(original.kind(), Noted(text));
        return err;
    }
    // The I/O error sits inside another error type: the message as a whole gets the note.
    anyhow::Error::new(Noted(format!("{err:#}{}", note())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(bytes: u64, mount: &str, dev: u64) -> Free {
        Free { bytes, mount: mount.into(), dev }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(300 << 10), "0.3 MiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
        assert_eq!(human(51 << 20), "51 MiB");
        assert_eq!(human(12 << 30), "12 GiB");
    }

    #[test]
    fn the_note_names_each_filesystem_once() {
        let two = [("app root", free(300 << 10, "/home", 1)), ("state", free(12 << 30, "/var", 2))];
        assert_eq!(render_left(&two), "; 0.3 MiB left on /home (app root), 12 GiB on /var (state)");
        let one = [("app root", free(5 << 30, "/", 1)), ("state", free(5 << 30, "/", 1))];
        assert_eq!(render_left(&one), "; 5.0 GiB left on / (app root and state)");
        assert_eq!(render_left(&[]), "");
    }

    const NOTE: &str = "; 0 B left on /home (app root), 12 GiB on /var (state)";

    #[test]
    fn a_child_failure_gets_the_note_before_its_output() {
        let err = anyhow::Error::new(ChildFailed {
            message: "uv pip install exited with status 2".into(),
            note: String::new(),
            tail: "; last output (full log: /var/log):\n    error: No space left on device (os error 28)"
                .into(),
            ending: crate::child::Ending::Exited,
        })
        .context("python environment");
        let err = annotate_with(err, || NOTE.into());
        let text = format!("{err:#}");
        assert_eq!(
            text.lines().next().unwrap(),
            format!(
                "python environment: uv pip install exited with status 2{NOTE}; last output (full log: /var/log):"
            )
        );
        // Once only.
        let again = annotate_with(err, || "; twice".into());
        assert!(!format!("{again:#}").contains("twice"));
    }

    #[test]
    fn a_real_child_exiting_non_zero_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo 'OSError: [Errno 28] No space left on device' >&2; exit 120"]);
        let spawn = crate::child::Spawn {
            what: "pip install",
            ids: None,
            timeout: std::time::Duration::from_secs(20),
            log: &log,
        };
        let err = crate::child::run(cmd, spawn).unwrap_err();
        let state = Dir::open_trusted(dir.path()).unwrap();
        let text = format!("{:#}", annotate(err, &[("app root", &state), ("state", &state)]));
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("pip install exited with status 120; "), "{text}");
        assert!(first.contains(" left on ") && first.contains("(app root and state); last output"), "{text}");
        assert!(text.ends_with("No space left on device"), "{text}");
    }

    #[test]
    fn enospc_from_the_hooks_own_writes_is_noted_at_the_end() {
        let io = io::Error::from_raw_os_error(libc::ENOSPC);
        let err = anyhow::Error::new(io).context("cannot copy to /home/app/releases/x/app.py");
        let text = format!("{:#}", annotate_with(err, || NOTE.into()));
        assert!(
            text.starts_with("cannot copy to /home/app/releases/x/app.py: No space left on device"),
            "{text}"
        );
        assert!(text.ends_with(NOTE), "{text}");
        let quota = anyhow::Error::new(io::Error::from_raw_os_error(libc::EDQUOT)).context("cannot write");
        assert!(format!("{:#}", annotate_with(quota, || NOTE.into())).ends_with(NOTE));
        // Anything else is left alone.
        let other = anyhow::Error::new(io::Error::from_raw_os_error(libc::EACCES)).context("cannot write");
        assert!(!format!("{:#}", annotate_with(other, || NOTE.into())).contains("left on"));
    }

    #[test]
    fn a_need_past_what_is_available_names_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let at = Dir::open_trusted(dir.path()).unwrap();
        let err = ensure(
            "revision r-0",
            &[Need { role: "app root", dir: &at, parts: vec![("release".into(), u64::MAX / 2)] }],
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("not enough space on "), "{text}");
        assert!(text.contains(&format!("app root {}: release ", dir.path().display())), "{text}");
        assert!(
            text.ends_with("available to unprivileged users; root's reserved blocks are not counted"),
            "{text}"
        );
        let ok = ensure("revision r-0", &[Need { role: "app root", dir: &at, parts: vec![("x".into(), 1)] }]);
        assert_eq!(ok.unwrap().len(), 1);
    }
}
