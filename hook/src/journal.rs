//! `journal.jsonl` in the state directory: the append-only record of deployments and release states, and the
//! only source of order (never file times).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
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

/// A line longer than this is skipped without being loaded: no record the hook writes comes
/// near it ([`Journal::append`] shortens long messages).
pub const MAX_LINE: usize = 64 * 1024;

/// Messages are cut to this many bytes when written, so every record fits in [`MAX_LINE`].
const MAX_MESSAGE: usize = 16 * 1024;

/// Past this size the journal is compacted ([`compact`]) by the next run that holds the lock.
pub const COMPACT_AT: u64 = 1 << 20;

/// A journal line that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub why: &'static str,
}

/// What reading the journal found: the records, oldest first, and the lines skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Every valid record, in file order.
    pub records: Vec<Record>,
    /// The first [`SKIPPED_KEPT`] lines that are not records.
    pub skipped: Vec<Skipped>,
    /// How many lines are not records, all told.
    pub skipped_total: usize,
}

/// Skipped lines remembered one by one; past that they are only counted, so a file of garbage
/// costs no memory.
pub const SKIPPED_KEPT: usize = 10;

impl Parsed {
    /// One warning for every skipped line, naming their numbers (the first ten), or `None`.
    pub fn warning(&self, file: &Path) -> Option<String> {
        let first = self.skipped.first()?;
        let mut lines: Vec<String> = self.skipped.iter().map(|s| s.line.to_string()).collect();
        if self.skipped_total > self.skipped.len() {
            lines.push(format!("and {} more", self.skipped_total - self.skipped.len()));
        }
        let plural = if self.skipped_total == 1 { "line" } else { "lines" };
        Some(format!(
            "{}: skipped {} {plural} that {} not records (line {}; the first: {}); status, rollback and prune go by the rest",
            file.display(),
            self.skipped_total,
            if self.skipped_total == 1 { "is" } else { "are" },
            lines.join(", "),
            first.why,
        ))
    }
}

/// Parses journal text from `reader` as bytes: every line that is not a valid record (not UTF-8,
/// not JSON, not a record, longer than [`MAX_LINE`], torn by a crash) is skipped and counted.
/// A long line is read past, never held in memory. Fails only when `reader` does.
pub fn parse(mut reader: impl BufRead) -> io::Result<Parsed> {
    let mut parsed = Parsed::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let mut too_long = false;
        let mut ended = false;
        let mut any = false;
        loop {
            let buf = match reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            any = true;
            let (chunk, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    ended = true;
                    (&buf[..i], i + 1)
                }
                None => (buf, buf.len()),
            };
            if !too_long {
                if line.len() + chunk.len() > MAX_LINE {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            reader.consume(used);
            if ended {
                break;
            }
        }
        if !any {
            return Ok(parsed);
        }
        number += 1;
        let why = if too_long {
            Some("longer than 64 KiB")
        } else if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match std::str::from_utf8(&line) {
                Err(_) => Some("not UTF-8"),
                Ok(text) => match serde_json::from_str::<Record>(text) {
                    Ok(record) => {
                        parsed.records.push(record);
                        None
                    }
                    Err(_) if !ended => Some("torn: the last line has no newline (a write was interrupted)"),
                    Err(_) => Some("not a journal record"),
                },
            }
        };
        if let Some(why) = why {
            parsed.skipped_total += 1;
            if parsed.skipped.len() < SKIPPED_KEPT {
                parsed.skipped.push(Skipped { line: number, why });
            }
        }
        if !ended {
            return Ok(parsed);
        }
    }
}

/// Records kept in full at the end of the journal, whatever they are.
const KEEP_TAIL: usize = 100;
/// Deployments remembered per revision (one record each).
const KEEP_DEPLOYMENTS: usize = 10;
/// Revisions whose last state is `pruned` or `failed` kept (besides the three most recently
/// live): prune keeps at most two failed or bad release directories, so older ones have none.
const KEEP_PRUNED: usize = 50;

