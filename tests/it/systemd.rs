//! The whole lifecycle under a real systemd, booted in a throwaway container: the agent's
//! extraction (`tar -zxpsf`), every hook run through `systemd-run --wait` with the agent's
//! environment and order (ApplicationStop from the previous revision), a health gate that
//! reverts, CodeDeploy's rollback as a flip, and `deploy-hook rollback` and `status` by hand.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use tests::{
    build_bundle,
    container::{self, Container, WHEELHOUSE},
    describe,
    sandbox::example_variant,
};

const GROUP_ID: &str = "5e1f0c3a-fleet";
const APP_ROOT: &str = "/home/snake/app";

pub(crate) fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned()
}

/// The revision id in a bundle's file name (`<app>-<revision>-<arch>.tgz`).
pub(crate) fn revision_of(bundle: &Path) -> String {
    let name = bundle.file_name().unwrap().to_str().unwrap();
    let start = name.find("-r-").unwrap() + 1;
    name[start..start + 18].to_owned()
}

pub(crate) fn archive_of(deployment_id: &str) -> String {
    format!("/opt/codedeploy-agent/deployment-root/{GROUP_ID}/{deployment_id}/deployment-archive")
}

/// Runs one hook as the agent does. The container has no network but `lo` and no wheelhouse:
/// the revision's own wheels and uv are all there is.
pub(crate) fn run_hook(ct: &Container, archive: &str, event: &str, deployment_id: &str) -> Result<Output> {
    let env = [
        ("LIFECYCLE_EVENT", event),
        ("DEPLOYMENT_ID", deployment_id),
        ("APPLICATION_NAME", "python-app"),
        ("DEPLOYMENT_GROUP_NAME", "fleet"),
        ("DEPLOYMENT_GROUP_ID", GROUP_ID),
    ];
    let hook = format!("{archive}/bin/deploy-hook");
    ct.systemd_run(&env, &[&hook])
}

/// A deployment as the agent runs it: extract, then the events in order, ApplicationStop from
/// the previous revision's archive. Returns every hook's output; stops at the first failure.
pub(crate) fn deploy(
    ct: &Container,
    bundle: &str,
    deployment_id: &str,
    previous: Option<&str>,
) -> Result<Vec<(String, Output)>> {
    let archive = archive_of(deployment_id);
    ct.exec_ok(&["mkdir", "-p", &archive])?;
    // The agent's own command, run in the destination (docs/codedeploy-agent.md, "Unpacking").
    ct.exec_ok(&[
        "sh",
        "-c",
        "cd \"$1\" && /bin/tar -zxpsf \"$2\"",
        "sh",
        &archive,
        &format!("/srv/deploy/{bundle}"),
    ])?;
    let mut outs = Vec::new();
    if let Some(previous) = previous {
        outs.push((
            "ApplicationStop".into(),
            run_hook(ct, &archive_of(previous), "ApplicationStop", deployment_id)?,
        ));
    }
    for event in ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"] {
        let out = run_hook(ct, &archive, event, deployment_id)?;
        let ok = out.status.success();
        outs.push((event.into(), out));
        if !ok {
            break;
        }
    }
    Ok(outs)
}

pub(crate) fn assert_all_ok(outs: &[(String, Output)]) {
    for (event, out) in outs {
        assert!(out.status.success(), "{event} failed\n{}", describe(out));
    }
}

fn serves(ct: &Container, revision: &str) -> Result<()> {
    let (status, body) = ct.wait_http(8000, "/healthz", Duration::from_secs(20))?;
    ensure!(status == 200 && body.contains(revision), "expected {revision}, got {status} {body}");
    Ok(())
}

