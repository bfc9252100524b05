//! The other lifecycle events (ApplicationStop, BeforeInstall, ApplicationStart,
//! ValidateService) and the commands run outside CodeDeploy (status, rollback, prune).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, bail, format_err};
use packaging::{Manifest, config::Release};
use serde::Serialize;

use crate::{
    context::{Ctx, Revision},
    health,
    journal::{Journal, Record, State, live_history, states},
    prune,
    space::{self, human},
    store::{Lock, READ_CAP, Store, VENV_COMPLETE, is_revision, lock_wait},
    unit, users,
    util::{Log, now},
    wheels,
};

/// Slack on top of what a deployment writes, for the preflight (AfterInstall checks again, with
/// `space::MARGIN`, right before it writes).
const SPACE_MARGIN: u64 = 100 << 20;

/// ApplicationStop, run from the *previous* revision's archive. Never fails a deployment: a
/// broken stop would wedge every later one. Stops the service only when configured to.
pub fn application_stop(ctx: &Ctx, revision: &Revision, log: &Log) -> String {
    let release = &revision.release;
    let res = (|| -> anyhow::Result<String> {
        let store = Store::open(&ctx.root, release)?;
        let service = ctx.service(release, &store);
        if !service.exists() {
            return Ok(format!("application-stop ok: {} is not installed, nothing to stop", release.unit));
        }
        if !release.stop_on_application_stop {
            return Ok(format!(
                "application-stop ok: {} keeps serving until ApplicationStart restarts it (service.stop_on_application_stop is false)",
                release.unit
            ));
        }
        service.stop(log)?;
        Ok(format!("application-stop ok: {} stopped", release.unit))
    })();
    res.unwrap_or_else(|err| {
        format!("application-stop ok, with a warning (a failed stop must not block deployments): {err:#}")
    })
}

/// BeforeInstall: preflight (user, group, interpreter, free space, lock) and removal of what
/// crashed runs left.
pub fn before_install(ctx: &Ctx, revision: &Revision, log: &mut Log) -> anyhow::Result<String> {
    let release = &revision.release;
    // Before anything is written: release.yaml names the app root this cleans.
    log.step("verify revision", |_| revision.verify())?;
    let ids = log.step("user and group", |_| {
        users::resolve(&ctx.root, release.user.as_str(), release.group.as_str())
    })?;
    log.step("interpreter", |_| {
        let python = Path::new(release.python.as_str());
        if !python.is_file() {
            bail!("the interpreter {python} does not exist (deploy.yaml python); install it (Debian: apt-get install python3 python3-venv)", python = python.display());
        }
        Ok(())
    })?;
    let store = Store::open(&ctx.root, release)?;
    if release.wheels.is_some() {
        log.step("wheels fit the interpreter", |log| {
            let python = Path::new(release.python.as_str());
            let probed = wheels::probe(python, store.owner.map(|_| store.builder))?;
            let manifest = Manifest::parse(&revision.manifest_text)?;
            log.info(wheels::check_fit(release, &manifest, python, &probed)?);
            Ok(())
        })?;
    }
    let (free, need) = log.step("free space", |_| {
        let manifest = Manifest::parse(&revision.manifest_text)?;
        let files: u64 = manifest.entries.iter().map(|e| e.size).sum();
        let venv_ready = store.venvs().join(&release.venv_key).join(VENV_COMPLETE).is_file();
        let venv = if venv_ready { 0 } else { space::venv_need(space::wheel_bytes(release, &manifest)) };
        let need = files + venv + SPACE_MARGIN;
        let free = space::Free::of_path(&store.app_root)?;
        if free.bytes < need {
            bail!(
                "not enough space on {} for revision {}: needs about {} (release {}, venv {}, margin {}), {} available to unprivileged users; root's reserved blocks are not counted",
                free.mount.display(),
                revision.id,
                human(need),
                human(files),
                if venv_ready { "reused".into() } else { human(venv) },
                human(SPACE_MARGIN),
                human(free.bytes)
            );
        }
        Ok((free.bytes, need))
    })?;
    let mut cleaned = 0;
    let holder = format!("pid {} (BeforeInstall, since {})", std::process::id(), now());
    match Lock::acquire(&store, &holder, Duration::ZERO, &|_| {}) {
        Ok(_lock) => {
            log.step("prepare app root", |log| store.ensure_layout(&|m| log.info(m)))?;
            log.step("clean unfinished", |log| {
                for path in store.clean_unfinished()? {
                    log.info(format!("removed {path}, left by an interrupted run"));
                    cleaned += 1;
                }
                Ok(())
            })?;
        }
        Err(err) => {
            log.info(format!("{err:#}; a held flock means a live holder, and AfterInstall will wait for it"))
        }
    }
    Ok(format!(
        "before-install ok: user {} ({}:{}), {} present, {} free (needs about {}), {cleaned} unfinished removed",
        release.user,
        ids.uid,
        ids.gid,
        release.python,
        human(free),
        human(need)
    ))
}

