//! `cargo xtask verify --rehearse`: runs one of our revisions through the whole in-place
//! lifecycle in a temporary sandbox root, as the CodeDeploy agent would on an instance.
//!
//! The bundle is extracted with the agent's `tar -zxpsf` under
//! `<root>/opt/codedeploy-agent/deployment-root/`, and its own `bin/deploy-hook` runs every
//! event with the agent's environment, `DEPLOY_HOOK_ROOT=<root>` and the `process` service
//! manager: a real venv from the package index, a real hypercorn, a real health check. Each
//! event is timed. Whatever happens, [`Sandbox`] stops the service, kills any process still
//! running from the sandbox (and reports it), and removes the sandbox.

use std::{
    fs,
    io::Read,
    net::{TcpListener, ToSocketAddrs},
    os::unix::fs::{MetadataExt, PermissionsExt},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use appspec::{
    LifecycleEvent,
    diag::{Finding, Severity},
};
use packaging::{
    Release,
    bundle::Arch,
    config::Installer,
    layout,
    procfs::{PidStart, ProcStat},
};

use crate::find_in_path;

/// The deployment id every rehearsal uses (the agent's form, `d-` and alphanumerics).
pub const DEPLOYMENT_ID: &str = "d-REHEARSE1";
/// The deployment group id, a directory name under the agent's deployment root.
const GROUP_ID: &str = "5e4ea25e-0000-4000-8000-000000000001";
/// The uid and gid tried first for the app user when running as root.
const FIRST_ID: u32 = 1500;
/// How long the service's process group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One lifecycle event of the rehearsal.
#[derive(Debug, Clone)]
pub struct Step {
    /// The event's name, as in `$LIFECYCLE_EVENT`.
    pub event: &'static str,
    /// How long the hook ran.
    pub seconds: f64,
    /// True when the hook exited 0.
    pub ok: bool,
    /// The hook's last output line.
    pub verdict: String,
}

/// What a rehearsal found.
#[derive(Debug)]
pub struct Rehearsal {
    /// The events run, in order; it stops at the first failing one.
    pub steps: Vec<Step>,
    /// A failing event, a process left behind, a sandbox that could not be removed.
    pub findings: Vec<Finding>,
    /// From the start to the end of the cleanup.
    pub seconds: f64,
    /// Where the sandbox was (it is gone now).
    pub sandbox: PathBuf,
}

impl Rehearsal {
    /// True when every event passed and the cleanup left nothing.
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(Finding::is_error)
    }

    /// The rehearsal as JSON: `ok`, `seconds`, `sandbox` and `steps` (event, seconds, ok, verdict).
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "event": s.event,
                    "seconds": round(s.seconds),
                    "ok": s.ok,
                    "verdict": s.verdict,
                })
            })
            .collect();
        serde_json::json!({
            "ok": self.ok(),
            "skipped": null,
            "seconds": round(self.seconds),
            "sandbox": self.sandbox.display().to_string(),
            "steps": steps,
        })
    }
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Rehearses the revision at `input` (a .tgz, a .tar or an extracted directory, already
/// verified as ours). `stripped` is the top-level directory the agent strips, if any. Progress
/// lines go to `say` as they happen. An error means the rehearsal could not run here.
pub fn rehearse(
    input: &Path,
    stripped: Option<&str>,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Rehearsal> {
    let started = Instant::now();
    let input = fs::canonicalize(input).with_context(|| format!("cannot find {}", input.display()))?;
    let mut sandbox = Sandbox::new()?;
    let archive = sandbox.extract(&input, stripped)?;

    let release_path = archive.join(layout::RELEASE_YAML);
    let text = fs::read_to_string(&release_path).with_context(|| {
        format!("the rehearsal needs one of our revisions, and {} is missing", layout::RELEASE_YAML)
    })?;
    let release = Release::parse(Path::new(layout::RELEASE_YAML), &text)?;
    let state = packaging::layout::state_dir(release.app.as_str());
    sandbox.state_dir = Some(sandbox.root.join(state.trim_start_matches('/')));

    let runner = hook_runner(&archive.join(layout::HOOK))?;
    if !Path::new(release.python.as_str()).is_file() {
        bail!(
            "the interpreter {} (deploy/release.yaml python) does not exist on this machine; the rehearsal builds the venv with it, as the instances will: install it, or rehearse where it exists",
            release.python
        );
    }
    check_port(release.health.url.as_str())?;
    let (uid, gid) = sandbox.write_users(&release)?;
    let installer = sandbox.provide_installer(release.installer)?;

    say(&format!(
        "rehearse: sandbox {} (root {}), deployment {DEPLOYMENT_ID}, service manager process, user {} and group {} as {uid}:{gid}",
        sandbox.path.display(),
        sandbox.root.display(),
        release.user,
        release.group
    ));
    say(&format!("rehearse: {installer}; hook {}", runner.describe()));
    say(
        "rehearse: a first deployment, which the agent starts at BeforeInstall; ApplicationStop runs anyway, since the hook must exit 0 when nothing is installed",
    );

    let mut steps = Vec::new();
    let mut findings = Vec::new();
    for event in LifecycleEvent::IN_PLACE {
        let timeout = Duration::from_secs(release.timeouts.of(event).secs().into());
        let run = sandbox.run_hook(&runner, &archive, event, &release, timeout)?;
        let step =
            Step { event: event.name(), seconds: run.seconds, ok: run.ok, verdict: run.verdict.clone() };
        say(&format!(
            "rehearse: {:<16} {:>7.2}s  {}{}",
            step.event,
            step.seconds,
            if step.ok { "" } else { "FAILED: " },
            step.verdict
        ));
        steps.push(step);
        if !run.ok {
            say(&format!("rehearse: the whole output of {} ({}):", event.name(), run.status));
            for line in run.output.lines() {
                say(&format!("    | {line}"));
            }
            findings.push(Finding::file(
                layout::HOOK,
                "rehearse.event",
                Severity::Error,
                format!(
                    "{} failed in the rehearsal ({}, {:.2}s): {}",
                    event.name(),
                    run.status,
                    run.seconds,
                    run.verdict
                ),
                "read the hook's output above, fix the app or deploy.yaml and rebuild the bundle",
            ));
            break;
        }
    }

    let cleanup = sandbox.cleanup();
    say(&format!("rehearse: cleanup {:.2}s: {}", cleanup.seconds, cleanup.summary()));
    findings.extend(cleanup.findings());
    Ok(Rehearsal { steps, findings, seconds: started.elapsed().as_secs_f64(), sandbox: sandbox.path.clone() })
}

/// This process's effective uid and gid: the owner of `/proc/self`.
pub(crate) fn effective_ids() -> anyhow::Result<(u32, u32)> {
    let meta =
        fs::metadata("/proc/self").context("cannot read /proc/self (the rehearsal needs Linux /proc)")?;
    Ok((meta.uid(), meta.gid()))
}

/// Fails when something already listens on the health check's port here: ValidateService would
/// ask it instead of the rehearsed service.
fn check_port(url: &str) -> anyhow::Result<()> {
    let Ok(parsed) = packaging::HttpUrl::parse(url) else { return Ok(()) };
    let Ok(addrs) = parsed.addr.to_socket_addrs() else { return Ok(()) };
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "port {} is already in use on this machine ({addr}, the health check {url}): the rehearsal's ValidateService would ask whatever listens there; stop it, or rehearse a bundle bound to another port",
                addr.port()
            ),
            Err(_) => {}
        }
    }
    Ok(())
}

