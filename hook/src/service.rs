//! The service manager: systemd on an instance; `process` to run the unit's ExecStart as a plain
//! supervised process where no systemd runs (rehearsals, containers); or none (log only).

use std::{path::PathBuf, process::Command};

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

    /// Enables the unit when it is not enabled yet; returns whether it did.
    pub fn enable(&self, log: &Log) -> anyhow::Result<bool> {
        match self.manager {
            Manager::Systemd => {
                let enabled = systemctl(&["is-enabled", "--quiet", self.unit])?.status.success();
                if !enabled {
                    systemctl_ok(&["enable", "--quiet", self.unit])?;
                }
                Ok(!enabled)
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
            Manager::Systemd => systemctl_ok(&["restart", self.unit]),
            Manager::Process => self.supervisor.restart(&self.unit_file, log),
            Manager::None => {
                log.info(format!("service manager none: would run systemctl restart {}", self.unit));
                Ok(())
            }
        }
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