/// ApplicationStart: enable the unit when it is not, then restart it.
pub fn application_start(ctx: &Ctx, revision: &Revision, log: &mut Log) -> anyhow::Result<String> {
    let release = &revision.release;
    let store = Store::open(&ctx.root, release)?;
    let service = ctx.service(release, &store);
    if !service.exists() {
        bail!("{} is not installed in {}; did AfterInstall run?", release.unit, service.unit_file.display());
    }
    let enabled = log.step("enable", |log| service.enable(log))?;
    log.step("restart", |log| service.restart(log))?;
    let current = store.current_revision().unwrap_or_else(|| "none".into());
    Ok(format!(
        "application-start ok: {} {}restarted, serving {current}",
        release.unit,
        if enabled { "enabled and " } else { "" }
    ))
}

/// The release config of a release, from its root-owned copy (never the release directory).
fn release_of(store: &Store, revision: &str) -> anyhow::Result<Release> {
    let copies = store.copies(revision).with_context(|| {
        format!("{revision} has no root-owned copy of its release.yaml and unit; deploy it again instead")
    })?;
    let path = copies.path.join("release.yaml");
    let text =
        copies.read("release.yaml", READ_CAP)?.with_context(|| format!("{} is missing", path.display()))?;
    Ok(Release::parse(&path, &String::from_utf8_lossy(&text))?)
}

/// Installs the unit (and socket unit) of the release `target` from its root-owned copies.
pub(crate) fn install_unit_of(ctx: &Ctx, store: &Store, target: &str, log: &Log) -> anyhow::Result<bool> {
    let release = release_of(store, target)?;
    let service = ctx.service(&release, store);
    let copies = store.copies(target)?;
    let wanted = copies
        .read(release.unit.as_str(), READ_CAP)?
        .with_context(|| format!("{} has no copy of {}", copies.path.display(), release.unit))?;
    let socket = match release.socket_unit() {
        Some(socket) => Some(
            copies
                .read(&socket, READ_CAP)?
                .with_context(|| format!("{} has no copy of {socket}", copies.path.display()))?,
        ),
        None => None,
    };
    unit::install(&service, &wanted, socket.as_deref(), log)
}

/// Installs `target`'s unit, points `current` at it, restarts and checks it. Every switch is
/// recorded the moment `current` moves (`live`, as `record` says), and a restart or health
/// check that then fails is recorded too (`bad`, naming that `current` is on it), so the journal
/// always names what is live.
fn switch_to(
    ctx: &Ctx,
    store: &Store,
    target: &str,
    journal: &Journal,
    record: Record,
    log: &mut Log,
) -> anyhow::Result<()> {
    let release = release_of(store, target)?;
    let service = ctx.service(&release, store);
    let before = store.current_revision();
    log.step("install unit", |log| install_unit_of(ctx, store, target, log))?;
    log.step("switch current", |log| store.switch_current(target, &|m| log.info(m)))?;
    let (deployment_id, event) = (record.deployment_id.clone(), record.event.clone());
    if let Err(err) = journal.append(&record) {
        // Unrecorded, the switch is undone: the journal and `current` must agree.
        let Some(before) = before.filter(|b| b != target) else { return Err(err) };
        return Err(match install_unit_of(ctx, store, &before, log)
            .and_then(|_| store.switch_current(&before, &|m| log.info(m)))
        {
            Ok(_) => err.context(format!("cannot record {target} as live; current is back on {before}")),
            Err(back) => err.context(format!(
                "cannot record {target} as live, and going back failed too ({back:#}); current is on {target}"
            )),
        });
    }
    let checked = log
        .step("restart", |log| service.restart(log))
        .and_then(|()| log.step("health check", |log| health::wait_healthy(&release.health, log)).map(drop));
    if let Err(err) = &checked {
        journal.append(
            &Record::new(&deployment_id, target, &event, State::Bad)
                .message(format!("{err:#}; current is on {target}")),
        )?;
    }
    checked
}

/// The newest release that went live, is good and is on disk, other than `not`.
fn previous_good(store: &Store, records: &[Record], not: &str) -> Option<String> {
    let state_of = states(records);
    live_history(records)
        .into_iter()
        .filter(|r| *r != not)
        .find(|r| matches!(state_of.get(r), Some(State::Ready | State::Live)) && store.has_release(r))
        .map(str::to_owned)
}

