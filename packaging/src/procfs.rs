//! `/proc/<pid>/stat`, and the process manager's pidfile that records a process by it: the one
//! parser of each, for the hook's process supervisor and socket holder (pidfiles checked against
//! the start time) and the rehearsal's cleanup.

use std::fs;

/// The fields of `/proc/<pid>/stat` that are used: state, process group, start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// One letter: R, S, D, Z, X…
    pub state: char,
    /// The process group.
    pub pgrp: i32,
    /// Start time, in clock ticks since boot, as text.
    pub start: String,
}

impl ProcStat {
    /// Parses the text of `/proc/<pid>/stat` (the command name may hold spaces and parentheses:
    /// the fields start after the last `)`).
    pub fn parse(stat: &str) -> Option<ProcStat> {
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.to_string(),
        })
    }

    /// `/proc/<pid>/stat`, or None when the process is gone (or the file unreadable).
    pub fn of(pid: i32) -> Option<ProcStat> {
        ProcStat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// True unless the process is a zombie or dead (state Z or X).
    pub fn is_live(&self) -> bool {
        !"ZX".contains(self.state)
    }
}

/// The process a pidfile of the hook names by its first two words, `PID START`: the process
/// manager's pidfile ([`ServicePid`]) and the socket holder's (`PID START FINGERPRINT`, in the
/// same state directory) both begin so, and the rehearsal's cleanup stops either by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidStart {
    /// The process.
    pub pid: i32,
    /// Its start time, as [`ProcStat::start`].
    pub start: String,
}

impl PidStart {
    /// Parses the first two words of a pidfile's text; returns them and the rest, trimmed.
    pub fn parse(text: &str) -> Option<(PidStart, &str)> {
        let mut words = text.trim().splitn(3, ' ');
        let pid = words.next()?.parse().ok()?;
        let start = words.next()?.to_owned();
        Some((PidStart { pid, start }, words.next().unwrap_or("").trim()))
    }

    /// True while the process it names runs with the recorded start time (not reused, not a
    /// zombie): never pid 1 or below.
    pub fn alive(&self) -> bool {
        self.pid > 1 && ProcStat::of(self.pid).is_some_and(|s| s.start == self.start && s.is_live())
    }
}

/// The process manager's pidfile ([`crate::layout::STATE_PIDFILE`]): one line,
/// `PID START UID EXE`, with the start time of [`ProcStat::start`], the real uid and the
/// executable's path (last: it may hold spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePid {
    /// The service's main process, the leader of its own process group.
    pub pid: i32,
    /// Its start time, as [`ProcStat::start`].
    pub start: String,
    /// Its real uid.
    pub uid: u32,
    /// Its executable, as `/proc/<pid>/exe` names it.
    pub exe: String,
}

impl ServicePid {
    /// What `/proc` says of `pid` now, or None when it is gone.
    pub fn of(pid: i32) -> Option<ServicePid> {
        Some(ServicePid { pid, start: ProcStat::of(pid)?.start, uid: proc_uid(pid)?, exe: proc_exe(pid)? })
    }

    /// Parses a pidfile's text.
    pub fn parse(text: &str) -> Option<ServicePid> {
        let (PidStart { pid, start }, rest) = PidStart::parse(text)?;
        let (uid, exe) = rest.split_once(' ')?;
        Some(ServicePid { pid, start, uid: uid.parse().ok()?, exe: exe.to_owned() })
    }

    /// The pidfile's text.
    pub fn render(&self) -> String {
        format!("{} {} {} {}\n", self.pid, self.start, self.uid, self.exe)
    }

    /// True while the process it names is the one it recorded (start time, uid, executable),
    /// alive, and the leader of its own group: never pid 1 or below.
    pub fn alive(&self) -> bool {
        self.pid > 1
            && ProcStat::of(self.pid)
                .is_some_and(|s| s.start == self.start && s.pgrp == self.pid && s.is_live())
            && proc_uid(self.pid) == Some(self.uid)
            && proc_exe(self.pid).as_deref() == Some(self.exe.as_str())
    }
}

/// The real uid of a process, from `/proc/<pid>/status`.
fn proc_uid(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

fn proc_exe(pid: i32) -> Option<String> {
    Some(fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{PidStart, ProcStat, ServicePid};

    #[test]
    fn the_fields_after_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 9876 0 0";
        assert_eq!(ProcStat::parse(stat), Some(ProcStat { state: 'S', pgrp: 42, start: "9876".into() }));
        assert!(ProcStat::parse(stat).unwrap().is_live());
        assert!(!ProcStat::parse(&stat.replace(") S", ") Z")).unwrap().is_live());
        assert_eq!(ProcStat::parse("42 (a) S 1 42"), None);
        assert_eq!(ProcStat::parse("42 a S"), None);
        let me = ProcStat::of(std::process::id() as i32).unwrap();
        assert!(me.is_live() && me.start.parse::<u64>().is_ok());
    }

    #[test]
    fn the_pidfile() {
        let t = ServicePid::parse("42 9876 1500 /usr/bin/python 3.12\n").unwrap();
        assert_eq!(
            (t.pid, t.start.as_str(), t.uid, t.exe.as_str()),
            (42, "9876", 1500, "/usr/bin/python 3.12")
        );
        assert_eq!(ServicePid::parse(&t.render()), Some(t.clone()));
        assert!(!ServicePid { pid: 1, ..t }.alive(), "pid 1 is never the service");
        assert_eq!(ServicePid::parse("1 2"), None);
        assert_eq!(ServicePid::parse("1 2 3"), None);
        let (holder, print) = PidStart::parse("42 9876 0123abcd\n").unwrap();
        assert_eq!((holder.pid, holder.start.as_str(), print), (42, "9876", "0123abcd"));
        assert!(!PidStart { pid: 1, start: "9876".into() }.alive(), "pid 1 is never ours");
        assert_eq!(PidStart::parse("x 2"), None);
        let me = ServicePid::of(std::process::id() as i32).unwrap();
        assert!(!me.exe.is_empty() && ServicePid::parse(&me.render()) == Some(me.clone()), "{me:?}");
        assert!(PidStart { pid: me.pid, start: me.start.clone() }.alive());
    }
}
