//! `cargo xtask bench`'s redeploy-under-load part: N redeploys of the example without socket
//! activation, then N with it, each under a steady stream from [`crate::load`], with the
//! `process` service manager in a sandbox root (no systemd needed; the hook's socket holder does
//! what systemd's socket unit does). Prints both counts side by side.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use packaging::bundle::{AppSource, Arch, Bundle};
use xshell::{Shell, cmd};

use crate::{
    load::{self, Limits, LoadReport},
    project_root,
};

const APP_UID: u32 = 1500;

/// Runs the comparison with `n` redeploys per variant in `work`.
pub(crate) fn bench(sh: &Shell, hook: &Path, work: &Path, n: usize) -> anyhow::Result<()> {
    let root = work.join("socket-root");
    fs::create_dir_all(root.join("etc/systemd/system"))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("etc/passwd"), format!("snake:x:{APP_UID}:{APP_UID}::/home/snake:/bin/bash\n"))?;
    fs::write(root.join("etc/group"), format!("snake:x:{APP_UID}:\n"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let app = work.join("socket-app");
    let example = project_root().join("examples/python-app");
    cmd!(sh, "cp -r {example} {app}").quiet().run()?;
    let yaml_path = app.join("deploy.yaml");
    let yaml = fs::read_to_string(&yaml_path)?
        .replace("127.0.0.1:8000", &addr.to_string())
        .replace("installer: auto", "installer: pip");
    let mut deployments = 0;
    let mut deploy = |socket_activation: bool| -> anyhow::Result<String> {
        deployments += 1;
        let text = yaml.replace(
            "  restart: on-failure",
            &format!("  restart: on-failure\n  socket_activation: {socket_activation}"),
        );
        fs::write(&yaml_path, text)?;
        fs::write(app.join("src/BENCH_REVISION.txt"), format!("{deployments}\n"))?;
        let source = AppSource::load(&app)?;
        let vendored = crate::wheels::for_app(&source, &app, Arch::X86_64)?;
        let written = Bundle::new(&source, hook, Arch::X86_64, vendored.as_ref())?
            .write(&work.join("socket-bundles"), 1)?;
        let id = format!("d-SOCKB{deployments:05}");
        let archive =
            root.join("opt/codedeploy-agent/deployment-root/bench").join(&id).join("deployment-archive");
        fs::create_dir_all(&archive)?;
        let path = written.path;
        cmd!(sh, "tar -zxpsf {path} -C {archive}").quiet().run()?;
        let mut start_log = String::new();
        for event in ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"] {
            let out = Command::new(archive.join("bin/deploy-hook"))
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("LIFECYCLE_EVENT", event)
                .env("DEPLOYMENT_ID", &id)
                .env("APPLICATION_NAME", "bench")
                .env("DEPLOYMENT_GROUP_NAME", "bench")
                .env("DEPLOYMENT_GROUP_ID", "bench")
                .env("DEPLOY_HOOK_ROOT", &root)
                .env("DEPLOY_HOOK_SERVICE_MANAGER", "process")
                .output()?;
            if !out.status.success() {
                bail!("{event} of {id} failed:\n{}", String::from_utf8_lossy(&out.stdout));
            }
            if event == "ApplicationStart" {
                start_log = String::from_utf8_lossy(&out.stdout).into_owned();
            }
        }
        Ok(start_log)
    };
    let under_load = |work: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<LoadReport> {
        let stop = Arc::new(AtomicBool::new(false));
        let limits = Limits {
            max_requests: 100_000,
            max_time: Duration::from_secs(1800),
            interval: Duration::from_millis(10),
        };
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || load::run(addr, "/", limits, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let res = work();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for client in clients {
            report.merge(&client.join().expect("a load client panicked"));
        }
        res.map(|()| report)
    };

    let result = (|| -> anyhow::Result<(LoadReport, LoadReport)> {
        // The first deployment builds the venv from the index; it is not measured.
        deploy(false).context("first deployment")?;
        let off = under_load(&mut || (0..n).try_for_each(|_| deploy(false).map(drop)))?;
        let switch = deploy(true)?;
        ensure!(switch.contains("socket holder"), "the switch started no socket holder:\n{switch}");
        let on = under_load(&mut || (0..n).try_for_each(|_| deploy(true).map(drop)))?;
        Ok((off, on))
    })();
    for pidfile in ["service.pid", "listen.pid"] {
        let state_dir = packaging::layout::state_dir("python-app");
        if let Ok(text) = fs::read_to_string(root.join(state_dir.trim_start_matches('/')).join(pidfile))
            && let Some(pid) = text.split(' ').next()
        {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
    let (off, on) = result?;
    println!(
        "restarts  {n} redeploys under load | without socket activation: {} refused, {} reset, {} failed of {} (longest {} ms) | with: {} refused, {} reset, {} failed of {} (longest {} ms)",
        off.refused,
        off.reset,
        off.failed,
        off.sent,
        off.longest.as_millis(),
        on.refused,
        on.reset,
        on.failed,
        on.sent,
        on.longest.as_millis()
    );
    Ok(())
}