/// ValidateService: poll the health URL; on failure show the service's log, go back to the
/// previous good release, restart and check it, mark this one bad, and fail.
pub fn validate_service(
    ctx: &Ctx,
    revision: &Revision,
    deployment_id: &str,
    log: &mut Log,
) -> anyhow::Result<String> {
    let release = &revision.release;
    let store = Store::open(&ctx.root, release)?;
    let service = ctx.service(release, &store);
    let journal = Journal::new(&store.state)?;
    // Held from before `current` is read until the verdict is journaled: a rollback or a
    // compaction between the health check and the record would make it name the wrong release
    // or land in a replaced file.
    let holder =
        format!("pid {} (deployment {deployment_id}, ValidateService, since {})", std::process::id(), now());
    let _lock = Lock::acquire(&store, &holder, lock_wait(), &|m| log.info(m))?;
    let current = store.current_revision().context("current points at no release; did AfterInstall run?")?;
    let cause = match log.step("health check", |log| health::wait_healthy(&release.health, log)) {
        Ok(_) => {
            journal.append(
                &Record::new(deployment_id, &current, "ValidateService", State::Live).message("healthy"),
            )?;
            return Ok(format!(
                "validate-service ok: {} healthy, revision {current} (deployment {deployment_id})",
                release.health.url
            ));
        }
        Err(err) => format!("{err:#}"),
    };
    log.info(format!("the service's last log lines ({}):", service.state()));
    for line in service.log_tail(30).lines() {
        println!("    {line}");
    }
    let records = journal.read()?;
    journal.append(
        &Record::new(deployment_id, &current, "ValidateService", State::Bad).message(cause.clone()),
    )?;
    let Some(previous) = previous_good(&store, &records, &current) else {
        bail!("{cause}; {current} marked bad, and there is no previous good release to return to");
    };
    log.info(format!("returning to {previous}"));
    let record = Record::new(deployment_id, &previous, "ValidateService", State::Live)
        .message(format!("reverted from {current}"));
    match switch_to(ctx, &store, &previous, &journal, record, log) {
        Ok(()) => Err(format_err!("{cause}; back on {previous} (healthy), {current} marked bad")),
        Err(err) => {
            Err(format_err!("{cause}; {current} marked bad; returning to {previous} failed too: {err:#}"))
        }
    }
}

/// `deploy-hook rollback [--to REVISION] [--force]`.
pub fn rollback(
    ctx: &Ctx,
    revision: &Revision,
    to: Option<&str>,
    force: bool,
    log: &mut Log,
) -> anyhow::Result<String> {
    let store = Store::open(&ctx.root, &revision.release)?;
    let holder = format!("pid {} (rollback, since {})", std::process::id(), now());
    let _lock = Lock::acquire(&store, &holder, lock_wait(), &|m| log.info(m))?;
    let journal = Journal::new(&store.state)?;
    let records = journal.read()?;
    let current = store.current_revision();
    let target = match to {
        Some(to) => to.to_owned(),
        None => previous_good(&store, &records, current.as_deref().unwrap_or(""))
            .context("no previous good release to roll back to; name one with --to")?,
    };
    if !is_revision(&target) {
        bail!("{target:?} is not a release name (r- and 16 hex digits, as status lists them)");
    }
    let state = states(&records).get(target.as_str()).copied();
    let complete = store.release(&target)?.join("REVISION").is_file();
    match state {
        _ if !complete && !force => {
            bail!("{target} is not a complete release in {}", store.app_root.join("releases").display())
        }
        Some(State::Bad | State::Failed) if !force => {
            bail!("{target} is marked {:?}; pass --force to go back to it anyway", state.unwrap())
        }
        None if !force => bail!("{target} is not in the journal; pass --force to go back to it anyway"),
        _ => {}
    }
    if current.as_deref() == Some(target.as_str()) {
        return Ok(format!("rollback ok: {target} is already current"));
    }
    let mut record = Record::new("manual", &target, "Rollback", State::Live);
    if let Some(c) = &current {
        record = record.message(format!("rolled back from {c}"));
    }
    switch_to(ctx, &store, &target, &journal, record, log)?;
    Ok(format!("rollback ok: {target} live and healthy (was {})", current.as_deref().unwrap_or("none")))
}

