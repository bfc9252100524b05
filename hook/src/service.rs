//! The service manager: systemd on an instance; `process` to run the unit's ExecStart as a plain
//! supervised process where no systemd runs (rehearsals, containers); or none (log only).

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context;

use crate::{process::Supervisor, util::Log};

/// Which service manager the hook drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// systemctl and journalctl on the host.
    Systemd,
    /// The unit's ExecStart run as the unit's user in a session of its own, with a pidfile and
    /// a log file under the app root.
    Process,
    /// No calls; every action is logged as what it would have been.
    None,
}

/// A unit, as one service manager sees it.
pub struct Service<'a> {
    /// Which manager.
    pub manager: Manager,
    /// The unit's name.
    pub unit: &'a str,
    /// The installed unit file (under the sandbox root).
    pub unit_file: PathBuf,
    /// For the process manager.
    pub supervisor: Supervisor,
    /// The release listens through the socket unit.
    pub socket_activation: bool,
    /// `<stem>.socket`, the socket unit's name whether or not the release uses it.
    pub socket: String,
    /// The installed socket unit file (under the sandbox root).
    pub socket_file: PathBuf,
    /// A marker (under /run, root's) that the installed socket unit changed while its socket
    /// was listening: the next restart re-binds it.
    pub socket_changed: PathBuf,
    /// A marker (under /run, root's, gone after a reboot, which reloads systemd anyway) that a
    /// unit file was written and systemd not yet reloaded: set before the write, cleared after
    /// the reload, so a failed or interrupted reload is redone by the next run.
    pub reload_pending: PathBuf,
}

fn systemctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("systemctl")
        .args(args)
        .output()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))
}

