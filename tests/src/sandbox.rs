//! A sandboxed instance: a root directory laid out as the CodeDeploy agent lays out a host, with
//! its own etc/passwd and etc/group mapping the app user `snake` to uid and gid 1500, and the
//! real `deploy-hook` from a bundle run with the agent's environment and `--root`.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::run_ok;

/// The uid and gid of the app user in every sandbox.
pub const APP_UID: u32 = 1500;

/// One sandboxed instance.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    /// What `--root` points at.
    pub root: PathBuf,
    /// Directories put first on the hook's PATH (for uv).
    pub path_dirs: Vec<PathBuf>,
}

/// The agent's deployment group id in every sandbox.
pub const GROUP_ID: &str = "7f5e0a4b-group";

impl Sandbox {
    /// A new, empty instance root (mode 0755, so the app user can reach its home).
    pub fn new() -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc"))?;
        for p in [dir.path(), root.as_path()] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(
            root.join("etc/passwd"),
            format!("root:x:0:0:root:/root:/bin/bash\nsnake:x:{APP_UID}:{APP_UID}::/home/snake:/bin/bash\n"),
        )?;
        fs::write(root.join("etc/group"), format!("root:x:0:\nsnake:x:{APP_UID}:\n"))?;
        // The app user's home, as on an instance: theirs, so they could rename the app root.
        let home = root.join("home/snake");
        fs::create_dir_all(&home)?;
        std::os::unix::fs::chown(&home, Some(APP_UID), Some(APP_UID))?;
        Ok(Sandbox { _dir: dir, root, path_dirs: Vec::new() })
    }

    /// `<root>/home/snake/app`.
    pub fn app_root(&self) -> PathBuf {
        self.root.join("home/snake/app")
    }

    /// `<root>/var/lib/deploy-hook/python-app`: the hook's root-owned state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/deploy-hook/python-app")
    }

    /// Extracts `bundle` with the agent's command where the agent puts it for `deployment_id`,
    /// and returns the deployment-archive directory.
    pub fn extract(&self, bundle: &Path, deployment_id: &str) -> anyhow::Result<PathBuf> {
        let archive = self
            .root
            .join("opt/codedeploy-agent/deployment-root")
            .join(GROUP_ID)
            .join(deployment_id)
            .join("deployment-archive");
        fs::create_dir_all(&archive)?;
        run_ok(Command::new("/bin/tar").arg("-zxpsf").arg(bundle).current_dir(&archive))?;
        Ok(archive)
    }

    /// The archive's hook, run as the agent runs it: no arguments, cwd `/`, the lifecycle
    /// environment, plus `--root` and `--service-manager none`.
    pub fn hook(&self, archive: &Path, event: &str, deployment_id: &str) -> Command {
        let mut cmd = Command::new(archive.join("bin/deploy-hook"));
        let mut path = std::env::join_paths(&self.path_dirs).unwrap_or_default();
        if !path.is_empty() {
            path.push(":");
        }
        path.push("/usr/local/bin:/usr/bin:/bin");
        cmd.env_clear()
            .env("PATH", path)
            .env("LIFECYCLE_EVENT", event)
            .env("DEPLOYMENT_ID", deployment_id)
            .env("APPLICATION_NAME", "python-app")
            .env("DEPLOYMENT_GROUP_NAME", "sandbox")
            .env("DEPLOYMENT_GROUP_ID", GROUP_ID)
            .env("DEPLOY_HOOK_ROOT", &self.root)
            .env("DEPLOY_HOOK_SERVICE_MANAGER", "none")
            .current_dir("/");
        cmd
    }

    /// Extracts `bundle` and runs its AfterInstall; returns the output whatever the status.
    pub fn after_install(&self, bundle: &Path, deployment_id: &str) -> anyhow::Result<Output> {
        let archive = self.extract(bundle, deployment_id)?;
        Ok(self.hook(&archive, "AfterInstall", deployment_id).output()?)
    }

    /// The revision `current` points at.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.app_root().join("current")).ok()?;
        Some(target.to_str()?.strip_prefix("releases/")?.to_owned())
    }

    /// Every journal record.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.state_dir().join("journal.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("a journal line is JSON")).collect()
    }

    /// Names in `releases/` and `venvs/`.
    pub fn listing(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.app_root().join(dir))
            .map(|it| it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Copies the uv binary (from the uv package of the PyPI index, installed for the tests)
    /// where the app user can run it, and puts it on the hook's PATH.
    pub fn provide_uv(&mut self) -> anyhow::Result<()> {
        let out = run_ok(Command::new("python3").args(["-c", "import uv; print(uv.find_uv_bin())"]))
            .context("uv is needed: python3 -m pip install uv")?;
        let uv = String::from_utf8(out.stdout)?.trim().to_owned();
        let dir = self.root.parent().unwrap().join("tools");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        fs::copy(&uv, dir.join("uv"))?;
        fs::set_permissions(dir.join("uv"), fs::Permissions::from_mode(0o755))?;
        self.path_dirs.push(dir);
        Ok(())
    }

    /// Starts the service as its unit's ExecStart would, as the app user, in `current`, with
    /// the unit's absolute paths moved under the sandbox root. Killed when dropped.
    pub fn start_service(&self, unit_name: &str) -> anyhow::Result<Service> {
        let current = self.app_root().join("current");
        let unit = fs::read_to_string(current.join("configs").join(unit_name))?;
        let words = packaging::unit_file::exec_start(&unit).context("the unit has no ExecStart")?;
        let program = self.root.join(words[0].trim_start_matches('/'));
        let log = fs::File::create(self.root.parent().unwrap().join("service.log"))?;
        let mut cmd = Command::new(&program);
        // With socket activation hypercorn binds fd://3...: pass the socket unit's addresses
        // there, as systemd does.
        let socket = current.join("configs").join(unit_name.replace(".service", ".socket"));
        if let Ok(text) = fs::read_to_string(&socket) {
            let mut listeners = Vec::new();
            let socket = packaging::unit_file::section(&text, "Socket");
            for addr in socket.filter(|e| e.key == "ListenStream").map(|e| e.value) {
                let listener =
                    std::net::TcpListener::bind(&addr).with_context(|| format!("cannot bind {addr}"))?;
                // Above any number the child's fds 3.. take, so dup2 overwrites none of them.
                // SAFETY: fcntl duplicates a descriptor we own; the copy is owned from here on.
                let high = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
                anyhow::ensure!(high >= 0, "fcntl: {}", std::io::Error::last_os_error());
                listeners.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(high) });
            }
            // SAFETY: only dup2 between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    for (i, fd) in listeners.iter().enumerate() {
                        if libc::dup2(fd.as_raw_fd(), 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(&words[1..])
            .current_dir(fs::canonicalize(&current)?)
            .env_clear()
            .envs(read_env(&self.state_dir().join("service.env")))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .uid(APP_UID)
            .gid(APP_UID)
            // hypercorn's workers are its children: a group of their own, killed together.
            .process_group(0)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Service { child })
    }
}

