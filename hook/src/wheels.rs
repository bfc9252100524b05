//! What goes into a venv and from where: the revision's own wheels (`dependencies: vendored`),
//! installed with no index by the bundled uv or, when the app user cannot run it, by the
//! interpreter's venv + pip; the interpreter's identity (real version, ABI, arch, libc), checked
//! against the wheels in BeforeInstall and recorded in the venv's marker so that a venv is reused
//! only by the interpreter that built it; and which uv the app user can actually run.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail, format_err};
use packaging::{
    Manifest,
    config::Release,
    layout,
    wheel::{Interpreter, Libc, WheelName},
};

use crate::users::Ids;

/// Prints what the interpreter is, on one line: implementation, full version, SOABI, machine,
/// C library. `-I -S`: no user site, no site-packages, no environment.
const PROBE: &str = "import os, platform, sys, sysconfig\n\
try:\n    libc = os.confstr('CS_GNU_LIBC_VERSION') or ''\nexcept (ValueError, OSError):\n    libc = ''\n\
if not libc:\n    name, ver = platform.libc_ver()\n    libc = (name + ' ' + ver) if name else 'unknown'\n\
print(sys.implementation.name, '%d.%d.%d' % sys.version_info[:3], sysconfig.get_config_var('SOABI') or 'none', platform.machine(), libc.replace(' ', '-'))";

/// An interpreter as it is on this host, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The probe's line: `cpython 3.11.2 cpython-311-x86_64-linux-gnu x86_64 glibc-2.36`.
    pub identity: String,
    /// What wheels must fit.
    pub interp: Interpreter,
}

/// Runs `python` (as `ids` when given) to learn its real version, ABI, arch and libc.
pub fn probe(python: &Path, ids: Option<Ids>) -> anyhow::Result<Probed> {
    let mut cmd = isolated(python, ids);
    cmd.args(["-I", "-S", "-c", PROBE]).env("LANG", "C.UTF-8");
    let (status, stdout, stderr) = run_captured(cmd, Duration::from_secs(30))
        .with_context(|| format!("cannot run the interpreter {}", python.display()))?;
    if !status {
        bail!("the interpreter {} failed to describe itself: {}", python.display(), stderr.trim());
    }
    let identity = stdout.trim().to_owned();
    parse_identity(&identity).map(|interp| Probed { identity: identity.clone(), interp }).ok_or_else(|| {
        format_err!("the interpreter {} describes itself as {identity:?}, not CPython 3", python.display())
    })
}

/// `cpython 3.11.2 cpython-311-x86_64-linux-gnu x86_64 glibc-2.36` -> the interpreter.
pub fn parse_identity(line: &str) -> Option<Interpreter> {
    let mut parts = line.split(' ');
    let (imp, version, soabi, machine, libc) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if imp != "cpython" {
        return None;
    }
    let mut v = version.split('.');
    let (major, minor): (u32, u32) = (v.next()?.parse().ok()?, v.next()?.parse().ok()?);
    // `cpython-311-x86_64-linux-gnu` -> cp311; `cpython-313t-...` -> cp313t.
    let abi = format!("cp{}", soabi.strip_prefix("cpython-")?.split('-').next()?);
    let arch = match machine {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        other => other,
    };
    let libc = libc.split_once('-').and_then(|(name, ver)| {
        let (a, b) = ver.split_once('.')?;
        let (a, b) = (a.parse().ok()?, b.split('.').next()?.parse().ok()?);
        match name {
            "glibc" => Some(Libc::Glibc(a, b)),
            "musl" => Some(Libc::Musl(a, b)),
            _ => None,
        }
    });
    Some(Interpreter { version: (major, minor), abi, arch: arch.to_owned(), libc })
}

/// `program` with nothing of the hook's environment but PATH, in `/`, its output piped, as
/// `ids` when given: for the short questions asked of an interpreter or a uv.
fn isolated(program: &Path, ids: Option<Ids>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ids) = ids {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    cmd
}

/// Bytes of a captured stream that are kept; the rest is read and dropped.
const CAPTURED: u64 = 64 << 10;

/// Runs `cmd` with piped stdout and stderr, killing it past `timeout`. Both pipes are drained
/// while it runs, so a child that writes more than a pipe holds finishes instead of waiting for
/// its timeout; the first [`CAPTURED`] bytes of each are kept.
fn run_captured(mut cmd: Command, timeout: Duration) -> anyhow::Result<(bool, String, String)> {
    let mut child = cmd.spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let Some(status) = crate::child::wait(&mut child, timeout, crate::util::interrupted)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("timed out after {}s or interrupted", timeout.as_secs());
    };
    let joined = |handle: std::thread::JoinHandle<String>| handle.join().unwrap_or_default();
    Ok((status.success(), joined(stdout), joined(stderr)))
}

/// Reads `pipe` to its end on a thread of its own; the thread's result is its first
/// [`CAPTURED`] bytes.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = (&mut pipe).take(CAPTURED).read_to_end(&mut kept);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// The wheels a revision ships, from its manifest.
pub fn shipped(manifest: &Manifest) -> Vec<&str> {
    let prefix = format!("{}/", layout::WHEELS);
    manifest.entries.iter().filter_map(|e| e.path.strip_prefix(&prefix)).collect()
}

