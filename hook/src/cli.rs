//! Command-line parsing and dispatch.

use std::{ffi::OsString, io::Write, path::PathBuf, process::ExitCode};

use appspec::LifecycleEvent;
use clap::{Parser, Subcommand};

use crate::{
    after_install,
    context::{Ctx, Revision, hook_env},
    service::Manager,
    util::{Log, install_signal_handlers},
};

/// Installs a hypercorn service revision during each AWS CodeDeploy lifecycle event.
///
/// The CodeDeploy agent runs this binary with no arguments: it reads $LIFECYCLE_EVENT,
/// $DEPLOYMENT_ID and the revision it belongs to (found from its own path), and does that
/// event's work. A subcommand runs one step by hand. The last line printed is the verdict.
#[derive(Debug, Parser)]
#[command(name = "deploy-hook", version, about, long_about)]
pub struct Cli {
    /// Put every instance-side absolute path (app root, /etc/systemd/system, /etc/passwd,
    /// /etc/group) under DIR, to run a whole deployment in a sandbox.
    #[arg(long, global = true, value_name = "DIR", env = "DEPLOY_HOOK_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// How services are driven: systemd, or none (no systemctl call; log what would be done).
    #[arg(long, global = true, value_enum, env = "DEPLOY_HOOK_SERVICE_MANAGER", default_value = "systemd")]
    pub service_manager: Manager,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Steps run by hand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the release of this binary's revision and switch `current` to it (what the agent's
    /// AfterInstall event does). Needs $DEPLOYMENT_ID.
    AfterInstall,
}

/// Parses `args`, runs, and returns the process's exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let ctx = Ctx { root: cli.root.clone(), manager: cli.service_manager };
    let event = match &cli.command {
        Some(Command::AfterInstall) => Ok(LifecycleEvent::AfterInstall),
        None => match std::env::var("LIFECYCLE_EVENT") {
            Ok(name) => LifecycleEvent::from_name(&name).ok_or(name),
            Err(_) => {
                eprintln!("deploy-hook: no subcommand and no $LIFECYCLE_EVENT; see deploy-hook --help");
                return ExitCode::from(2);
            }
        },
    };
    match event {
        Ok(LifecycleEvent::AfterInstall) => finish("after-install", run_after_install(&ctx)),
        Ok(other) => finish("deploy-hook", Err(anyhow::format_err!("the {other} event is not handled yet"))),
        Err(name) => {
            println!("deploy-hook: nothing is configured for the lifecycle event {name:?}; exiting 0");
            ExitCode::SUCCESS
        }
    }
}

fn run_after_install(ctx: &Ctx) -> anyhow::Result<String> {
    install_signal_handlers();
    let mut log = Log::new("after-install");
    let env = hook_env()?;
    let revision = Revision::of_this_binary()?;
    log.info(format!(
        "deployment {} of {} ({}), revision {}",
        env.deployment_id, env.application_name, env.deployment_group_name, revision.id
    ));
    after_install::run(ctx, &revision, &env.deployment_id, &mut log)
}

/// Prints the verdict as the very last line (the console shows only the last ~2 KB).
fn finish(what: &str, res: anyhow::Result<String>) -> ExitCode {
    let code = match res {
        Ok(verdict) => {
            println!("{verdict}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let detail = format!("{err:#}");
            if detail.contains('\n') {
                println!("{detail}");
            }
            let first = detail.lines().next().unwrap_or_default();
            println!("{what} failed: {first}");
            ExitCode::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    code
}
