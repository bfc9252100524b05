//! A real systemd in a throwaway `systemd-nspawn` container, for tests that must prove the hook
//! against the service manager it drives on an instance.
//!
//! The rootfs (Debian bookworm minbase + systemd, python3-venv, curl, user `snake` 1500:1500) and
//! a wheelhouse are built and cached by `tests/container/rootfs.sh` (see there). Every container
//! boots the same unpacked rootfs with `--volatile=overlay`, so writes inside vanish at power off
//! and tests cannot disturb one another; files get in and out through bind mounts ([`Bind`]).
//! The container has only `lo` (`--private-network`): install Python packages from the
//! wheelhouse at [`WHEELHOUSE`] with `--no-index --find-links`.
//!
//! A test that needs the container fails when it cannot boot. It may skip only when
//! `DEPLOY_TESTS_SKIP_SYSTEMD=1` is set ([`boot_or_skip`]).

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// Setting this to `1` lets tests that need the container skip (loudly) instead of failing.
pub const SKIP_ENV: &str = "DEPLOY_TESTS_SKIP_SYSTEMD";

/// Where the wheelhouse is mounted (read-only) in every container.
pub const WHEELHOUSE: &str = "/wheels";

/// The app user present in the rootfs.
pub const APP_USER: &str = "snake";
/// Its uid and gid.
pub const APP_UID: u32 = 1500;

/// PATH inside the container for [`Container::exec`] (nothing of the host's environment leaks in).
const GUEST_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// How long [`Container::exec`] lets a command run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a boot may take to reach `running`/`degraded`; `DEPLOY_TESTS_BOOT_TIMEOUT` (seconds)
/// overrides it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The cached artifacts made by `tests/container/rootfs.sh`.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Unpacked rootfs, shared read-only by all containers (they overlay it).
    pub rootfs: PathBuf,
    /// Directory of wheels: requirements of examples/python-app plus `uv`.
    pub wheelhouse: PathBuf,
}

/// The rootfs and wheelhouse, built or taken from the cache once per test process.
pub fn assets() -> Result<&'static Assets> {
    static ASSETS: OnceLock<std::result::Result<Assets, String>> = OnceLock::new();
    ASSETS.get_or_init(|| build_assets().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

fn build_assets() -> Result<Assets> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("container/rootfs.sh");
    // stderr is inherited: a cold cache takes minutes and says so.
    let output = Command::new("bash")
        .arg(&script)
        .arg("all")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(output.status.success(), "{} failed ({})", script.display(), output.status);
    let stdout = String::from_utf8(output.stdout).context("rootfs.sh printed non-UTF-8 paths")?;
    let mut lines = stdout.lines();
    let (Some(rootfs), Some(wheelhouse)) = (lines.next(), lines.next()) else {
        bail!("{} printed {stdout:?}, expected two paths", script.display());
    };
    let assets = Assets { rootfs: rootfs.into(), wheelhouse: wheelhouse.into() };
    ensure!(assets.rootfs.join("usr/lib/systemd/systemd").exists(), "no systemd in {}", rootfs);
    ensure!(assets.wheelhouse.is_dir(), "no wheelhouse at {wheelhouse}");
    Ok(assets)
}

/// A bind mount of a host directory (or file) into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub guest: PathBuf,
    pub read_only: bool,
}