/// How the hook is started: directly, or under qemu-user for an aarch64 hook on another arch.
struct HookRunner {
    qemu: Option<PathBuf>,
    arch: &'static str,
}

impl HookRunner {
    fn describe(&self) -> String {
        match &self.qemu {
            Some(qemu) => format!("{} under {}", self.arch, qemu.display()),
            None => format!("{}, native", self.arch),
        }
    }
}

fn hook_runner(hook: &Path) -> anyhow::Result<HookRunner> {
    let mut header = [0u8; 20];
    fs::File::open(hook)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("cannot read {}", hook.display()))?;
    if &header[..4] != b"\x7fELF" {
        bail!("{} is not an ELF binary", layout::HOOK);
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    let Some(arch) = Arch::ALL.into_iter().find(|a| a.elf_machine() == machine).map(Arch::name) else {
        bail!("{} is built for ELF machine {machine}, neither x86_64 nor aarch64", layout::HOOK)
    };
    let host = std::env::consts::ARCH;
    if arch == host {
        return Ok(HookRunner { qemu: None, arch });
    }
    let qemu = (arch == "aarch64")
        .then(|| {
            find_in_path("qemu-aarch64-static")
                .or_else(|| Some(PathBuf::from("/usr/bin/qemu-aarch64-static")).filter(|p| p.is_file()))
        })
        .flatten();
    match qemu {
        Some(qemu) => Ok(HookRunner { qemu: Some(qemu), arch }),
        None => bail!(
            "the hook is built for {arch} and this machine is {host}: the rehearsal needs an {arch} machine{}",
            if arch == "aarch64" {
                ", or qemu-aarch64-static (Debian: apt-get install qemu-user-static)"
            } else {
                ""
            }
        ),
    }
}

