//! Pruning: keep `keep_releases` good releases by journal order, never the current or the
//! previous one; failed and bad releases never push good ones out (the last two are kept for
//! forensics); venvs no remaining release uses are removed.

use std::{collections::BTreeSet, fs};

use crate::{
    journal::{Journal, Record, State, live_history, states},
    store::{STAGING_PREFIX, Store},
    util::Log,
};

/// Bad or failed release directories kept for forensics.
const KEEP_BAD: usize = 2;

/// Prunes the store; returns the revisions removed.
pub fn prune(store: &Store, journal: &Journal, keep: u32, log: &Log) -> anyhow::Result<Vec<String>> {
    let records = journal.read()?;
    let state_of = states(&records);
    let current = store.current_revision();
    let previous =
        live_history(&records).into_iter().find(|r| Some(*r) != current.as_deref()).map(str::to_owned);
    // Most recent record first decides the order.
    let mut order: Vec<&str> = Vec::new();
    for r in records.iter().rev() {
        if !order.contains(&r.revision.as_str()) {
            order.push(&r.revision);
        }
    }
    let on_disk = |rev: &&str| store.release(rev).is_dir();
    let good: Vec<&str> = order
        .iter()
        .copied()
        .filter(|r| matches!(state_of.get(r), Some(State::Ready | State::Live)))
        .filter(on_disk)
        .collect();
    let bad: Vec<&str> = order
        .iter()
        .copied()
        .filter(|r| matches!(state_of.get(r), Some(State::Failed | State::Bad)))
        .filter(on_disk)
        .collect();
    let mut protect: BTreeSet<&str> = good.iter().copied().take(keep as usize).collect();
    protect.extend(current.as_deref());
    protect.extend(previous.as_deref());
    protect.extend(bad.iter().copied().take(KEEP_BAD));
    let mut removed = Vec::new();
    for rev in good.iter().chain(bad.iter()).copied().filter(|r| !protect.contains(r)) {
        fs::remove_dir_all(store.release(rev))?;
        journal.append(&Record::new("prune", rev, "Prune", State::Pruned))?;
        log.info(format!("pruned release {rev}"));
        removed.push(rev.to_owned());
    }
    // Venvs still linked from any release directory (ours, legacy or unknown) stay.
    let mut used = BTreeSet::new();
    for entry in fs::read_dir(store.releases())? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        if let Ok(target) = fs::read_link(entry.path().join(".venv"))
            && let Some(name) = target.file_name()
        {
            used.insert(name.to_os_string());
        }
    }
    for entry in fs::read_dir(store.venvs())? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && !used.contains(&entry.file_name()) {
            fs::remove_dir_all(entry.path())?;
            log.info(format!("removed the unused venv {}", entry.file_name().to_string_lossy()));
        }
    }
    Ok(removed)
}