/// BeforeInstall: every shipped wheel fits the instance's interpreter. The error names the
/// wheel, the tag that does not fit and the deploy.yaml key (or `--target`) to change.
pub fn check_fit(
    release: &Release,
    manifest: &Manifest,
    python: &Path,
    probed: &Probed,
) -> anyhow::Result<String> {
    let Some(target) = &release.wheels else { return Ok("no vendored wheels".into()) };
    let names = shipped(manifest);
    let interp = &probed.interp;
    for name in &names {
        let wheel = WheelName::parse(name).map_err(anyhow::Error::msg)?;
        if let Err(why) = wheel.fits(interp) {
            let fix = if interp.arch != release.arch {
                format!("bundle with --target {} for these instances", interp.arch)
            } else if interp.version != (3, target.python_version.as_str()[2..].parse().unwrap_or(0))
                || interp.abi != target.abi
            {
                format!(
                    "set python_version: \"{}.{}\" in deploy.yaml (or point python at a CPython {}), then bundle again",
                    interp.version.0, interp.version.1, target.python_version
                )
            } else {
                "set platform in deploy.yaml to this instance's libc (e.g. manylinux_2_17 for older glibc), then bundle again".into()
            };
            bail!(
                "the interpreter {} is {interp}, but the revision's wheels are for CPython {} ({}, {}): {name}: {why}; {fix}",
                python.display(),
                target.python_version,
                target.abi,
                target.platform
            );
        }
    }
    Ok(format!("{} wheels fit {interp}", names.len()))
}

/// Whether `ids` (the build identity, which runs the installers) can run `uv`: runs
/// `uv --version` as that user. The reason why not is what the fallback to pip says.
pub fn runnable_uv(uv: &Path, ids: Option<Ids>) -> Result<String, String> {
    let mut cmd = isolated(uv, ids);
    cmd.arg("--version");
    let who = match ids {
        Some(ids) => format!("uid {}", ids.uid),
        None => "this user".to_owned(),
    };
    match run_captured(cmd, Duration::from_secs(30)) {
        Ok((true, out, _)) => Ok(out.trim().to_owned()),
        Ok((false, _, err)) => Err(format!("{} --version failed as {who}: {}", uv.display(), err.trim())),
        Err(err) => Err(format!("{who} cannot run {}: {err:#}", uv.display())),
    }
}

/// Which uv to use for `installer` settings that allow it: the revision's `bin/uv` when it
/// ships one, else one on PATH; only if `ids` (the build identity) can run it. `Err` says why not.
pub fn pick_uv(archive: Option<&Path>, ids: Option<Ids>) -> Result<PathBuf, String> {
    let candidate = archive
        .map(|dir| dir.join(layout::UV))
        .filter(|p| p.is_file())
        .or_else(crate::venv::find_uv)
        .ok_or_else(|| "no uv in the revision, on PATH or in /usr/local/bin, /usr/bin".to_owned())?;
    runnable_uv(&candidate, ids).map(|_| candidate)
}

/// The marker's line recording the interpreter that built a venv.
pub fn marker_line(probed: &Probed) -> String {
    format!("interpreter={}\n", probed.identity)
}

/// The interpreter recorded in a venv's marker, if any.
pub fn recorded_identity(marker: &str) -> Option<&str> {
    marker.lines().find_map(|l| l.strip_prefix("interpreter="))
}

/// Arguments that make pip or uv install only from `wheels`, never an index, each file checked
/// against its `--hash` in the requirements.
pub fn offline_args(wheels: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["--no-index".into(), "--find-links".into()];
    args.push(wheels.into());
    args.push("--require-hashes".into());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_writes_more_than_a_pipe_holds_is_not_stuck() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "head -c 1000000 /dev/zero >&2; head -c 300000 /dev/zero; echo done >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Reading the pipes only after the child exits, this timed out: stderr's pipe was full.
        let (ok, stdout, stderr) = run_captured(cmd, Duration::from_secs(20)).unwrap();
        assert!(ok);
        assert_eq!((stdout.len(), stderr.len()), (CAPTURED as usize, CAPTURED as usize));
    }

    #[test]
    fn identities() {
        let i = parse_identity("cpython 3.11.2 cpython-311-x86_64-linux-gnu x86_64 glibc-2.36").unwrap();
        assert_eq!(i.version, (3, 11));
        assert_eq!(i.abi, "cp311");
        assert_eq!(i.libc, Some(Libc::Glibc(2, 36)));
        let t = parse_identity("cpython 3.13.1 cpython-313t-aarch64-linux-gnu aarch64 glibc-2.39.1").unwrap();
        assert_eq!(t.abi, "cp313t");
        assert_eq!(t.libc, Some(Libc::Glibc(2, 39)));
        assert_eq!(
            parse_identity("cpython 3.12.0 cpython-312-x86_64-linux-musl x86_64 unknown").unwrap().libc,
            None
        );
        assert!(parse_identity("pypy 3.10.0 pypy310 x86_64 glibc-2.36").is_none());
        assert!(parse_identity("garbage").is_none());
        assert_eq!(
            recorded_identity("installer=uv\ninterpreter=cpython 3.11.2 x\n"),
            Some("cpython 3.11.2 x")
        );
    }
}