fn systemctl_ok(args: &[&str]) -> anyhow::Result<()> {
    let out = systemctl(args)?;
    if !out.status.success() {
        anyhow::bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Service<'_> {
    /// True when the unit file is installed.
    pub fn exists(&self) -> bool {
        self.unit_file.is_file()
    }

    /// Reloads systemd's view of unit files.
    pub fn daemon_reload(&self, log: &Log) -> anyhow::Result<()> {
        match self.manager {
            Manager::Systemd => systemctl_ok(&["daemon-reload"]),
            Manager::Process => Ok(()),
            Manager::None => {
                log.info("service manager none: would run systemctl daemon-reload");
                Ok(())
            }
        }
    }

    /// True when systemd's loaded unit (or socket unit) differs from the file on disk
    /// (`NeedDaemonReload=yes`), or when the pending marker says a reload did not finish.
    pub fn needs_reload(&self) -> anyhow::Result<bool> {
        if self.reload_pending.exists() {
            return Ok(true);
        }
        if self.manager != Manager::Systemd {
            return Ok(false);
        }
        let socket = self.socket_activation.then_some(self.socket.as_str());
        for unit in socket.into_iter().chain([self.unit]) {
            let out = systemctl(&["show", "--property=NeedDaemonReload", "--value", unit])?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "yes" {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sets (`true`) or clears the marker that a reload is owed.
    pub fn mark_reload_pending(&self, pending: bool) -> anyhow::Result<()> {
        let path = &self.reload_pending;
        if pending {
            let dir = path.parent().context("a marker has a directory")?;
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::write(path, b"").with_context(|| format!("cannot write {}", path.display()))
        } else {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Enables the unit when it is not enabled yet; returns whether it did.
    pub fn enable(&self, log: &Log) -> anyhow::Result<bool> {
        match self.manager {
            Manager::Systemd => {
                let mut did = false;
                let socket = self.socket_activation.then_some(self.socket.as_str());
                for unit in socket.into_iter().chain([self.unit]) {
                    if !systemctl(&["is-enabled", "--quiet", unit])?.status.success() {
                        systemctl_ok(&["enable", "--quiet", unit])?;
                        did = true;
                    }
                }
                Ok(did)
            }
            Manager::Process => Ok(false),
            Manager::None => {
                log.info(format!("service manager none: would run systemctl enable {}", self.unit));
                Ok(false)
            }
        }
    }

    /// Restarts (or starts) the unit.
    pub fn restart(&self, log: &Log) -> anyhow::Result<()> {
        match self.manager {
            Manager::Systemd if self.socket_activation => self.restart_behind_socket(log),
            Manager::Systemd => {
                self.retire_socket(log)?;
                systemctl_ok(&["restart", self.unit])
            }
            Manager::Process => {
                if !self.socket_activation && self.socket_file.exists() {
                    log.info(format!(
                        "this release does not use socket activation: removing {}",
                        self.socket_file.display()
                    ));
                    self.supervisor.stop(&self.unit_file, log)?;
                    let holder = crate::listen::Holder::new(&self.supervisor.state, &self.supervisor.root);
                    holder.stop(&self.socket_file, log);
                    fs::remove_file(&self.socket_file)?;
                }
                self.supervisor.restart(&self.unit_file, log)
            }
            Manager::None => {
                log.info(format!("service manager none: would run systemctl restart {}", self.unit));
                Ok(())
            }
        }
    }

    /// Installs `wanted` (from the archive or the root-owned copies) as `<stem>.socket` when the
    /// release uses socket activation and its bytes differ; marks it for re-binding at the next
    /// restart when its socket listens now.
    pub fn install_socket(&self, wanted: &[u8], log: &Log) -> anyhow::Result<bool> {
        if !self.socket_activation {
            return Ok(false);
        }
        if crate::fsx::read_trusted(&self.socket_file, 1 << 20).ok().as_deref() == Some(wanted) {
            return Ok(false);
        }
        let existed = self.socket_file.exists();
        crate::store::write_atomic(&self.socket_file, wanted, 0o644)?;
        log.info(format!("installed {}", self.socket_file.display()));
        if existed && self.is_active(&self.socket) {
            let dir = self.socket_changed.parent().context("a marker has a directory")?;
            fs::create_dir_all(dir)?;
            fs::write(&self.socket_changed, b"")?;
            log.info(format!(
                "{} listens on its old addresses until ApplicationStart re-binds it",
                self.socket
            ));
        }
        Ok(true)
    }

    fn is_active(&self, unit: &str) -> bool {
        match self.manager {
            Manager::Systemd => systemctl(&["is-active", "--quiet", unit]).is_ok_and(|o| o.status.success()),
            _ => false,
        }
    }

    /// systemd, socket activation: restart only the service while the socket keeps listening.
    /// When the socket is not listening yet (first deployment, or a host switching over from a
    /// unit that bound the ports itself) or its unit changed, the service lets go of the ports,
    /// the socket binds them, then the service starts: connections are refused in between.
    fn restart_behind_socket(&self, log: &Log) -> anyhow::Result<()> {
        let socket = self.socket.as_str();
        let changed = self.socket_changed.exists();
        if self.is_active(socket) && !changed {
            log.info(format!("{socket} keeps listening: connections wait while {} restarts", self.unit));
            return systemctl_ok(&["restart", self.unit]);
        }
        let started = std::time::Instant::now();
        let was_running = self.is_active(self.unit);
        if was_running {
            systemctl_ok(&["stop", self.unit])?;
        }
        systemctl_ok(&[if changed { "restart" } else { "start" }, socket])?;
        let gap = started.elapsed();
        let _ = fs::remove_file(&self.socket_changed);
        systemctl_ok(&["restart", self.unit])?;
        match (was_running, changed) {
            (true, false) => log.info(format!(
                "switched {} to socket activation: stopped it so {socket} could bind its ports, which were closed for at most {} ms; from now on only the service restarts",
                self.unit,
                gap.as_millis()
            )),
            (true, true) => log.info(format!(
                "{socket} changed: stopped {}, re-bound the socket ({} ms without a listener), started the service",
                self.unit,
                gap.as_millis()
            )),
            _ => log.info(format!("started {socket}, then {}", self.unit)),
        }
        Ok(())
    }

    /// systemd, no socket activation: a socket unit left by an earlier release would hold the
    /// ports this release binds itself, so it is stopped, disabled and removed first.
    fn retire_socket(&self, log: &Log) -> anyhow::Result<()> {
        if !self.socket_file.exists() {
            return Ok(());
        }
        systemctl_ok(&["stop", self.unit, &self.socket])?;
        let _ = systemctl(&["disable", "--quiet", &self.socket]);
        fs::remove_file(&self.socket_file)
            .with_context(|| format!("cannot remove {}", self.socket_file.display()))?;
        let _ = fs::remove_file(&self.socket_changed);
        systemctl_ok(&["daemon-reload"])?;
        log.info(format!(
            "this release binds its ports itself: stopped, disabled and removed {}",
            self.socket
        ));
        Ok(())
    }

    /// Stops the unit; a unit that is not running is fine.
    pub fn stop(&self, log: &Log) -> anyhow::Result<()> {
        match self.manager {
            Manager::Systemd => systemctl_ok(&["stop", self.unit]),
            Manager::Process => self.supervisor.stop(&self.unit_file, log),
            Manager::None => {
                log.info(format!("service manager none: would run systemctl stop {}", self.unit));
                Ok(())
            }
        }
    }

    /// `active`, `inactive`, `failed`… as the manager says it, or `unknown`.
    pub fn state(&self) -> String {
        match self.manager {
            Manager::Systemd => match systemctl(&["is-active", self.unit]) {
                Ok(out) if !out.stdout.is_empty() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                Ok(out) => {
                    let why = String::from_utf8_lossy(&out.stderr);
                    format!("unknown ({})", why.lines().next().unwrap_or("systemctl said nothing"))
                }
                Err(err) => format!("unknown ({err:#})"),
            },
            Manager::Process => self.supervisor.state(),
            Manager::None => "unknown (service manager none)".into(),
        }
    }

    /// For `status`: the socket unit's state and what it listens on, or `None` when the
    /// release does not use socket activation.
    pub fn socket_state(&self) -> Option<String> {
        if !self.socket_activation {
            return None;
        }
        let state = match self.manager {
            Manager::Systemd => match systemctl(&["is-active", &self.socket]) {
                Ok(out) if !out.stdout.is_empty() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                Ok(_) => "unknown (systemctl said nothing)".into(),
                Err(err) => format!("unknown ({err:#})"),
            },
            Manager::Process => crate::listen::Holder::new(&self.supervisor.state, &self.supervisor.root)
                .state(&self.socket_file),
            Manager::None => "unknown (service manager none)".into(),
        };
        let listen = fs::read_to_string(&self.socket_file)
            .map(|text| crate::listen::SocketSpec::parse(&text).listen.join(", "))
            .unwrap_or_default();
        Some(if listen.is_empty() { state } else { format!("{state}, listening on {listen}") })
    }

    /// The service's last log lines, for a failed health check.
    pub fn log_tail(&self, lines: usize) -> String {
        match self.manager {
            Manager::Systemd => Command::new("journalctl")
                .args(["--no-pager", "--quiet", "-o", "short-iso", "-n", &lines.to_string(), "-u", self.unit])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_else(|e| format!("cannot run journalctl: {e}")),
            Manager::Process => self.supervisor.log_tail(lines),
            Manager::None => String::new(),
        }
    }
}