/// `deploy-hook prune [--keep N]`.
pub fn prune_cmd(ctx: &Ctx, revision: &Revision, keep: Option<u32>, log: &mut Log) -> anyhow::Result<String> {
    let store = Store::open(&ctx.root, &revision.release)?;
    let holder = format!("pid {} (prune, since {})", std::process::id(), now());
    let _lock = Lock::acquire(&store, &holder, lock_wait(), &|m| log.info(m))?;
    let keep = keep.unwrap_or(revision.release.keep_releases).max(1);
    let journal = Journal::new(&store.state)?;
    let removed = prune::prune(&store, &journal, keep, log)?;
    crate::after_install::compact_journal(&journal, log);
    Ok(format!(
        "prune ok: {} releases removed, keeping {keep} good ones plus the current and previous",
        removed.len()
    ))
}

/// One release in `status`.
#[derive(Serialize)]
struct ReleaseStatus {
    revision: String,
    state: Option<State>,
    on_disk: bool,
    deployment_ids: Vec<String>,
    first_seen: String,
    last_change: String,
    venv: Option<String>,
    last_message: Option<String>,
}

/// What `status` reports.
#[derive(Serialize)]
struct Status {
    app: String,
    app_root: String,
    current: Option<String>,
    previous: Option<String>,
    unit: String,
    service: String,
    /// `<stem>.socket` and its state, when the release uses socket activation.
    socket: Option<SocketStatus>,
    releases: Vec<ReleaseStatus>,
    journal: Vec<Record>,
    /// Lines of journal.jsonl that are not records (skipped).
    journal_skipped: usize,
}

/// The socket unit in `status`.
#[derive(Serialize)]
struct SocketStatus {
    unit: String,
    state: String,
}

/// `deploy-hook status [--json]`.
pub fn status(ctx: &Ctx, revision: &Revision, json: bool) -> anyhow::Result<String> {
    let release = &revision.release;
    let store =
        Store::open(&ctx.root, release).context("status reads the root-owned journal: run it as root")?;
    let journal = Journal::new(&store.state)?;
    let parsed = journal.load()?;
    let skipped_warning = parsed.warning(journal.path());
    let journal_skipped = parsed.skipped_total;
    let records = parsed.records;
    let current = store.current_revision();
    let previous =
        live_history(&records).into_iter().find(|r| Some(*r) != current.as_deref()).map(str::to_owned);
    let mut by_rev: BTreeMap<&str, ReleaseStatus> = BTreeMap::new();
    for r in &records {
        let entry = by_rev.entry(&r.revision).or_insert_with(|| ReleaseStatus {
            revision: r.revision.clone(),
            state: None,
            on_disk: store.has_release(&r.revision),
            deployment_ids: Vec::new(),
            first_seen: r.time.clone(),
            last_change: r.time.clone(),
            venv: None,
            last_message: None,
        });
        entry.state = Some(r.state);
        entry.last_change = r.time.clone();
        if r.venv.is_some() {
            entry.venv = r.venv.clone();
        }
        if r.message.is_some() {
            entry.last_message = r.message.clone();
        }
        if r.deployment_id.starts_with("d-") && !entry.deployment_ids.contains(&r.deployment_id) {
            entry.deployment_ids.push(r.deployment_id.clone());
        }
    }
    let mut releases: Vec<ReleaseStatus> = by_rev.into_values().collect();
    releases.sort_by(|a, b| b.last_change.cmp(&a.last_change));
    let service = ctx.service(release, &store);
    let status = Status {
        app: release.app.to_string(),
        app_root: release.app_root.to_string(),
        current,
        previous,
        unit: release.unit.to_string(),
        service: service.state(),
        socket: service.socket_state().map(|state| SocketStatus { unit: service.socket.clone(), state }),
        releases,
        journal: records,
        journal_skipped,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&status)?);
    }
    let mut out = format!(
        "{} at {}: current {}, previous {}\n{} is {}\n",
        status.app,
        status.app_root,
        status.current.as_deref().unwrap_or("none"),
        status.previous.as_deref().unwrap_or("none"),
        status.unit,
        status.service
    );
    if let Some(socket) = &status.socket {
        out.push_str(&format!("{} is {}\n", socket.unit, socket.state));
    }
    for r in &status.releases {
        let mark = if Some(&r.revision) == status.current.as_ref() { "*" } else { " " };
        let state = r.state.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default();
        out.push_str(&format!(
            "{mark} {} {:<7} {} {} venv {} deployments {}{}\n",
            r.revision,
            state,
            r.last_change,
            if r.on_disk { "on disk" } else { "removed" },
            r.venv.as_deref().unwrap_or("-"),
            r.deployment_ids.join(","),
            r.last_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        ));
    }
    if let Some(warning) = skipped_warning {
        out.push_str(&format!("warning: {warning}\n"));
    }
    Ok(out.trim_end().to_owned())
}
