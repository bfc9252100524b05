//! Socket activation and the hardened unit, measured under a real systemd: a steady request
//! stream (our own loopback load generator, run in the container's network namespace) through
//! three redeploys without socket activation (refused connections), a switch-over, three
//! redeploys with it (none refused), and a slow request in flight across ApplicationStart.
//! Also the rendered unit's `systemd-analyze security --offline=true` exposure.

use std::{
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use tests::{
    build_bundle,
    container::{self, Container},
    describe, example_bundle,
    sandbox::example_variant,
};
use xtask::load::{self, Limits, LoadReport};

use crate::systemd::{archive_of, assert_all_ok, deploy, last_line, revision_of, run_hook};

const UNIT: &str = "python-app.service";
const SOCKET: &str = "python-app.socket";

/// Runs `f` on a thread inside the container's network namespace, where its 127.0.0.1 is.
fn in_container_net<T: Send + 'static>(
    ct: &Container,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>> {
    let ns = fs::File::open(format!("/proc/{}/ns/net", ct.init_pid())).context("the container's netns")?;
    Ok(thread::spawn(move || {
        // SAFETY: setns changes the network namespace of this thread only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    }))
}

fn addr() -> SocketAddr {
    "127.0.0.1:8000".parse().unwrap()
}

/// Runs `work` while two clients send a steady stream of `GET /`; returns their counts.
fn under_load(ct: &Container, work: impl FnOnce() -> Result<()>) -> Result<LoadReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        max_requests: 50_000,
        max_time: Duration::from_secs(900),
        interval: Duration::from_millis(10),
    };
    let mut clients = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        clients.push(in_container_net(ct, move || load::run(addr(), "/", limits, &stop))?);
    }
    thread::sleep(Duration::from_millis(500));
    let res = work();
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut report = LoadReport::default();
    for client in clients {
        report.merge(&client.join().expect("a load client panicked"));
    }
    res?;
    Ok(report)
}

/// The example with a `/slow` endpoint (3 s), `socket_activation` as given, greeting `greeting`.
fn app_variant(socket_activation: bool) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let edits: &[(&str, &str)] = if socket_activation {
        &[]
    } else {
        &[("  restart: on-failure", "  restart: on-failure\n  socket_activation: false")]
    };
    let (dir, app) = example_variant(8000, edits)?;
    let path = app.join("src/app.py");
    let text = fs::read_to_string(&path)?;
    ensure!(text.contains("import json\n") && text.contains("    elif path == \"/\":\n"), "app.py changed");
    let text = text.replacen("import json\n", "import asyncio\nimport json\n", 1).replacen(
        "    elif path == \"/\":\n",
        "    elif path == \"/slow\":\n        await asyncio.sleep(3)\n        await _send(send, 200, b\"slow\\n\", b\"text/plain\")\n    elif path == \"/\":\n",
        1,
    );
    fs::write(&path, text)?;
    Ok((dir, app))
}

fn set_greeting(app: &std::path::Path, greeting: &str) -> Result<()> {
    let path = app.join("src/app.py");
    let text = fs::read_to_string(&path)?;
    let start = text.find("os.environ.get(\"GREETING\", \"").context("GREETING")? + 28;
    let end = start + text[start..].find('"').context("GREETING's end")?;
    fs::write(&path, format!("{}{greeting}{}", &text[..start], &text[end..]))?;
    Ok(())
}

/// Deploys `bundle` as deployment `id` after `previous`; every event must pass.
fn redeploy(
    ct: &Container,
    bundle: &str,
    id: &str,
    previous: &str,
) -> Result<Vec<(String, std::process::Output)>> {
    let outs = deploy(ct, bundle, id, Some(previous))?;
    assert_all_ok(&outs);
    Ok(outs)
}

