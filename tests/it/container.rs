//! Smoke test of the systemd container harness: boot, a venv from the wheelhouse as the app user,
//! a hypercorn unit answering HTTP, the agent-like `systemd_run`, bind mounts, pristine rootfs.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use tests::container::{self, APP_USER, Bind, WHEELHOUSE};

const APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from systemd " + scope["path"].encode()})
"#;

#[test]
fn container_boots_systemd_and_serves_hypercorn_from_the_wheelhouse() -> Result<()> {
    let total = Instant::now();
    let host = tempfile::tempdir()?;
    // The app user reads the app from the bind mount.
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755))?;
    fs::write(host.path().join("app.py"), APP)?;

    let Some(ct) = container::boot_or_skip("container-smoke", &[Bind::rw(host.path(), "/srv/host")])? else {
        return Ok(());
    };
    println!("container {}: booted in {:.2?}", ct.name(), ct.boot_time());

    let state = ct.exec(&["systemctl", "is-system-running"])?;
    let state = String::from_utf8_lossy(&state.stdout);
    ensure!(matches!(state.trim(), "running" | "degraded"), "is-system-running says {state:?}");

    // The agent-like runner: environment in, exit status and output out, cwd /.
    let env = container::agent_env("ValidateService", "d-SMOKE0001");
    let out =
        ct.systemd_run(&env, &["/bin/sh", "-c", "echo \"$LIFECYCLE_EVENT $DEPLOYMENT_ID $(pwd)\"; exit 7"])?;
    ensure!(out.status.code() == Some(7), "systemd_run lost the exit status: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(said.trim() == "ValidateService d-SMOKE0001 /", "systemd_run environment: {said:?}");

    // A hung command fails its test instead of hanging the run.
    let step = Instant::now();
    let hung = ct.exec_timeout(&["sleep", "60"], Duration::from_secs(1));
    ensure!(
        hung.is_err() && step.elapsed() < Duration::from_secs(10),
        "exec_timeout let sleep run: {hung:?}"
    );

    // Writes to the read-write bind reach the host.
    ct.exec_ok(&["touch", "/srv/host/written-inside"])?;
    ensure!(host.path().join("written-inside").exists(), "bind mount is not read-write");

    // A venv as the app user, hypercorn from the wheelhouse, no index (there is no network).
    let step = Instant::now();
    let venv = format!("/home/{APP_USER}/venv");
    ct.exec_ok(&["runuser", "-u", APP_USER, "--", "/usr/bin/python3", "-m", "venv", &venv])?;
    let pip = format!("{venv}/bin/pip");
    ct.exec_ok(&[
        "runuser",
        "-u",
        APP_USER,
        "--",
        &pip,
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        WHEELHOUSE,
        "hypercorn",
    ])?;
    println!("venv + pip install hypercorn: {:.2?}", step.elapsed());

    // The uv path: uv from its wheel (no pip needed), a venv and an offline install in well under
    // a second.
    let step = Instant::now();
    let uv_wheel = fs::read_dir(&container::assets()?.wheelhouse)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("uv-") && name.ends_with(".whl"))
        .ok_or_else(|| anyhow::anyhow!("no uv wheel in the wheelhouse"))?;
    let uv_dir = format!("/home/{APP_USER}/uv");
    let wheel = format!("{WHEELHOUSE}/{uv_wheel}");
    ct.exec_ok(&[
        "runuser",
        "-u",
        APP_USER,
        "--",
        "/usr/bin/python3",
        "-m",
        "zipfile",
        "-e",
        &wheel,
        &uv_dir,
    ])?;
    let version = uv_wheel.split('-').nth(1).unwrap_or_default();
    let uv = format!("{uv_dir}/uv-{version}.data/scripts/uv");
    ct.exec_ok(&["chmod", "0755", &uv])?;
    let uv_venv = format!("/home/{APP_USER}/uv-venv");
    let home = format!("HOME=/home/{APP_USER}");
    let as_user = ["runuser", "-u", APP_USER, "--", "env", &home];
    ct.exec_ok(
        &[&as_user[..], &[&uv, "venv", "--quiet", "--python", "/usr/bin/python3", &uv_venv]].concat(),
    )?;
    let target = format!("--python={uv_venv}/bin/python");
    ct.exec_ok(
        &[
            &as_user[..],
            &[
                &uv,
                "pip",
                "install",
                "--quiet",
                &target,
                "--offline",
                "--no-index",
                "--find-links",
                WHEELHOUSE,
            ],
            &["hypercorn"],
        ]
        .concat(),
    )?;
    ct.exec_ok(&[&format!("{uv_venv}/bin/python"), "-c", "import hypercorn"])?;
    println!("uv venv + uv pip install hypercorn: {:.2?}", step.elapsed());

    let step = Instant::now();
    let python = format!("{venv}/bin/python");
    ct.exec_ok(&[
        "systemd-run",
        "--unit=smoke-app",
        "--property=Type=exec",
        "--uid",
        APP_USER,
        "--working-directory=/srv/host",
        &python,
        "-m",
        "hypercorn",
        "--bind",
        "127.0.0.1:8000",
        "app:app",
    ])?;
    let answer = ct.wait_http(8000, "/healthz", Duration::from_secs(30));
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(err) => return Err(err.context(ct.journal("smoke-app", 40))),
    };
    println!("unit start -> HTTP answer: {:.2?}", step.elapsed());
    ensure!(status == 200, "status {status}, body {body:?}");
    ensure!(body == "hello from systemd /healthz", "body {body:?}");
    let user = ct.exec_ok(&["systemctl", "show", "--property=User", "--value", "smoke-app"])?;
    ensure!(user.trim() == APP_USER, "unit runs as {user:?}");

    let rootfs = container::assets()?.rootfs.clone();
    let step = Instant::now();
    drop(ct);
    println!("power off: {:.2?}", step.elapsed());
    // --volatile=overlay: nothing written inside reached the shared rootfs.
    ensure!(!rootfs.join("home").join(APP_USER).join("venv").exists(), "the container wrote into the rootfs");
    println!("container smoke test total: {:.2?}", total.elapsed());
    Ok(())
}

