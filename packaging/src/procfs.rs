//! `/proc/<pid>/stat`: the one parser of it, for the hook's process supervisor and socket holder
//! (pidfiles checked against the start time) and the rehearsal's cleanup.

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

#[cfg(test)]
mod tests {
    use super::ProcStat;

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
}
