//! The `process` service manager: runs a unit's ExecStart as the unit's user, in a session of
//! its own, detached from the hook's stdout and stderr (the agent fails a hook whose children
//! keep them open), with a pidfile and a log file in the root-owned state directory.
//!
//! The pidfile is trusted only as far as the process it names still matches it: the same start
//! time, real uid and executable, and the leader of its own process group. Pid 1 and below are
//! never signalled, and a group is signalled only when its leader is the process started here.

use std::{
    ffi::OsString,
    fs,
    os::{
        fd::OwnedFd,
        unix::{fs::OpenOptionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use packaging::{
    layout,
    procfs::ServicePid,
    unit_file::{self, Entry},
};

use crate::{fsx, store::write_atomic, users, util::Log};

/// Where the supervisor keeps its files, and the sandbox root that unit paths live under.
pub struct Supervisor {
    /// `--root`.
    pub root: PathBuf,
    /// The state directory on the host (root-owned, 0700).
    pub state: PathBuf,
}

/// The parts of a unit the supervisor needs.
#[derive(Debug, Default, PartialEq)]
pub struct UnitSpec {
    /// ExecStart's words, unquoted.
    pub exec: Vec<String>,
    /// User=.
    pub user: Option<String>,
    /// Group=.
    pub group: Option<String>,
    /// WorkingDirectory=.
    pub working_directory: Option<String>,
    /// EnvironmentFile= (without a leading `-`), and whether it may be missing.
    pub environment_files: Vec<(String, bool)>,
    /// Environment= assignments.
    pub environment: Vec<(String, String)>,
    /// TimeoutStopSec=.
    pub stop_timeout: Option<u64>,
}

impl UnitSpec {
    /// Reads the `[Service]` keys the supervisor uses, through [`unit_file`].
    pub fn parse(text: &str) -> UnitSpec {
        let mut spec = UnitSpec::default();
        for Entry { key, value, .. } in unit_file::section(text, "Service") {
            match key.as_str() {
                "ExecStart" => spec.exec = unit_file::words(&value, true),
                "User" => spec.user = Some(value),
                "Group" => spec.group = Some(value),
                "WorkingDirectory" => spec.working_directory = Some(value.replace("%%", "%")),
                "EnvironmentFile" => {
                    let value = value.replace("%%", "%");
                    match value.strip_prefix('-') {
                        Some(path) => spec.environment_files.push((path.to_owned(), true)),
                        None => spec.environment_files.push((value, false)),
                    }
                }
                "Environment" => {
                    for word in unit_file::words(&value, false) {
                        if let Some((k, v)) = word.split_once('=') {
                            spec.environment.push((k.to_owned(), v.to_owned()));
                        }
                    }
                }
                "TimeoutStopSec" => spec.stop_timeout = value.parse().ok(),
                _ => {}
            }
        }
        spec
    }
}

impl Supervisor {
    fn pidfile(&self) -> PathBuf {
        self.state.join(layout::STATE_PIDFILE)
    }

    /// The log file the service writes to.
    pub fn log_file(&self) -> PathBuf {
        self.state.join("service.log")
    }

    fn host(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn tracked(&self) -> Option<ServicePid> {
        let text = fsx::read_trusted(&self.pidfile(), 4096).ok()?;
        ServicePid::parse(&String::from_utf8_lossy(&text)).filter(ServicePid::alive)
    }

    /// The running service's pid, checked against its recorded start time, uid and executable.
    pub fn running(&self) -> Option<i32> {
        self.tracked().map(|t| t.pid)
    }

    /// `active (pid N)` or `inactive`.
    pub fn state(&self) -> String {
        match self.running() {
            Some(pid) => format!("active (process {pid})"),
            None => "inactive".into(),
        }
    }

    /// Starts the unit's ExecStart; fails when it is already running.
    pub fn start(&self, unit_file: &Path, log: &Log) -> anyhow::Result<()> {
        self.start_with(unit_file, &[], log)
    }

    /// Starts the unit's ExecStart with `listen` as fd 3 onward (socket activation).
    pub fn start_with(&self, unit_file: &Path, listen: &[OwnedFd], log: &Log) -> anyhow::Result<()> {
        let text = fsx::read_trusted(unit_file, 1 << 20)?;
        let spec = UnitSpec::parse(&String::from_utf8_lossy(&text));
        let Some(program) = spec.exec.first() else { bail!("{}: no ExecStart", unit_file.display()) };
        let program_path = if program.starts_with('/') { self.host(program) } else { PathBuf::from(program) };
        let mut cmd = Command::new(&program_path);
        let mut env: Vec<(OsString, OsString)> =
            vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()), ("LANG".into(), "C.UTF-8".into())];
        for (file, optional) in &spec.environment_files {
            let path = self.host(file);
            match fsx::read_trusted(&path, 4 << 20) {
                Ok(text) => env.extend(
                    packaging::env_file::parse(&String::from_utf8_lossy(&text))
                        .into_iter()
                        .map(|(k, v)| (k.into(), v.into())),
                ),
                Err(_) if *optional && !path.exists() => {}
                Err(err) => return Err(err.context(format!("EnvironmentFile {file}"))),
            }
        }
        env.extend(spec.environment.iter().map(|(k, v)| (k.into(), v.into())));
        cmd.args(&spec.exec[1..]).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &spec.working_directory {
            // Like systemd: entered once, at start, so the process sees the physical path.
            let dir = fs::canonicalize(self.host(dir))
                .with_context(|| format!("WorkingDirectory {dir} does not exist"))?;
            cmd.current_dir(dir);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0
            && let Some(user) = &spec.user
        {
            let ids = users::resolve(&self.root, user, spec.group.as_deref().unwrap_or(user))?;
            cmd.uid(ids.uid).gid(ids.gid);
        }
        let log_file = self.log_file();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&log_file)
            .with_context(|| format!("cannot open {}", log_file.display()))?;
        if !out.metadata()?.is_file() {
            bail!("{} is not a regular file", log_file.display());
        }
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if !listen.is_empty() {
            crate::listen::pass_fds(&mut cmd, &program_path, &spec.exec[1..], &env, listen)?;
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {program}"))?;
        let pid = child.id() as i32;
        let tracked = ServicePid::of(pid).context("the service exited at once")?;
        write_atomic(&self.pidfile(), tracked.render().as_bytes(), 0o600)?;
        log.info(format!("started {program} as process {pid}; output in {}", log_file.display()));
        Ok(())
    }

    /// Stops the service as systemd's `KillMode=mixed` does: SIGTERM to the main process only
    /// (hypercorn then tells its workers to finish their requests; a worker that got SIGTERM
    /// itself would die at once), SIGKILL to what is left of its process group once it exits or
    /// after the unit's TimeoutStopSec (20 s when the unit has none or cannot be read).
    pub fn stop(&self, unit_file: &Path, log: &Log) -> anyhow::Result<()> {
        let Some(pid) = self.running() else {
            let _ = fs::remove_file(self.pidfile());
            return Ok(());
        };
        // `running` checked it: pid > 1, the leader of the group the supervisor created. Only
        // the main process gets SIGTERM, as with systemd's KillMode=mixed.
        // SAFETY: plain syscalls on that process and its group.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let grace = fsx::read_trusted(unit_file, 1 << 20)
            .ok()
            .and_then(|text| UnitSpec::parse(&String::from_utf8_lossy(&text)).stop_timeout);
        let grace = Duration::from_secs(grace.unwrap_or(20));
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.running().is_some() {
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.running() == Some(pid) {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            log.info(format!("process {pid} did not stop in {}s; killed it", grace.as_secs()));
        }
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        let _ = fs::remove_file(self.pidfile());
        log.info(format!("stopped process {pid}"));
        Ok(())
    }

    /// Stops, then starts. With a socket file next to the unit, the holder of its sockets keeps
    /// them open across the restart (started or re-bound first when needed).
    pub fn restart(&self, unit_file: &Path, log: &Log) -> anyhow::Result<()> {
        let socket_file = unit_file.with_extension("socket");
        let holder = crate::listen::Holder::new(&self.state, &self.root);
        if !socket_file.is_file() {
            self.stop(unit_file, log)?;
            holder.stop(&socket_file, log);
            return self.start(unit_file, log);
        }
        if !holder.is_current(&socket_file) {
            // The ports change hands: the service lets go of them first.
            self.stop(unit_file, log)?;
            holder.stop(&socket_file, log);
            holder.start(&socket_file, log)?;
        } else {
            self.stop(unit_file, log)?;
        }
        let fds = holder.fds()?;
        self.start_with(unit_file, &fds, log)
    }

    /// The last lines of the service's log (read from its end: it may be large).
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.log_file())
        else {
            return String::new();
        };
        fsx::tail(file, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_service_keys() {
        let spec = UnitSpec::parse(
            "[Service]\nUser=snake\nEnvironment=\"A=x y\" \"B=100%%\"\nEnvironmentFile=-/e\nTimeoutStopSec=15\n",
        );
        assert_eq!(spec.user.as_deref(), Some("snake"));
        assert_eq!(spec.environment, [("A".into(), "x y".into()), ("B".into(), "100%".into())]);
        assert_eq!(spec.environment_files, [("/e".to_owned(), true)]);
        assert_eq!(spec.stop_timeout, Some(15));
    }
}
