//! `journal.jsonl` in the state directory: the append-only record of deployments and release states, and the
//! only source of order (never file times).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsx::Dir;

/// A release's state, as the last record for its revision says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Built and checked; not (yet) live.
    Ready,
    /// `current` points at it.
    Live,
    /// Building it failed; it never went live.
    Failed,
    /// It went live and failed its health check, or was marked bad by hand.
    Bad,
    /// Removed by pruning.
    Pruned,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC.
    pub time: String,
    /// The CodeDeploy deployment id, or `manual` for commands run by hand.
    pub deployment_id: String,
    /// The release's revision id.
    pub revision: String,
    /// The lifecycle event or command.
    pub event: String,
    /// The release's new state.
    pub state: State,
    /// Seconds per step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, f64>,
    /// The venv the release uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venv: Option<String>,
    /// Why, for failures and flips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Record {
    /// A record stamped now, with no steps, venv or message.
    pub fn new(deployment_id: &str, revision: &str, event: &str, state: State) -> Record {
        Record {
            time: crate::util::now(),
            deployment_id: deployment_id.to_owned(),
            revision: revision.to_owned(),
            event: event.to_owned(),
            state,
            steps: BTreeMap::new(),
            venv: None,
            message: None,
        }
    }

    /// With a message.
    pub fn message(mut self, message: impl Into<String>) -> Record {
        self.message = Some(message.into());
        self
    }
}

/// The journal file.
pub struct Journal {
    dir: Dir,
    path: PathBuf,
}

/// The journal's name in the state directory.
const NAME: &str = "journal.jsonl";

impl Journal {
    /// The journal in the state directory `state`.
    pub fn new(state: &Dir) -> anyhow::Result<Journal> {
        Ok(Journal { dir: state.try_clone()?, path: state.path.join(NAME) })
    }

    /// Every record, oldest first. A torn last line (a crash mid-write) is skipped.
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        let Some(file) = self.dir.open_read(NAME)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("cannot read {}", self.path.display()))?;
            if let Ok(record) = serde_json::from_str(&line) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Appends `record` and fsyncs.
    pub fn append(&self, record: &Record) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut file = self.dir.open_file(NAME, libc::O_RDWR | libc::O_APPEND | libc::O_CREAT, 0o600)?;
        // A torn line from a crash must not glue itself to this one.
        if file.metadata()?.len() > 0 {
            let mut last = [0u8];
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut last, file.metadata()?.len() - 1)?;
            if last[0] != b'\n' {
                line.insert(0, '\n');
            }
        }
        let mut bytes = line.as_bytes();
        if crate::util::failpoint_armed("journal: mid append") {
            // Crash testing: half a line written, then a kill, as a torn write leaves it.
            let (head, tail) = bytes.split_at(bytes.len() / 2);
            file.write_all(head)?;
            file.sync_all()?;
            crate::util::failpoint("journal: mid append");
            bytes = tail;
        }
        file.write_all(bytes).with_context(|| format!("cannot write {}", self.path.display()))?;
        file.sync_all().with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

/// The last state of each revision.
pub fn states(records: &[Record]) -> BTreeMap<&str, State> {
    let mut out = BTreeMap::new();
    for r in records {
        out.insert(r.revision.as_str(), r.state);
    }
    out
}

/// Revisions that went live, most recent first, without repeats.
pub fn live_history(records: &[Record]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for r in records.iter().rev().filter(|r| r.state == State::Live) {
        if !out.contains(&r.revision.as_str()) {
            out.push(&r.revision);
        }
    }
    out
}