impl Bind {
    /// Read-write: what the container writes there stays on the host.
    pub fn rw(host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Bind {
        Bind { host: host.into(), guest: guest.into(), read_only: false }
    }

    /// Read-only.
    pub fn ro(host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Bind {
        Bind { host: host.into(), guest: guest.into(), read_only: true }
    }

    fn nspawn_arg(&self) -> Result<String> {
        let host = self.host.to_str().context("bind source is not UTF-8")?;
        let guest = self.guest.to_str().context("bind target is not UTF-8")?;
        // nspawn splits the value on ':'; refuse what it would misread.
        ensure!(!host.contains(':') && !guest.contains(':'), "bind paths must not contain ':': {self:?}");
        ensure!(self.host.is_absolute() && self.guest.is_absolute(), "bind paths must be absolute: {self:?}");
        ensure!(self.host.exists(), "bind source {host} does not exist");
        let flag = if self.read_only { "--bind-ro" } else { "--bind" };
        Ok(format!("{flag}={host}:{guest}"))
    }
}

/// True (after printing why) when the systemd tests are told to skip.
pub fn skip_systemd(test: &str) -> bool {
    let skip = std::env::var(SKIP_ENV).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: {SKIP_ENV}=1 is set, so this test did not boot a systemd container");
    }
    skip
}

/// Boots a container for `test`, or returns `None` when [`SKIP_ENV`]`=1` (and says so). Without
/// that variable a failed boot is an error: the test fails, it never passes silently.
pub fn boot_or_skip(test: &str, binds: &[Bind]) -> Result<Option<Container>> {
    if skip_systemd(test) {
        return Ok(None);
    }
    Container::boot_with(test, binds).map(Some)
}

/// [`boot_or_skip`] without the wheelhouse: nothing in the container can supply a Python
/// package but what a deployment brings (and there is no network but `lo`).
pub fn boot_or_skip_offline(test: &str, binds: &[Bind]) -> Result<Option<Container>> {
    if skip_systemd(test) {
        return Ok(None);
    }
    Container::boot_inner(test, binds, false).map(Some)
}

/// The environment the CodeDeploy agent gives a hook (docs/codedeploy-agent.md, "The hook's environment"), with the group and
/// application names codedeploy-local would use.
pub fn agent_env<'a>(event: &'a str, deployment_id: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("LIFECYCLE_EVENT", event),
        ("DEPLOYMENT_ID", deployment_id),
        ("APPLICATION_NAME", "python-app"),
        ("DEPLOYMENT_GROUP_NAME", "LocalFleet"),
        ("DEPLOYMENT_GROUP_ID", "default-local-deployment-group"),
    ]
}