/// Two containers at once (as parallel tests boot them): powering one off must not touch the
/// other's units, and nothing of either outlives its drop.
#[test]
fn containers_side_by_side_do_not_touch_each_other() -> Result<()> {
    let total = Instant::now();
    let Some(a) = container::boot_or_skip("container-a", &[])? else {
        return Ok(());
    };
    let Some(b) = container::boot_or_skip("container-b", &[])? else {
        return Ok(());
    };
    ensure!(a.init_pid() != b.init_pid() && a.name() != b.name(), "one container booted twice");
    for ct in [&a, &b] {
        ct.exec_ok(&["systemd-run", "--unit=sleeper", "--property=Type=exec", "/bin/sleep", "infinity"])?;
    }
    let (a_init, b_init) = (a.init_pid(), b.init_pid());
    // Each systemd owns a cgroup tree of its own; shared, one would see the other's processes
    // in its units' cgroups.
    let cgroup = |pid: u32| fs::read_to_string(format!("/proc/{pid}/cgroup"));
    let (a_cg, b_cg) = (cgroup(a_init)?, cgroup(b_init)?);
    ensure!(a_cg != b_cg, "both containers' systemd in the same cgroups:\n{a_cg}");
    drop(a);
    ensure!(!Path::new(&format!("/proc/{a_init}")).exists(), "container a's init outlived its drop");
    let state = b.exec(&["systemctl", "is-active", "sleeper", "systemd-journald"])?;
    let state = String::from_utf8_lossy(&state.stdout);
    ensure!(state.split_whitespace().eq(["active", "active"]), "b's units after a's power off: {state:?}");
    drop(b);
    ensure!(!Path::new(&format!("/proc/{b_init}")).exists(), "container b's init outlived its drop");
    println!("two containers, boot to power off: {:.2?}", total.elapsed());
    Ok(())
}