#[test]
fn the_whole_lifecycle_under_real_systemd() -> Result<()> {
    let started = Instant::now();
    let host = tempfile::tempdir()?;
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755))?;
    let (dir, app) = example_variant(8000, &[("deadline: 60", "deadline: 10")])?;
    let edit = |from: &str, to: &str| -> Result<()> {
        let path = app.join("src/app.py");
        let text = fs::read_to_string(&path)?;
        ensure!(text.contains(from), "app.py lacks {from:?}");
        Ok(fs::write(path, text.replacen(from, to, 1))?)
    };
    let bundle_a = build_bundle(&app, &dir.path().join("a"), &[])?;
    edit("hello", "hello B")?;
    let bundle_b = build_bundle(&app, &dir.path().join("b"), &[])?;
    edit(
        "await _send(send, 200, body, b\"application/json\")",
        "await _send(send, 500, body, b\"application/json\")",
    )?;
    let bundle_c = build_bundle(&app, &dir.path().join("c"), &[])?;
    // D: healthy again, with other dependencies (another installer makes another venv), so
    // its unit's ExecStart changes.
    edit(
        "await _send(send, 500, body, b\"application/json\")",
        "await _send(send, 200, body, b\"application/json\")",
    )?;
    edit("hello B", "hello D")?;
    tests::edit_file(&app, "deploy.yaml", "installer: auto", "installer: pip");
    let bundle_d = build_bundle(&app, &dir.path().join("d"), &[])?;
    let mut names = Vec::new();
    for bundle in [&bundle_a, &bundle_b, &bundle_c, &bundle_d] {
        let name = bundle.file_name().context("a bundle has a name")?.to_string_lossy().into_owned();
        fs::copy(bundle, host.path().join(&name))?;
        names.push(name);
    }
    let (rev_a, rev_b, rev_c) = (revision_of(&bundle_a), revision_of(&bundle_b), revision_of(&bundle_c));

    let Some(ct) =
        container::boot_or_skip_offline("lifecycle", &[container::Bind::ro(host.path(), "/srv/deploy")])?
    else {
        return Ok(());
    };
    println!("container booted in {:.2?}", ct.boot_time());
    // Offline: only the loopback link, no wheelhouse, no pip cache.
    let links = ct.exec_ok(&["ip", "-o", "link", "show"])?;
    ensure!(links.lines().all(|l| l.contains(": lo:")), "the container has a network: {links}");
    ensure!(ct.exec(&["test", "-e", WHEELHOUSE])?.status.code() == Some(1), "the wheelhouse is mounted");

    // 1. A first deployment: no ApplicationStop (the agent skips it), the service is active and
    //    answers with revision A.
    let t = Instant::now();
    let outs = deploy(&ct, &names[0], "d-SYSD0000A", None)?;
    assert_all_ok(&outs);
    ensure!(last_line(&outs[1].1).contains("venv built with uv"), "AfterInstall: {}", describe(&outs[1].1));
    println!("deployment A: {:.2?}", t.elapsed());
    ensure!(ct.exec_ok(&["systemctl", "is-active", "python-app.service"])?.trim() == "active");
    ensure!(ct.exec_ok(&["systemctl", "is-enabled", "python-app.service"])?.trim() == "enabled");
    serves(&ct, &rev_a)?;
    // The compiled markupsafe wheel for this arch is what runs.
    let (_, body) = ct.wait_http(8000, "/healthz", Duration::from_secs(20))?;
    ensure!(body.contains("\"markupsafe\": \"compiled\""), "{body}");

    // 2. Revision B: answers B.
    let t = Instant::now();
    let outs = deploy(&ct, &names[1], "d-SYSD0000B", Some("d-SYSD0000A"))?;
    assert_all_ok(&outs);
    ensure!(last_line(&outs[0].1).contains("keeps serving"), "ApplicationStop: {}", describe(&outs[0].1));
    ensure!(last_line(&outs[2].1).contains("venv reused"), "AfterInstall: {}", describe(&outs[2].1));
    println!("deployment B: {:.2?}", t.elapsed());
    serves(&ct, &rev_b)?;

    // 3. A revision that fails its health check: ValidateService fails, the host answers B
    //    again, the journal marks C bad.
    let outs = deploy(&ct, &names[2], "d-SYSD0000C", Some("d-SYSD0000B"))?;
    let (event, validate) = outs.last().context("events ran")?;
    ensure!(
        event == "ValidateService" && validate.status.code() == Some(1),
        "{event}: {}",
        describe(validate)
    );
    let verdict = last_line(validate);
    ensure!(
        verdict.contains("HTTP 500") && verdict.contains(&format!("back on {rev_b} (healthy)")),
        "{verdict}"
    );
    ensure!(
        String::from_utf8_lossy(&validate.stdout).contains("the service's last log lines"),
        "{}",
        describe(validate)
    );
    serves(&ct, &rev_b)?;
    let journal = ct.exec_ok(&["cat", "/var/lib/deploy-hook/python-app/journal.jsonl"])?;
    ensure!(journal.lines().any(|l| l.contains(&rev_c) && l.contains("\"state\":\"bad\"")), "{journal}");

    // 4. CodeDeploy's rollback: revision A under a new deployment id is a flip, not a rebuild.
    let outs = deploy(&ct, &names[0], "d-SYSD000RA", Some("d-SYSD0000C"))?;
    assert_all_ok(&outs);
    let after_install = &outs.iter().find(|(e, _)| e == "AfterInstall").context("AfterInstall ran")?.1;
    let log = String::from_utf8_lossy(&after_install.stdout);
    ensure!(last_line(after_install).contains("flip"), "{log}");
    ensure!(
        !log.contains("stage release") && !log.contains("python environment"),
        "a flip copied or built: {log}"
    );
    serves(&ct, &rev_a)?;

    // 5. `deploy-hook rollback` by hand: back to B; `status --json` shows the whole history.
    let hook = format!("{APP_ROOT}/current/deploy/deploy-hook");
    let out = ct.systemd_run(&[], &[&hook, "rollback"])?;
    ensure!(out.status.success(), "{}", describe(&out));
    ensure!(
        last_line(&out) == format!("rollback ok: {rev_b} live and healthy (was {rev_a})"),
        "{}",
        describe(&out)
    );
    serves(&ct, &rev_b)?;
    let out = ct.systemd_run(&[], &[&hook, "status", "--json"])?;
    ensure!(out.status.success(), "{}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(status["current"] == rev_b.as_str() && status["previous"] == rev_a.as_str(), "{status}");
    ensure!(status["service"] == "active", "{status}");
    let releases = status["releases"].as_array().context("releases")?;
    let state = |rev: &str| releases.iter().find(|r| r["revision"] == rev).map(|r| r["state"].clone());
    ensure!(state(&rev_a) == Some("live".into()) && state(&rev_c) == Some("bad".into()), "{status}");
    let ids: Vec<String> = status["journal"]
        .as_array()
        .context("journal")?
        .iter()
        .map(|r| r["deployment_id"].as_str().unwrap_or("").to_owned())
        .collect();
    for id in ["d-SYSD0000A", "d-SYSD0000B", "d-SYSD0000C", "d-SYSD000RA", "manual"] {
        ensure!(ids.iter().any(|i| i == id), "{id} missing from the journal: {ids:?}");
    }

    // 6. A dependency change: the unit changes, systemd reloads it, and the running service is
    //    the new ExecStart (the new venv), with nothing left for systemd to reload.
    let venv_of_current = || -> Result<String> {
        let link = ct.exec_ok(&["readlink", &format!("{APP_ROOT}/current/.venv")])?;
        Ok(link.trim().rsplit('/').next().unwrap_or_default().to_owned())
    };
    let old_venv = venv_of_current()?;
    // First killed between writing the new unit and reloading systemd: systemd's loaded unit
    // is then stale, and only a reload owed, not changed bytes, can tell the next run.
    let archive_d = archive_of("d-SYSD0000D");
    ct.exec_ok(&["mkdir", "-p", &archive_d])?;
    ct.exec_ok(&[
        "sh",
        "-c",
        "cd \"$1\" && /bin/tar -zxpsf \"$2\"",
        "sh",
        &archive_d,
        &format!("/srv/deploy/{}", names[3]),
    ])?;
    let env = [
        ("LIFECYCLE_EVENT", "AfterInstall"),
        ("DEPLOYMENT_ID", "d-SYSD0000D"),
        ("APPLICATION_NAME", "python-app"),
        ("DEPLOYMENT_GROUP_NAME", "fleet"),
        ("DEPLOYMENT_GROUP_ID", GROUP_ID),
        ("DEPLOY_HOOK_FAILPOINT", "unit: written"),
    ];
    let killed = ct.systemd_run(&env, &[&format!("{archive_d}/bin/deploy-hook")])?;
    ensure!(!killed.status.success(), "not killed: {}", describe(&killed));
    let stale =
        ct.exec_ok(&["systemctl", "show", "--property=NeedDaemonReload", "--value", "python-app.service"])?;
    ensure!(stale.trim() == "yes", "NeedDaemonReload={stale} after the kill");
    let outs = deploy(&ct, &names[3], "d-SYSD0000D", Some("d-SYSD000RA"))?;
    assert_all_ok(&outs);
    serves(&ct, &revision_of(&bundle_d))?;
    let new_venv = venv_of_current()?;
    ensure!(new_venv != old_venv, "D kept the venv {old_venv}");
    let exec = ct.exec_ok(&["systemctl", "show", "--property=ExecStart", "--value", "python-app.service"])?;
    ensure!(exec.contains(&format!("venvs/{new_venv}/bin/python")), "loaded ExecStart: {exec}");
    let reload =
        ct.exec_ok(&["systemctl", "show", "--property=NeedDaemonReload", "--value", "python-app.service"])?;
    ensure!(reload.trim() == "no", "NeedDaemonReload={reload}");
    let pid = ct.exec_ok(&["systemctl", "show", "--property=MainPID", "--value", "python-app.service"])?;
    let cmdline = ct.exec_ok(&["sh", "-c", "tr '\\0' ' ' < /proc/$1/cmdline", "sh", pid.trim()])?;
    ensure!(cmdline.contains(&format!("venvs/{new_venv}/bin/python")), "running: {cmdline}");
    println!("whole lifecycle under systemd: {:.2?}", started.elapsed());
    Ok(())
}