/// What one run of the hook gave.
struct HookRun {
    ok: bool,
    status: String,
    seconds: f64,
    verdict: String,
    output: String,
}

/// The temporary instance root. Dropping it cleans up, if [`Sandbox::cleanup`] did not run.
struct Sandbox {
    dir: Option<tempfile::TempDir>,
    /// The temporary directory, canonical: every process under it is the rehearsal's.
    path: PathBuf,
    /// `DEPLOY_HOOK_ROOT`.
    root: PathBuf,
    /// `<root>/var/lib/deploy-hook/<app>`, the hook's state (the supervisor's pidfile), once
    /// release.yaml is read.
    state_dir: Option<PathBuf>,
    /// Directories put first on the hook's PATH.
    path_dirs: Vec<PathBuf>,
    /// The watcher that cleans up if this process dies first (see [`janitor`]).
    janitor: Option<Child>,
}

/// Creates `base/rel` one component at a time, each with mode 0755.
fn mkdirs(base: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let mut dir = base.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    Ok(dir)
}

/// The smallest id from [`FIRST_ID`] up that `file` (etc/passwd or etc/group) does not use.
fn unused_id(file: &str) -> u32 {
    let text = fs::read_to_string(file).unwrap_or_default();
    let used: Vec<u32> = text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect();
    (FIRST_ID..).find(|id| !used.contains(id)).unwrap_or(FIRST_ID)
}