/// The journal without the records nothing needs, in the same order. What status, rollback and
/// prune read from it stays the same: every revision's last state and time ([`states`], prune's
/// order), the order of [`live_history`], each revision's first time, last venv and last
/// message. Kept besides: the last [`KEEP_TAIL`] records, the last [`KEEP_DEPLOYMENTS`]
/// deployment ids of each revision. Pruned or failed revisions older than the last
/// [`KEEP_PRUNED`] of them go whole, unless among the three most recently live.
pub fn compact(records: &[Record]) -> Vec<Record> {
    let mut keep = vec![false; records.len()];
    let tail_start = records.len().saturating_sub(KEEP_TAIL);
    keep[tail_start..].iter_mut().for_each(|k| *k = true);
    let recent_live: BTreeSet<&str> = live_history(records).into_iter().take(3).collect();
    let state_of = states(records);
    let mut pruned_seen = 0;
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        first.entry(r.revision.as_str()).or_insert(i);
    }
    // Newest first, so "last" is the first one met.
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut deployments: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut dropped: BTreeSet<&str> = BTreeSet::new();
    for (i, r) in records.iter().enumerate().rev() {
        let rev = r.revision.as_str();
        if dropped.contains(rev) {
            keep[i] = false;
            continue;
        }
        if !seen.contains(&(rev, "any"))
            && i < tail_start
            && matches!(state_of.get(rev), Some(State::Pruned | State::Failed))
            && !recent_live.contains(rev)
        {
            // The most recent record of a pruned revision, or of one that failed to build (it
            // has no directory), older than the tail.
            pruned_seen += 1;
            if pruned_seen > KEEP_PRUNED {
                dropped.insert(rev);
                keep[i] = false;
                continue;
            }
        }
        let mut mark = |what: &'static str| {
            if seen.insert((rev, what)) {
                keep[i] = true;
            }
        };
        mark("any");
        if r.state == State::Live {
            mark("live");
        }
        if r.venv.is_some() {
            mark("venv");
        }
        if r.message.is_some() {
            mark("message");
        }
        let ids = deployments.entry(rev).or_default();
        if !ids.contains(&r.deployment_id.as_str()) && ids.len() < KEEP_DEPLOYMENTS {
            ids.push(&r.deployment_id);
            keep[i] = true;
        }
        if first.get(rev) == Some(&i) {
            keep[i] = true;
        }
    }
    records.iter().zip(keep).filter(|(_, k)| *k).map(|(r, _)| r.clone()).collect()
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

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record and every skipped line ([`parse`]); a missing file is an empty journal.
    pub fn load(&self) -> anyhow::Result<Parsed> {
        let Some(file) = self.dir.open_read(NAME)? else { return Ok(Parsed::default()) };
        parse(BufReader::new(file)).with_context(|| format!("cannot read {}", self.path.display()))
    }

    /// Every record, oldest first. Lines that are not records are skipped with one warning on
    /// stderr (stdout may be `status --json`), once per run however often the journal is read.
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        static WARNED: AtomicBool = AtomicBool::new(false);
        let parsed = self.load()?;
        if let Some(warning) = parsed.warning(&self.path)
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            eprintln!("deploy-hook: warning: {warning}");
        }
        Ok(parsed.records)
    }

    /// Appends `record` and fsyncs.
    pub fn append(&self, record: &Record) -> anyhow::Result<()> {
        let mut record = record.clone();
        if let Some(message) = &mut record.message
            && message.len() > MAX_MESSAGE
        {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        let mut file = self.dir.open_file(NAME, libc::O_RDWR | libc::O_APPEND | libc::O_CREAT, 0o600)?;
        // A torn line from a crash must not glue itself to this one.
        let len = file.metadata().with_context(|| format!("cannot read {}", self.path.display()))?.len();
        if len > 0 {
            let mut last = [0u8];
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut last, len - 1)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
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

    /// When the file is past [`COMPACT_AT`], replaces it atomically by its [`compact`] form
    /// (lines that are not records are dropped then). Call with the lock held: an append by
    /// another run between the read and the rename would be lost. Returns the bytes before and
    /// after, when it compacted.
    pub fn compact_if_large(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let Some(stat) = self.dir.stat_at(NAME)? else { return Ok(None) };
        let size = stat.st_size as u64;
        if size <= COMPACT_AT {
            return Ok(None);
        }
        let compacted = compact(&self.read()?);
        let mut text = String::new();
        for record in &compacted {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        self.dir.write_atomic(NAME, text.as_bytes(), 0o600, None)?;
        Ok(Some((size, text.len() as u64)))
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn rec(deployment_id: &str, revision: &str, event: &str, state: State) -> Record {
        let mut r = Record::new(deployment_id, revision, event, state);
        r.time = format!("t{revision}-{deployment_id}-{event}");
        r
    }

    fn line(r: &Record) -> Vec<u8> {
        let mut l = serde_json::to_vec(r).unwrap();
        l.push(b'\n');
        l
    }

    #[test]
    fn damaged_lines_are_skipped_and_named() {
        let (a, b) =
            (rec("d-A", "r-a", "AfterInstall", State::Live), rec("d-B", "r-b", "AfterInstall", State::Ready));
        let mut text = line(&a);
        text.extend_from_slice(b"{\"time\": \"\xff\"}\n");
        text.extend_from_slice(b"[1, 2]\n\n");
        text.extend(std::iter::repeat_n(b'{', MAX_LINE + 1));
        text.push(b'\n');
        text.extend(line(&b));
        text.extend_from_slice(b"{\"time\": \"2026-");
        let parsed = parse(text.as_slice()).unwrap();
        assert_eq!(parsed.records, vec![a, b]);
        let skipped: Vec<_> = parsed.skipped.iter().map(|s| (s.line, s.why)).collect();
        assert_eq!(
            skipped,
            [
                (2, "not UTF-8"),
                (3, "not a journal record"),
                (5, "longer than 64 KiB"),
                (7, "torn: the last line has no newline (a write was interrupted)"),
            ]
        );
        expect_test::expect![[r#"/srv/app/journal.jsonl: skipped 4 lines that are not records (line 2, 3, 5, 7; the first: not UTF-8); status, rollback and prune go by the rest"#]]
            .assert_eq(&parsed.warning(Path::new("/srv/app/journal.jsonl")).unwrap());
    }

    #[test]
    fn only_the_first_skipped_lines_are_kept_the_rest_counted() {
        let text = b"junk\n".repeat(25);
        let parsed = parse(text.as_slice()).unwrap();
        assert_eq!((parsed.skipped.len(), parsed.skipped_total), (SKIPPED_KEPT, 25));
        expect_test::expect!["j: skipped 25 lines that are not records (line 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, and 15 more; the first: not a journal record); status, rollback and prune go by the rest"]
            .assert_eq(&parsed.warning(Path::new("j")).unwrap());
    }

    /// A byte reader that hands out one byte at a time: a long line is never held whole.
    #[test]
    fn parsing_reads_in_any_chunks() {
        let r = rec("d-A", "r-a", "AfterInstall", State::Live);
        let mut text = line(&r);
        text.extend(std::iter::repeat_n(b'x', MAX_LINE * 2));
        text.push(b'\n');
        text.extend(line(&r));
        let reader = io::BufReader::with_capacity(1, text.as_slice());
        let parsed = parse(reader).unwrap();
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.skipped, vec![Skipped { line: 2, why: "longer than 64 KiB" }]);
        assert!(parse(&b""[..]).unwrap().records.is_empty());
    }

    #[test]
    fn a_journal_with_a_bad_byte_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&Dir::open_trusted(dir.path()).unwrap()).unwrap();
        journal.append(&rec("d-A", "r-a", "AfterInstall", State::Live)).unwrap();
        let mut bytes = fs::read(journal.path()).unwrap();
        bytes.extend_from_slice(b"\xff\xff\n");
        fs::write(journal.path(), bytes).unwrap();
        journal.append(&rec("d-B", "r-b", "AfterInstall", State::Live)).unwrap();
        let records = journal.read().unwrap();
        assert_eq!(live_history(&records), ["r-b", "r-a"]);
        assert_eq!(journal.load().unwrap().skipped_total, 1);
    }

    #[test]
    fn long_messages_are_cut_to_fit_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&Dir::open_trusted(dir.path()).unwrap()).unwrap();
        let long = "é".repeat(MAX_LINE);
        journal.append(&rec("d-A", "r-a", "AfterInstall", State::Failed).message(long)).unwrap();
        let parsed = journal.load().unwrap();
        assert!(parsed.skipped.is_empty());
        assert!(parsed.records[0].message.as_deref().unwrap().ends_with(" [cut]"));
    }

    /// A long, varied history: flips, failures, bad releases, prunes, many redeploys.
    fn history(n: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut seed = 0x2545_f491_u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for i in 0..n {
            let rev = format!("r-{:03}", next(400));
            let dep = format!("d-{i:05}");
            let state = [State::Ready, State::Live, State::Live, State::Failed, State::Bad, State::Pruned]
                [next(6) as usize];
            let mut r = rec(&dep, &rev, "AfterInstall", state);
            if next(3) == 0 {
                r.venv = Some(format!("v-{}", next(5)));
            }
            if next(4) == 0 {
                r = r.message(format!("m{i}"));
            }
            out.push(r);
        }
        out
    }

    /// What status shows per revision.
    fn status_view(records: &[Record]) -> BTreeMap<String, (String, String, Option<String>, Option<String>)> {
        let mut out: BTreeMap<String, (String, String, Option<String>, Option<String>)> = BTreeMap::new();
        for r in records {
            let e = out.entry(r.revision.clone()).or_insert((r.time.clone(), String::new(), None, None));
            e.1 = r.time.clone();
            if r.venv.is_some() {
                e.2 = r.venv.clone();
            }
            if r.message.is_some() {
                e.3 = r.message.clone();
            }
        }
        out
    }

    fn prune_order(records: &[Record]) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::new();
        for r in records.iter().rev() {
            if !order.contains(&r.revision.as_str()) {
                order.push(&r.revision);
            }
        }
        order
    }

    #[test]
    fn compaction_keeps_what_status_rollback_and_prune_read() {
        let all = history(20_000);
        let small = compact(&all);
        assert!(small.len() < all.len() / 4, "{} of {}", small.len(), all.len());
        assert_eq!(compact(&small), small, "compaction is idempotent");
        let kept: BTreeSet<&str> = small.iter().map(|r| r.revision.as_str()).collect();
        let gone = |rev: &&str| !kept.contains(rev);
        assert!(kept.len() < states(&all).len(), "old pruned revisions are dropped");
        // Revisions dropped whole are old pruned ones, never among the three last live.
        let live = live_history(&all);
        assert!(live.iter().take(3).all(|r| kept.contains(r)));
        for (rev, state) in states(&all) {
            assert!(kept.contains(rev) || matches!(state, State::Pruned | State::Failed), "{rev} {state:?}");
        }
        let states_all: BTreeMap<&str, State> =
            states(&all).into_iter().filter(|(r, _)| kept.contains(r)).collect();
        assert_eq!(states(&small), states_all);
        let live_all: Vec<&str> = live.into_iter().filter(|r| !gone(r)).collect();
        assert_eq!(live_history(&small), live_all);
        let order_all: Vec<&str> = prune_order(&all).into_iter().filter(|r| !gone(r)).collect();
        assert_eq!(prune_order(&small), order_all);
        let view_all: BTreeMap<_, _> =
            status_view(&all).into_iter().filter(|(r, _)| kept.contains(r.as_str())).collect();
        assert_eq!(status_view(&small), view_all);
        assert_eq!(small[small.len() - KEEP_TAIL..], all[all.len() - KEEP_TAIL..]);
    }

    #[test]
    fn a_large_journal_is_replaced_by_its_compact_form() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&Dir::open_trusted(dir.path()).unwrap()).unwrap();
        assert_eq!(journal.compact_if_large().unwrap(), None);
        let all = history(20_000);
        let mut text: Vec<u8> = all.iter().flat_map(line).collect();
        text.extend_from_slice(b"\xff\n");
        assert!(text.len() as u64 > COMPACT_AT);
        fs::write(journal.path(), &text).unwrap();
        let (before, after) = journal.compact_if_large().unwrap().unwrap();
        assert_eq!(before, text.len() as u64);
        assert_eq!(after, fs::metadata(journal.path()).unwrap().len());
        let parsed = journal.load().unwrap();
        assert!(parsed.skipped.is_empty());
        assert_eq!(parsed.records, compact(&all));
        assert_eq!(journal.compact_if_large().unwrap(), None, "small enough now");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["journal.jsonl"], "no temporary file left");
    }
}
