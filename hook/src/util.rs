//! Small pieces every step uses: time stamps, the step logger, fsync, interruption by SIGTERM.

use std::{
    fs, io,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// `YYYY-MM-DDTHH:MM:SSZ` for a time since the epoch (UTC, civil calendar).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, as [`rfc3339`].
pub fn now() -> String {
    rfc3339(SystemTime::now())
}

/// Prints one time-stamped line per step, with its duration, on stdout, the stream the verdict
/// goes to last: the agent reads stdout and stderr in two threads and does not keep their order.
pub struct Log {
    prefix: &'static str,
    started: Instant,
    /// Name and seconds of every finished step, for the journal.
    pub steps: Vec<(String, f64)>,
}

impl Log {
    /// A logger whose lines start with `prefix` (the event's command name).
    pub fn new(prefix: &'static str) -> Log {
        Log { prefix, started: Instant::now(), steps: Vec::new() }
    }

    /// A line with no duration.
    pub fn info(&self, message: impl AsRef<str>) {
        println!("{} {}: {}", now(), self.prefix, message.as_ref());
    }

    /// Runs `f` as the step `name`, logging its outcome and duration.
    pub fn step<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Log) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        failpoint(name);
        check_interrupted()?;
        let start = Instant::now();
        let res = f(self);
        let secs = start.elapsed().as_secs_f64();
        match &res {
            Ok(_) => println!("{} {}: {name} ok ({secs:.2}s)", now(), self.prefix),
            Err(err) => println!("{} {}: {name} failed ({secs:.2}s): {err:#}", now(), self.prefix),
        }
        self.steps.push((name.to_owned(), (secs * 1000.0).round() / 1000.0));
        res
    }

    /// Seconds since the logger was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Crash testing: when `DEPLOY_HOOK_FAILPOINT` names this step (or this point inside a step),
/// the hook kills itself with SIGKILL there, exactly as `kill -9` would. Tests use it to prove
/// that every step boundary, and every point between two writes inside a step, is a safe place
/// to die.
pub fn failpoint(step: &str) {
    if failpoint_armed(step) {
        // SAFETY: raising a signal has no preconditions.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// True when `DEPLOY_HOOK_FAILPOINT` names `point`: for a failpoint that needs work done
/// differently to exist (a write split in two).
pub fn failpoint_armed(point: &str) -> bool {
    std::env::var("DEPLOY_HOOK_FAILPOINT").is_ok_and(|it| it == point)
}

/// fsyncs a directory, so a rename or a new entry in it survives a power loss.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGTERM and SIGINT into a flag that steps and child waits poll, so the hook can stop
/// its children, remove what it staged and exit non-zero instead of dying mid-write.
pub fn install_signal_handlers() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// True once SIGTERM or SIGINT arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when SIGTERM or SIGINT arrived.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted by a signal (the agent's timeout sends SIGTERM)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
    }
}