/// A booted container. Dropping it powers it off and removes every trace (processes, cgroups).
///
/// Boot one per test (it costs well under a second) and drop it in the thread that booted it:
/// nspawn is told to power off when that thread ends. There is no user namespace: uids inside
/// are the host's, so `chown 1500:1500` on the host makes a bound directory the app user's.
pub struct Container {
    name: String,
    nspawn: Child,
    init: u32,
    cgroups: Vec<PathBuf>,
    boot_time: Duration,
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Container {
    /// Boots a container with only the wheelhouse mounted.
    pub fn boot(name: &str) -> Result<Container> {
        Container::boot_with(name, &[])
    }

    /// Boots a container with the wheelhouse at [`WHEELHOUSE`] and `binds`, and waits until
    /// `systemctl is-system-running` says `running` or `degraded`.
    pub fn boot_with(name: &str, binds: &[Bind]) -> Result<Container> {
        Container::boot_inner(name, binds, true)
    }

    fn boot_inner(name: &str, binds: &[Bind], wheelhouse: bool) -> Result<Container> {
        let assets = assets()?;
        let start = Instant::now();
        let name = machine_name(name);
        let scratch = tempfile::Builder::new().prefix("deploy-tests-nspawn-").tempdir()?;
        let log = scratch.path().join("console.log");
        let console = fs::File::create(&log)?;

        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(&assets.rootfs)
            .args(["--boot", "--register=no", "--keep-unit", "--console=pipe", "--volatile=overlay"])
            .arg("--private-network")
            .arg(format!("--machine={name}"));
        if wheelhouse {
            cmd.arg(Bind::ro(&assets.wheelhouse, WHEELHOUSE).nspawn_arg()?);
        }
        for bind in binds {
            cmd.arg(bind.nspawn_arg()?);
        }
        cmd.stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);

        // With --keep-unit nspawn puts the container's cgroups below its own; give each container
        // a cgroup of its own, or parallel containers would share (and kill) each other's.
        sweep_stale_cgroups();
        let cgroups = create_cgroups(&name)?;
        let procs: Vec<CString> = cgroups
            .iter()
            .map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<std::result::Result<_, _>>()?;
        // SAFETY: the closure only calls async-signal-safe functions (open, write, close, prctl)
        // on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    join_cgroup(path)?;
                }
                // If the test process dies without dropping us (killed, aborted), nspawn powers
                // the container off instead of leaving it running.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let nspawn = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => {
                remove_cgroups(&cgroups);
                return Err(err).context("cannot start systemd-nspawn (apt-get install systemd-container)");
            }
        };
        // From here on, Drop cleans up whatever happens.
        let mut container =
            Container { name, nspawn, init: 0, cgroups, boot_time: Duration::ZERO, log, _scratch: scratch };
        let timeout = std::env::var("DEPLOY_TESTS_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(BOOT_TIMEOUT, Duration::from_secs);
        let deadline = start + timeout;
        container.init = container.wait_for_init(deadline)?;
        container.wait_until_running(deadline)?;
        container.boot_time = start.elapsed();
        Ok(container)
    }

    /// The machine name (also the container's host name): the requested name plus a unique tail.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID (on the host) of the container's systemd.
    pub fn init_pid(&self) -> u32 {
        self.init
    }

    /// From spawning nspawn to `running`/`degraded`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// What systemd and nspawn printed on the console so far.
    pub fn console_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `argv` inside the container (all its namespaces, its root), as root, with a clean
    /// environment holding only PATH.
    ///
    /// A command still running after [`EXEC_TIMEOUT`] is killed and the call fails: a hung
    /// command fails its test instead of hanging the run. See [`Container::exec_timeout`].
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.exec_timeout(argv, EXEC_TIMEOUT)
    }

    /// [`Container::exec`] with its own time limit (whole seconds, at least 1).
    pub fn exec_timeout(&self, argv: &[&str], limit: Duration) -> Result<Output> {
        ensure!(!argv.is_empty(), "exec needs a command");
        let secs = limit.as_secs().max(1).to_string();
        // coreutils timeout, inside the container: it kills the command's whole process group.
        let mut full = vec!["timeout", "--kill-after=5", &secs];
        full.extend_from_slice(argv);
        let start = Instant::now();
        let output =
            self.command(&full).output().with_context(|| format!("cannot run nsenter for {argv:?}"))?;
        if output.status.code() == Some(124) && start.elapsed() >= limit {
            bail!("in container {}: {argv:?} timed out after {limit:?}\n{}", self.name, describe(&output));
        }
        Ok(output)
    }

    /// [`Container::exec`] that fails unless the command exits 0; returns its stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let output = self.exec(argv)?;
        ensure!(
            output.status.success(),
            "in container {}: {argv:?} failed\n{}",
            self.name,
            describe(&output)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `argv` as a transient service the way the CodeDeploy agent runs a hook: as root, cwd
    /// `/`, with `env` set (see [`agent_env`]), waiting for it and passing its stdout, stderr and
    /// exit status through (`systemd-run --wait --pipe --quiet --collect`).
    pub fn systemd_run(&self, env: &[(&str, &str)], argv: &[&str]) -> Result<Output> {
        ensure!(!argv.is_empty(), "systemd_run needs a command");
        let mut full: Vec<String> =
            ["systemd-run", "--wait", "--pipe", "--quiet", "--collect"].map(String::from).into();
        for (key, value) in env {
            ensure!(!key.is_empty() && !key.contains('='), "bad environment variable name {key:?}");
            full.push(format!("--setenv={key}={value}"));
        }
        full.push("--".into());
        full.extend(argv.iter().map(|s| s.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.exec(&full)
    }

    /// One HTTP GET to `127.0.0.1:port` inside the container (curl there, 10 s limit). Returns
    /// the status and body; an error when no HTTP answer came (e.g. connection refused).
    pub fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        ensure!(path.starts_with('/'), "path must start with '/': {path:?}");
        let url = format!("http://127.0.0.1:{port}{path}");
        let output = self.exec(&[
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--output",
            "-",
            "--write-out",
            "\n%{http_code}",
            &url,
        ])?;
        ensure!(
            output.status.success(),
            "GET {url} in container {} failed\n{}",
            self.name,
            describe(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, code) = stdout.rsplit_once('\n').context("curl printed no status")?;
        let code = code.trim().parse().with_context(|| format!("curl printed status {code:?}"))?;
        Ok((code, body.to_string()))
    }

    /// Polls [`Container::http_get`] until an HTTP answer comes (any status) or `timeout` passes.
    pub fn wait_http(&self, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.http_get(port, path) {
                Ok(answer) => return Ok(answer),
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!("no HTTP answer on port {port} within {timeout:?}")));
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last `lines` journal lines of `unit`, for failure messages.
    pub fn journal(&self, unit: &str, lines: u32) -> String {
        let n = lines.to_string();
        match self.exec(&["journalctl", "--no-pager", "--quiet", "-n", &n, "-u", unit]) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(err) => format!("(journalctl failed: {err:#})"),
        }
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.init.to_string()).arg("-a").args(["env", "-i", GUEST_PATH]).args(argv);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn wait_for_init(&mut self, deadline: Instant) -> Result<u32> {
        let nspawn = self.nspawn.id();
        loop {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited ({status}) during boot\n{}", self.console_log());
            }
            if let Some(pid) = find_init(nspawn) {
                return Ok(pid);
            }
            ensure!(
                Instant::now() < deadline,
                "systemd did not start below systemd-nspawn in time\n{}",
                self.console_log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_until_running(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited ({status}) during boot\n{}", self.console_log());
            }
            let output = self.exec(&["systemctl", "is-system-running"])?;
            let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
            match state.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = self.exec(&["systemctl", "--failed", "--no-legend"])?;
                    eprintln!(
                        "container {}: degraded after boot:\n{}",
                        self.name,
                        String::from_utf8_lossy(&failed.stdout)
                    );
                    return Ok(());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]).map(|o| describe(&o));
                bail!(
                    "container {} not running in time: is-system-running says {state:?}\njobs: {}\nconsole:\n{}",
                    self.name,
                    jobs.unwrap_or_else(|e| format!("{e:#}")),
                    self.console_log()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits up to `timeout` for nspawn to exit.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let pid = self.nspawn.id() as libc::pid_t;
        if !self.wait_exit(Duration::ZERO) {
            let powered_off = self.init != 0
                && self.command(&["systemctl", "--no-block", "poweroff"]).output().is_ok()
                && self.wait_exit(Duration::from_secs(20));
            if !powered_off {
                if self.init != 0 {
                    eprintln!("container {}: no clean power off, sending SIGTERM to nspawn", self.name);
                }
                // SAFETY: plain syscall; pid is our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if !self.wait_exit(Duration::from_secs(10)) {
                    eprintln!("container {}: still there, SIGKILL", self.name);
                    if self.init != 0 {
                        // Killing a PID namespace's init kills everything in it.
                        // SAFETY: plain syscall.
                        unsafe { libc::kill(self.init as libc::pid_t, libc::SIGKILL) };
                    }
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                }
            }
        }
        // Nothing may outlive the container: kill any stragglers left in its cgroups.
        for dir in &self.cgroups {
            kill_cgroup_tree(dir);
        }
        remove_cgroups(&self.cgroups);
        let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
    }
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A valid, unique machine/host name starting with (a cleaned-up) `name`.
fn machine_name(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "test" } else { clean };
    format!("{clean}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The host PID of the process that is PID 1 in a new PID namespace, child of `nspawn`, once it
/// has exec'd systemd.
fn find_init(nspawn: u32) -> Option<u32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::split_whitespace);
        let ppid = field("PPid:").and_then(|mut f| f.next()).and_then(|s| s.parse::<u32>().ok());
        let nspid: Vec<&str> = field("NSpid:").map(Iterator::collect).unwrap_or_default();
        if ppid == Some(nspawn) && nspid.len() >= 2 && nspid.last() == Some(&"1") {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Some(pid);
            }
        }
    }
    None
}

