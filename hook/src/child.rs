//! Running child processes: as the app user, in a process group of their own, with a timeout,
//! stopped when the hook receives SIGTERM. Output goes to a log file; its tail is shown on failure.

use std::{
    fs,
    io::{BufRead, BufReader, Seek, SeekFrom},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::OpenOptionsExt,
            process::{CommandExt, ExitStatusExt},
        },
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{users::Ids, util::interrupted};

/// How a child runs.
pub struct Spawn<'a> {
    /// A short name for messages.
    pub what: &'a str,
    /// Drop to this user and group (only when the hook runs as root).
    pub ids: Option<Ids>,
    /// Seconds before the child's group is killed.
    pub timeout: Duration,
    /// Where its stdout and stderr go (appended).
    pub log: &'a Path,
}

/// A child that did not succeed: it exited non-zero, was killed, timed out or was stopped.
/// Shown as its message, a note (what is left on the disks, added by `space::annotate`), then
/// the tail of its output, so the first line of the error says what happened and why.
#[derive(Debug)]
pub struct ChildFailed {
    /// What failed and how: `uv pip install exited with status 2`.
    pub message: String,
    /// Empty, or `; 0.3 MiB left on ...`.
    pub note: String,
    /// Empty, or `; last output (full log: ...):` and its last lines.
    pub tail: String,
    /// Whether it ran to its end or was stopped.
    pub ending: Ending,
}

/// How a failed child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It ran to its end: a non-zero exit status or a signal it did not get from the hook.
    Exited,
    /// It ran out of time, and the hook killed it.
    TimedOut,
    /// The hook was interrupted by a signal, and killed it.
    Interrupted,
}

impl std::fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.message, self.note, self.tail)
    }
}

impl std::error::Error for ChildFailed {}

impl ChildFailed {
    fn error(message: String, ending: Ending, log: &Path, from: u64) -> anyhow::Error {
        anyhow::Error::new(ChildFailed { message, note: String::new(), tail: tail(log, from), ending })
    }
}

/// Time the hook keeps for its own work after its last child in an event: the switch, the
/// journal, prune.
pub const RESERVE: Duration = Duration::from_secs(10);

/// What is left of a lifecycle event's timeout. The agent kills the hook when the event's time
/// runs out, so no child may be given longer than what is left, whatever its own limit says.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    event: &'static str,
    secs: u32,
    end: Instant,
}

impl Budget {
    /// `event` may last `secs` seconds and has run for `elapsed`.
    pub fn new(event: &'static str, secs: u32, elapsed: Duration) -> Budget {
        let left = Duration::from_secs(secs.into()).saturating_sub(elapsed).saturating_sub(RESERVE);
        Budget { event, secs, end: Instant::now() + left }
    }

    /// Time left for children.
    pub fn left(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    fn spent(&self) -> String {
        format!(
            "{}'s timeout of {}s is spent ({}s kept for the switch and the journal); raise it in deploy.yaml timeouts",
            self.event,
            self.secs,
            RESERVE.as_secs()
        )
    }

    /// Runs `cmd` as [`run`] does, its timeout cut to what is left of the event.
    pub fn run(&self, cmd: Command, mut spawn: Spawn<'_>) -> anyhow::Result<()> {
        let left = self.left();
        if left.is_zero() {
            bail!("{} not started: {}", spawn.what, self.spent());
        }
        let cut = left < spawn.timeout;
        spawn.timeout = spawn.timeout.min(left);
        let result = run(cmd, spawn);
        match result {
            Err(err) if cut && self.left().is_zero() => Err(err.context(self.spent())),
            other => other,
        }
    }
}

/// Runs `cmd` to completion. Fails on a non-zero exit, a timeout or SIGTERM, showing the last
/// lines of its output.
pub fn run(mut cmd: Command, spawn: Spawn<'_>) -> anyhow::Result<()> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(spawn.log)
        .with_context(|| format!("cannot open {}", spawn.log.display()))?;
    let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    if let Some(ids) = spawn.ids {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    // A child never outlives a hook killed with SIGKILL: it would go on writing into a venv or
    // a release that the next run removes.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent {
                return Err(std::io::Error::other("the hook died while starting a child"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", spawn.what))?;
    let pgid = child.id() as libc::pid_t;
    let Some(status) = wait(&mut child, spawn.timeout, interrupted)? else {
        let (cause, ending) = if interrupted() {
            ("stopped: the hook was interrupted by a signal".to_owned(), Ending::Interrupted)
        } else {
            (format!("timed out after {}s", spawn.timeout.as_secs()), Ending::TimedOut)
        };
        kill_group(pgid, &mut child);
        return Err(ChildFailed::error(format!("{} {cause}", spawn.what), ending, spawn.log, start_offset));
    };
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_owned(),
    };
    Err(ChildFailed::error(format!("{} {how}", spawn.what), Ending::Exited, spawn.log, start_offset))
}

/// Waits for `child` to exit for at most `limit`, or until `stop` says so: `None` then, the
/// child still running. Sleeps on a pidfd where the kernel has one, so the hook wakes the moment
/// the child exits (a first deployment runs half a dozen short children: polling added tens of
/// milliseconds to each); polls with a growing pause where it does not (old kernels, qemu-user).
pub fn wait(
    child: &mut Child,
    limit: Duration,
    stop: impl Fn() -> bool,
) -> std::io::Result<Option<ExitStatus>> {
    let started = Instant::now();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1. The child is
    // ours and not yet reaped, so its pid cannot name another process.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as RawFd) });
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = limit.saturating_sub(started.elapsed());
        if stop() || left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                // At most 100 ms at a time, to notice `stop`; a signal ends the poll early (EINTR).
                let ms = left.min(Duration::from_millis(100)).as_millis() as libc::c_int + 1;
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// SIGTERM to the group, then SIGKILL after 5 s.
fn kill_group(pgid: libc::pid_t, child: &mut std::process::Child) {
    // SAFETY: plain syscalls on a process group we created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// The last lines the child wrote, indented, for an error message.
fn tail(log: &Path, from: u64) -> String {
    let Ok(mut file) = fs::File::open(log) else { return String::new() };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let last: Vec<&String> = lines.iter().rev().take(12).collect();
    if last.is_empty() {
        return String::new();
    }
    let mut out = format!("; last output (full log: {}):", log.display());
    for line in last.into_iter().rev() {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}
