//! The service manager: systemd on an instance, or none (log what would be done).

use std::process::Command;

use anyhow::Context;

use crate::util::Log;

/// Which service manager the hook drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// systemctl on the host.
    Systemd,
    /// No calls; every action is logged as what it would have been.
    None,
}

impl Manager {
    /// Runs `systemctl ARGS` (or logs it).
    pub fn systemctl(self, log: &Log, args: &[&str]) -> anyhow::Result<()> {
        match self {
            Manager::None => {
                log.info(format!("service manager none: would run systemctl {}", args.join(" ")));
                Ok(())
            }
            Manager::Systemd => {
                let out = Command::new("systemctl")
                    .args(args)
                    .output()
                    .with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
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
        }
    }
}