/// The cgroup hierarchies nspawn uses: the named systemd v1 one and the v2 one (hybrid), or the
/// unified root alone.
fn cgroup_roots() -> Vec<PathBuf> {
    ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .filter(|root| root.join("cgroup.procs").exists())
        .collect()
}

/// Removes the cgroups of containers whose test process died without dropping them (nspawn
/// powered them off, but nobody removed the directories). Once per test process.
fn sweep_stale_cgroups() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        for root in cgroup_roots() {
            let Ok(entries) = fs::read_dir(root.join("deploy-tests")) else { continue };
            for entry in entries.flatten() {
                // Named by machine_name(): <name>-<pid of the test process>-<counter>.
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.rsplit('-').nth(1).and_then(|pid| pid.parse::<u32>().ok());
                if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let dir = entry.path();
                    kill_cgroup_tree(&dir);
                    remove_cgroups(std::slice::from_ref(&dir));
                }
            }
        }
    });
}

fn create_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for root in cgroup_roots() {
        let dir = root.join("deploy-tests").join(name);
        if let Err(err) = fs::create_dir_all(&dir) {
            remove_cgroups(&made);
            return Err(err).with_context(|| format!("cannot create cgroup {}", dir.display()));
        }
        made.push(dir);
    }
    Ok(made)
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Runs between fork
/// and exec: only async-signal-safe calls.
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: procs is a valid NUL-terminated path; the buffer is a static byte string.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}

fn kill_cgroup_tree(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_name() != "cgroup.procs" {
            continue;
        }
        for pid in fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                eprintln!("killing leftover process {pid} in {}", entry.path().display());
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Removes cgroup directories depth first (cgroupfs only allows rmdir of empty groups); waits a
/// little for killed processes to leave them.
fn remove_cgroups(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs {
        loop {
            let subdirs: Vec<PathBuf> = walkdir::WalkDir::new(dir)
                .contents_first(true)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_dir())
                .map(|e| e.into_path())
                .collect();
            let mut left = false;
            for sub in subdirs {
                left |= fs::remove_dir(&sub).is_err() && sub.exists();
            }
            if !left || Instant::now() >= deadline {
                if left {
                    eprintln!("cannot remove cgroup {}", dir.display());
                }
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}