fn read_env(path: &Path) -> Vec<(String, String)> {
    packaging::env_file::parse(&fs::read_to_string(path).unwrap_or_default())
}

/// A service process, killed when dropped.
pub struct Service {
    child: std::process::Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Processes whose environment carries deploy-hook's run mark for `app_root`: children of a
/// hook run (pip, uv, post-install commands), which must not outlive it.
pub fn marked_processes(app_root: &Path) -> Vec<String> {
    let mark = format!("DEPLOY_HOOK_RUN={}", app_root.display());
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(environ) = fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == mark.as_bytes()) {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// GET `http://127.0.0.1:<port><path>` with HTTP/1.0, retried until `deadline`; returns the
/// status and body.
pub fn http_get(port: u16, path: &str, deadline: Duration) -> anyhow::Result<(u16, String)> {
    let start = Instant::now();
    loop {
        match try_get(port, path) {
            Ok(res) => return Ok(res),
            Err(err) if start.elapsed() > deadline => bail!("GET {path} on port {port}: {err:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn try_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).context("no status line")?.parse()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A copy of the example app with `edits` applied to deploy.yaml (`from` -> `to` pairs) and
/// bound to `port`.
pub fn example_variant(port: u16, edits: &[(&str, &str)]) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let app = dir.path().join("app");
    crate::copy_tree(&crate::example_app(), &app)?;
    let yaml_path = app.join("deploy.yaml");
    let mut yaml = fs::read_to_string(&yaml_path)?.replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    for (from, to) in edits {
        if !yaml.contains(from) {
            bail!("deploy.yaml lacks {from:?}");
        }
        yaml = yaml.replacen(from, to, 1);
    }
    fs::write(&yaml_path, yaml)?;
    Ok((dir, app))
}

/// The example app on `port` (vendored, its default), bundled twice: revision A, then B whose
/// app.py greets "hello B". Returns the scratch directory (keep it), the app and both bundles.
pub fn revisions_a_and_b(port: u16) -> anyhow::Result<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> {
    let (dir, app) = example_variant(port, &[])?;
    let a = crate::build_bundle(&app, &dir.path().join("a"), &[])?;
    crate::edit_file(&app, "src/app.py", "hello", "hello B");
    let b = crate::build_bundle(&app, &dir.path().join("b"), &[])?;
    Ok((dir, app, a, b))
}