impl Sandbox {
    fn new() -> anyhow::Result<Sandbox> {
        let dir =
            tempfile::Builder::new().prefix("rehearse-").tempdir().context("cannot create the sandbox")?;
        let path = fs::canonicalize(dir.path())?;
        let root = path.join("root");
        let mut sandbox = Sandbox {
            dir: Some(dir),
            path: path.clone(),
            root: root.clone(),
            state_dir: None,
            path_dirs: Vec::new(),
            janitor: None,
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        mkdirs(&path, "root/etc")?;
        sandbox.janitor = spawn_janitor(&path);
        if effective_ids()?.0 == 0 {
            // The hook drops to the app user, who must traverse every directory down to its home.
            for ancestor in path.ancestors().skip(1) {
                let mode = fs::metadata(ancestor)?.permissions().mode();
                if mode & 0o001 == 0 {
                    bail!(
                        "the app user cannot reach the sandbox {}: {} has mode {:04o}; set TMPDIR to a directory everyone can traverse",
                        path.display(),
                        ancestor.display(),
                        mode & 0o7777
                    );
                }
            }
        }
        Ok(sandbox)
    }

    /// Writes `<root>/etc/passwd` and `<root>/etc/group` with the app user and group: a free
    /// uid and gid from 1500 up as root (the hook drops to them), else this process's own.
    fn write_users(&self, release: &Release) -> anyhow::Result<(u32, u32)> {
        let (euid, egid) = effective_ids()?;
        let (uid, gid) =
            if euid == 0 { (unused_id("/etc/passwd"), unused_id("/etc/group")) } else { (euid, egid) };
        let (user, group) = (release.user.as_str(), release.group.as_str());
        let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
        if user != "root" {
            passwd.push_str(&format!("{user}:x:{uid}:{gid}::/home/{user}:/usr/sbin/nologin\n"));
        }
        let mut groups = String::from("root:x:0:\n");
        if group != "root" {
            groups.push_str(&format!("{group}:x:{gid}:\n"));
        }
        fs::write(self.root.join("etc/passwd"), passwd).context("cannot write the sandbox's etc/passwd")?;
        fs::write(self.root.join("etc/group"), groups).context("cannot write the sandbox's etc/group")?;
        let uid = if user == "root" { 0 } else { uid };
        let gid = if group == "root" { 0 } else { gid };
        Ok((uid, gid))
    }

    /// Puts the revision where the agent does and returns its deployment-archive directory.
    fn extract(&self, input: &Path, stripped: Option<&str>) -> anyhow::Result<PathBuf> {
        let archive = mkdirs(
            &self.root,
            &format!("opt/codedeploy-agent/deployment-root/{GROUP_ID}/{DEPLOYMENT_ID}/deployment-archive"),
        )?;
        let mut cmd = if input.is_dir() {
            let mut cmd = Command::new("cp");
            cmd.arg("-a").arg("--").arg(input.join(".")).arg(&archive);
            cmd
        } else {
            let mut magic = [0u8; 2];
            fs::File::open(input)
                .and_then(|mut f| f.read_exact(&mut magic))
                .with_context(|| format!("cannot read {}", input.display()))?;
            // The agent's commands for bundleType tgz and tar.
            let flags = if magic == [0x1f, 0x8b] { "-zxpsf" } else { "-xpsf" };
            let mut cmd = Command::new("/bin/tar");
            cmd.arg(flags).arg(input).current_dir(&archive);
            cmd
        };
        let output = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
        if !output.status.success() {
            bail!("{cmd:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        // The agent moves a lone top-level directory's contents up.
        if let Some(top) = stripped
            && !archive.join(layout::APPSPEC).exists()
            && archive.join(top).is_dir()
        {
            let moved = archive.join(".rehearse-top");
            fs::rename(archive.join(top), &moved)?;
            for entry in fs::read_dir(&moved)? {
                let entry = entry?;
                fs::rename(entry.path(), archive.join(entry.file_name()))?;
            }
            fs::remove_dir(&moved)?;
        }
        Ok(archive)
    }

    /// Makes uv reachable by the hook when it is to be used and this machine has it as a binary
    /// (a shim script is of no use to the app user); says which installer builds the venv.
    fn provide_installer(&mut self, installer: Installer) -> anyhow::Result<String> {
        if installer == Installer::Pip {
            return Ok("venv: python -m venv and pip (installer: pip)".into());
        }
        let found = find_in_path("uv").map(|p| fs::canonicalize(&p).unwrap_or(p));
        let binary = found.as_ref().filter(|p| {
            let mut magic = [0u8; 4];
            fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF"
        });
        if let Some(uv) = binary {
            let tools = mkdirs(&self.path, "tools")?;
            fs::copy(uv, tools.join("uv")).with_context(|| format!("cannot copy {}", uv.display()))?;
            fs::set_permissions(tools.join("uv"), fs::Permissions::from_mode(0o755))?;
            self.path_dirs.push(tools);
            return Ok(format!("venv: uv ({} copied into the sandbox)", uv.display()));
        }
        let system = ["/usr/local/bin/uv", "/usr/bin/uv"].into_iter().find(|p| Path::new(p).is_file());
        match (installer, system, &found) {
            (_, Some(uv), _) => Ok(format!("venv: uv ({uv})")),
            (Installer::Uv, None, _) => bail!(
                "deploy.yaml asks for uv (installer: uv) and this machine has no uv binary on PATH or in /usr/local/bin, /usr/bin"
            ),
            (_, None, Some(script)) => Ok(format!(
                "venv: python -m venv and pip ({} is a script, not the uv binary)",
                script.display()
            )),
            (_, None, None) => Ok("venv: python -m venv and pip (no uv here)".into()),
        }
    }

    /// Runs the archive's hook for `event` as the agent does: no arguments, cwd `/`, a cleared
    /// environment with the agent's variables, killed past the event's timeout.
    fn run_hook(
        &self,
        runner: &HookRunner,
        archive: &Path,
        event: LifecycleEvent,
        release: &Release,
        timeout: Duration,
    ) -> anyhow::Result<HookRun> {
        let hook = archive.join(layout::HOOK);
        let mut cmd = match &runner.qemu {
            Some(qemu) => {
                let mut cmd = Command::new(qemu);
                cmd.arg(&hook);
                cmd
            }
            None => Command::new(&hook),
        };
        let mut path = std::env::join_paths(&self.path_dirs)?;
        if !path.is_empty() {
            path.push(":");
        }
        path.push("/usr/local/bin:/usr/bin:/bin");
        cmd.env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| packaging::passed_to_installers(&k.to_string_lossy())))
            .env("PATH", path)
            .env("LIFECYCLE_EVENT", event.name())
            .env("DEPLOYMENT_ID", DEPLOYMENT_ID)
            .env("APPLICATION_NAME", release.app.as_str())
            .env("DEPLOYMENT_GROUP_NAME", "rehearsal")
            .env("DEPLOYMENT_GROUP_ID", GROUP_ID)
            .env("DEPLOY_HOOK_ROOT", &self.root)
            .env("DEPLOY_HOOK_SERVICE_MANAGER", "process")
            .current_dir("/");
        let out_path = self.path.join(format!("{}.out", event.name()));
        let out =
            fs::File::create(&out_path).with_context(|| format!("cannot create {}", out_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot run {}", hook.display()))?;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if !timed_out && started.elapsed() > timeout {
                // The agent's timeout: SIGTERM, then SIGKILL.
                timed_out = true;
                signal(&child.id().to_string(), "TERM");
                let grace = Instant::now();
                while grace.elapsed() < STOP_GRACE && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let seconds = started.elapsed().as_secs_f64();
        let output = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
        let verdict = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_owned();
        let ok = !timed_out && status.success();
        let status = if timed_out {
            format!("timed out after {}s, the event's timeout", timeout.as_secs())
        } else {
            status.to_string()
        };
        Ok(HookRun { ok, status, seconds, verdict, output })
    }

    /// Stops the service, kills what still runs from the sandbox, removes the sandbox. Runs once.
    fn cleanup(&mut self) -> Cleanup {
        let Some(dir) = self.dir.take() else { return Cleanup::default() };
        // `path` is the canonical spelling the processes' links use.
        let _ = dir.keep();
        let cleanup = clean(&self.path, self.state_dir.as_deref());
        if let Some(mut janitor) = self.janitor.take() {
            let _ = janitor.kill();
            let _ = janitor.wait();
        }
        cleanup
    }
}

/// Stops the service whose pidfile is in `state_dir` (if known), kills what still runs from
/// `path`, removes `path`.
fn clean(path: &Path, state_dir: Option<&Path>) -> Cleanup {
    let started = Instant::now();
    let service = match state_dir {
        Some(state_dir) => {
            let service = stop_service(&state_dir.join(packaging::layout::STATE_PIDFILE));
            // The process manager's socket holder (socket activation) is a group of its own.
            match state_dir.join("listen.pid").exists() {
                true => format!("{service}; socket holder: {}", stop_service(&state_dir.join("listen.pid"))),
                false => service,
            }
        }
        None => "no service was installed".into(),
    };
    let mut cleanup = Cleanup { service, ..Cleanup::default() };
    let prefix = path.display().to_string();
    // Kill until none is left: a dying parent may still start a child.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found = processes_under(&prefix);
        if found.is_empty() || Instant::now() > deadline {
            cleanup.survivors = found;
            break;
        }
        for (pid, what) in found {
            signal(&pid.to_string(), "KILL");
            if !cleanup.stragglers.iter().any(|(p, _)| *p == pid) {
                cleanup.stragglers.push((pid, what));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(first) = fs::remove_dir_all(path) {
        // Read-only directories (some wheels ship them) stop the removal; open them up.
        let _ = Command::new("chmod").arg("-R").arg("u+rwX").arg("--").arg(path).status();
        if let Err(e) = fs::remove_dir_all(path)
            && path.exists()
        {
            cleanup.removal = Some(format!("cannot remove {}: {e} (first try: {first})", path.display()));
        }
    }
    cleanup.seconds = started.elapsed().as_secs_f64();
    cleanup
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.dir.is_some() {
            let cleanup = self.cleanup();
            for finding in cleanup.findings() {
                eprintln!("{finding}");
            }
        }
    }
}

/// What the cleanup did.
#[derive(Debug, Default)]
struct Cleanup {
    seconds: f64,
    /// How the supervised service was stopped.
    service: String,
    /// Processes found running from the sandbox after the service was stopped.
    stragglers: Vec<(i32, String)>,
    /// Those still there after SIGKILL.
    survivors: Vec<(i32, String)>,
    /// Why the sandbox could not be removed.
    removal: Option<String>,
}

impl Cleanup {
    fn summary(&self) -> String {
        let left = if self.stragglers.is_empty() {
            "no process left".to_owned()
        } else {
            format!(
                "{} process{} left running from the sandbox, killed",
                self.stragglers.len(),
                if self.stragglers.len() == 1 { "" } else { "es" }
            )
        };
        let removed = if self.removal.is_some() { "sandbox NOT removed" } else { "sandbox removed" };
        format!("{}, {left}, {removed}", self.service)
    }

    fn findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (pid, what) in &self.stragglers {
            let still = self.survivors.iter().any(|(p, _)| p == pid);
            findings.push(Finding::file(
                layout::HOOK,
                "rehearse.leftover",
                Severity::Error,
                format!(
                    "process {pid} ({what}) was still running from the sandbox after the service was stopped{}",
                    if still { ", and survived SIGKILL" } else { "; killed it" }
                ),
                "every process the hook starts must end with its event or belong to the service's process group",
            ));
        }
        if let Some(removal) = &self.removal {
            findings.push(Finding::file(
                layout::HOOK,
                "rehearse.cleanup",
                Severity::Error,
                removal.clone(),
                "remove the directory by hand",
            ));
        }
        findings
    }
}

/// `kill -SIG -- TARGET` (a pid, or `-PGID` for a process group).
fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|it| it.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn group_alive(pgid: i32) -> bool {
    pids().into_iter().any(|pid| ProcStat::of(pid).is_some_and(|s| s.pgrp == pgid && s.is_live()))
}

/// Stops the process group recorded in a pidfile of the hook (the process manager's or the socket
/// holder's, read by [`PidStart`]): SIGTERM, then SIGKILL after [`STOP_GRACE`]. Says what it did.
fn stop_service(pidfile: &Path) -> String {
    let Ok(text) = fs::read_to_string(pidfile) else { return "no service was running".into() };
    let Some((leader, _)) = PidStart::parse(&text) else {
        return format!("{} is unreadable", pidfile.display());
    };
    let pid = leader.pid;
    if !leader.alive() {
        return format!("the service (process {pid}) had already exited");
    }
    let group = format!("-{pid}");
    signal(&group, "TERM");
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && group_alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !group_alive(pid) {
        return format!("stopped the service (process group {pid}) with SIGTERM");
    }
    signal(&group, "KILL");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && group_alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("the service (process group {pid}) ignored SIGTERM for {}s; killed it", STOP_GRACE.as_secs())
}

/// Live processes whose cwd or executable is under `prefix`, with what points there.
fn processes_under(prefix: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let inside = |target: &str| {
        let target = target.strip_suffix(" (deleted)").unwrap_or(target);
        target == prefix || target.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
    };
    let mut found = Vec::new();
    for pid in pids() {
        if pid == me || ProcStat::of(pid).is_none_or(|s| !s.is_live()) {
            continue;
        }
        for link in ["cwd", "exe"] {
            let Ok(target) = fs::read_link(format!("/proc/{pid}/{link}")) else { continue };
            let target = target.display().to_string();
            if inside(&target) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                found.push((pid, format!("{}, {link} {target}", comm.trim())));
                break;
            }
        }
    }
    found
}

/// Starts `xtask verify --rehearse-janitor SANDBOX` in a process group of its own, so that a
/// Ctrl-C (or a kill) that ends this process before its cleanup still leaves nothing behind.
fn spawn_janitor(sandbox: &Path) -> Option<Child> {
    let exe = std::env::current_exe().ok()?;
    Command::new(exe)
        .args(["verify", "--rehearse-janitor"])
        .arg(sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// `--rehearse-janitor SANDBOX`: waits until the rehearsing process (the parent) is gone; if the
/// sandbox is still there, it died before its cleanup, so kill what runs from the sandbox and
/// remove it.
pub fn janitor(sandbox: &Path) -> ExitCode {
    let is_sandbox = sandbox.is_absolute()
        && sandbox.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("rehearse-"))
        && sandbox.join("root").is_dir();
    if !is_sandbox {
        eprintln!("error: {} is not a rehearsal sandbox", sandbox.display());
        return ExitCode::from(2);
    }
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent && sandbox.exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    if !sandbox.exists() {
        return ExitCode::SUCCESS;
    }
    let cleanup = clean(sandbox, None);
    eprintln!(
        "rehearse: the rehearsal ended before its cleanup; {} process{} killed, sandbox {} {}",
        cleanup.stragglers.len(),
        if cleanup.stragglers.len() == 1 { "" } else { "es" },
        sandbox.display(),
        if cleanup.removal.is_some() { "NOT removed" } else { "removed" }
    );
    ExitCode::SUCCESS
}