#[test]
fn socket_activation_drops_no_request_across_redeploys() -> Result<()> {
    let host = tempfile::tempdir()?;
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755))?;
    let mut names = Vec::new();
    let mut revisions = Vec::new();
    for socket_activation in [false, true] {
        let (dir, app) = app_variant(socket_activation)?;
        for greeting in ["hello A", "hello B"] {
            set_greeting(&app, greeting)?;
            let out = dir.path().join(format!("{socket_activation}-{}", greeting.len() + names.len()));
            let bundle = build_bundle(&app, &out, &[])?;
            let name = bundle.file_name().context("a name")?.to_string_lossy().into_owned();
            fs::copy(&bundle, host.path().join(&name))?;
            revisions.push(revision_of(&bundle));
            names.push(name);
        }
    }
    let [off_a, off_b, on_a, on_b] = [&names[0], &names[1], &names[2], &names[3]];

    let Some(ct) = container::boot_or_skip("socket", &[container::Bind::ro(host.path(), "/srv/deploy")])?
    else {
        return Ok(());
    };

    // Without socket activation: every restart closes the port.
    assert_all_ok(&deploy(&ct, off_a, "d-SOCK00000", None)?);
    ensure!(
        ct.exec(&["systemctl", "cat", SOCKET])?.status.code() != Some(0),
        "a socket unit without socket activation"
    );
    let off = under_load(&ct, || {
        redeploy(&ct, off_b, "d-SOCK00001", "d-SOCK00000")?;
        redeploy(&ct, off_a, "d-SOCK00002", "d-SOCK00001")?;
        redeploy(&ct, off_b, "d-SOCK00003", "d-SOCK00002")?;
        Ok(())
    })?;
    println!("3 redeploys without socket activation: {off}");
    ensure!(off.ok > 0, "no request succeeded: {off}, {:?}", off.samples);
    ensure!(off.failures() > 0, "restarts without socket activation lost no request: {off}");

    // The switch-over: the service lets go of the port, the socket binds it, says so.
    let outs = redeploy(&ct, on_a, "d-SOCK00004", "d-SOCK00003")?;
    let start = &outs.iter().find(|(e, _)| e == "ApplicationStart").context("ApplicationStart ran")?.1;
    let text = String::from_utf8_lossy(&start.stdout);
    let switched = text.lines().find(|l| l.contains("switched python-app.service to socket activation"));
    println!("switch-over: {}", switched.with_context(|| describe(start))?);
    ensure!(ct.exec_ok(&["systemctl", "is-active", SOCKET])?.trim() == "active");
    ensure!(ct.exec_ok(&["systemctl", "is-enabled", SOCKET])?.trim() == "enabled");

    // With socket activation: the socket stays, connections wait in its backlog.
    let on = under_load(&ct, || {
        for (bundle, id, previous) in [
            (on_b, "d-SOCK00005", "d-SOCK00004"),
            (on_a, "d-SOCK00006", "d-SOCK00005"),
            (on_b, "d-SOCK00007", "d-SOCK00006"),
        ] {
            let outs = redeploy(&ct, bundle, id, previous)?;
            let start =
                &outs.iter().find(|(e, _)| e == "ApplicationStart").context("ApplicationStart ran")?.1;
            let text = String::from_utf8_lossy(&start.stdout);
            ensure!(text.contains("python-app.socket keeps listening"), "{}", describe(start));
        }
        Ok(())
    })?;
    println!("3 redeploys with socket activation:    {on}");
    // No connection is refused, reset or failed: the socket keeps listening, and the launcher
    // (configs/serve.py) makes the old hypercorn stop accepting before it closes idle connections.
    ensure!(on.ok > 0 && on.failures() == 0, "{on}: {:?}\n{}", on.samples, ct.journal(UNIT, 40));
    let (status, body) = ct.http_get(8000, "/healthz")?;
    ensure!(status == 200 && body.contains(&revisions[3]), "{status} {body}");

    // A slow request in flight when ApplicationStart restarts the service completes.
    let archive = archive_of("d-SOCK00008");
    ct.exec_ok(&["mkdir", "-p", &archive])?;
    ct.exec_ok(&[
        "sh",
        "-c",
        "cd \"$1\" && /bin/tar -zxpsf \"$2\"",
        "sh",
        &archive,
        &format!("/srv/deploy/{on_a}"),
    ])?;
    for event in ["BeforeInstall", "AfterInstall"] {
        let out = run_hook(&ct, &archive, event, "d-SOCK00008")?;
        ensure!(out.status.success(), "{event}: {}", describe(&out));
    }
    let slow = in_container_net(&ct, || load::get(addr(), "/slow"))?;
    thread::sleep(Duration::from_millis(700));
    let out = run_hook(&ct, &archive, "ApplicationStart", "d-SOCK00008")?;
    ensure!(out.status.success(), "ApplicationStart: {}", describe(&out));
    let (status, body) = slow.join().expect("the slow client panicked");
    ensure!(
        status == Some(200) && body == "slow\n",
        "the slow request got {status:?} {body:?}\n{}",
        ct.journal(UNIT, 40)
    );
    let out = run_hook(&ct, &archive, "ValidateService", "d-SOCK00008")?;
    ensure!(out.status.success(), "ValidateService: {}", describe(&out));
    ensure!(last_line(&out).contains(&revisions[2]), "{}", describe(&out));

    // Back to a release without socket activation: the socket unit goes first, the release binds
    // the port itself.
    let outs = redeploy(&ct, off_b, "d-SOCK00009", "d-SOCK00008")?;
    let start = &outs.iter().find(|(e, _)| e == "ApplicationStart").context("ApplicationStart ran")?.1;
    let text = String::from_utf8_lossy(&start.stdout);
    ensure!(text.contains("stopped, disabled and removed python-app.socket"), "{}", describe(start));
    ensure!(
        ct.exec(&["systemctl", "cat", SOCKET])?.status.code() != Some(0),
        "the socket unit is still there"
    );
    let (status, body) = ct.http_get(8000, "/healthz")?;
    ensure!(status == 200 && body.contains(&revisions[1]), "{status} {body}");
    Ok(())
}

/// The bundled unit's exposure by `systemd-analyze security --offline=true` is 3.0 or less.
#[test]
fn the_unit_is_hardened_to_an_exposure_of_3_or_less() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(example_bundle())
        .arg("-C")
        .arg(dir.path())
        .arg("configs")
        .status()?;
    ensure!(status.success(), "tar failed");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.path().join("configs").join(UNIT))
        .output()
        .context("systemd-analyze (Debian: systemd) is needed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure =
        xtask::exposure::parse(&text).with_context(|| format!("no exposure in\n{}", describe(&out)))?;
    println!("exposure of the rendered unit: {exposure}");
    ensure!(exposure <= 3.0, "exposure {exposure} > 3.0\n{text}");
    Ok(())
}
