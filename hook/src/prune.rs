//! Pruning: keep `keep_releases` good releases by journal order, never the current or the
//! previous one; failed and bad releases never push good ones out (the last two are kept for
//! forensics); venvs no remaining release uses are removed.
//!
//! Removal is atomic from a reader's view: a release is first renamed to a `.tmp-pruned-` name
//! (which the next run's cleanup removes), that is recorded, and only then deleted; a venv loses
//! its completion marker before anything else. A kill at any point leaves no half-deleted
//! release under its revision name and no half-deleted venv that looks complete.

use std::collections::BTreeSet;

use crate::{
    journal::{Journal, Record, State, live_history, states},
    store::{STAGING_PREFIX, Store, VENV_COMPLETE, is_revision},
    util::{Log, failpoint},
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
    // Only revision ids become paths: a forged record names nothing outside `releases/`.
    let on_disk = |rev: &&str| is_revision(rev) && store.has_release(rev);
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
    let releases = store.dir.sub_owned("releases", store.me.uid)?;
    let copies = store.state.sub_owned("releases", store.me.uid)?;
    for rev in good.iter().chain(bad.iter()).copied().filter(|r| !protect.contains(r)) {
        let trash = format!("{STAGING_PREFIX}pruned-{rev}");
        releases.remove(&trash)?;
        releases.rename(rev, &releases, &trash)?;
        releases.fsync()?;
        failpoint("prune: release invalidated");
        journal.append(&Record::new("prune", rev, "Prune", State::Pruned))?;
        failpoint("prune: release recorded");
        copies.remove(rev)?;
        releases.remove(&trash)?;
        failpoint("prune: release removed");
        log.info(format!("pruned release {rev}"));
        removed.push(rev.to_owned());
    }
    // Venvs still linked from any release directory (ours, legacy or unknown) stay.
    let mut used = BTreeSet::new();
    for name in releases.names()? {
        if name.starts_with(STAGING_PREFIX) {
            continue;
        }
        if let Ok(release) = releases.sub(&name)
            && let Some(target) = release.readlink(".venv")
            && let Some(key) = target.rsplit('/').next()
        {
            used.insert(key.to_owned());
        }
    }
    let venvs = store.dir.sub_owned("venvs", store.me.uid)?;
    for name in venvs.names()? {
        if !used.contains(&name) {
            if let Ok(venv) = venvs.sub_owned(&name, store.me.uid) {
                venv.remove(VENV_COMPLETE)?;
                venv.fsync()?;
            }
            failpoint("prune: venv invalidated");
            venvs.remove(&name)?;
            failpoint("prune: venv removed");
            log.info(format!("removed the unused venv {name}"));
        }
    }
    Ok(removed)
}
