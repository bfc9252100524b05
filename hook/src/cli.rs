//! Command-line parsing and dispatch.

use std::{ffi::OsString, io::Write, path::PathBuf, process::ExitCode};

use appspec::LifecycleEvent;
use clap::{Parser, Subcommand};

use crate::{
    after_install,
    context::{Ctx, Revision, hook_env},
    lifecycle,
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
    /// How services are driven: systemd, process (the unit's ExecStart supervised directly, where
    /// no systemd runs), or none (no call; log what would be done).
    #[arg(long, global = true, value_enum, env = "DEPLOY_HOOK_SERVICE_MANAGER", default_value = "systemd")]
    pub service_manager: Manager,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Steps run by hand, and commands for outside CodeDeploy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// ApplicationStop: stop the service when deploy.yaml asks for it; never fails.
    ApplicationStop,
    /// BeforeInstall: preflight (user, group, interpreter, free space, lock) and cleanup of
    /// what interrupted runs left.
    BeforeInstall,
    /// AfterInstall: build the release of this binary's revision and switch `current` to it.
    /// Needs $DEPLOYMENT_ID.
    AfterInstall,
    /// ApplicationStart: enable the unit if needed, then restart it.
    ApplicationStart,
    /// ValidateService: poll the health URL; on failure go back to the previous good release
    /// and mark this one bad. Needs $DEPLOYMENT_ID.
    ValidateService,
    /// Show the current and previous release, every release's state and the service's state.
    Status {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous good release (or --to one), restart it and check its health.
    Rollback {
        /// The release to go back to (a revision id, as `status` lists them).
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
        /// Go back even to a release marked bad or failed, or missing from the journal.
        #[arg(long)]
        force: bool,
    },
    /// Remove old releases and unused venvs, keeping N good releases plus the current and
    /// previous ones.
    Prune {
        /// How many good releases to keep (default: keep_releases of deploy.yaml).
        #[arg(long, value_name = "N")]
        keep: Option<u32>,
    },
    /// The process manager's socket holder (started by the hook itself): binds SOCKET_FILE's
    /// addresses and hands them to each new service process.
    #[command(hide = true)]
    ListenHolder {
        /// The socket unit to bind.
        socket_file: PathBuf,
        /// The control socket to serve the descriptors on.
        control: PathBuf,
        /// Where to write `pid start fingerprint`.
        pidfile: PathBuf,
    },
}

/// Parses `args`, runs, and returns the process's exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let ctx = Ctx { root: cli.root.clone(), manager: cli.service_manager };
    let event = match cli.command {
        Some(Command::ApplicationStop) => LifecycleEvent::ApplicationStop,
        Some(Command::BeforeInstall) => LifecycleEvent::BeforeInstall,
        Some(Command::AfterInstall) => LifecycleEvent::AfterInstall,
        Some(Command::ApplicationStart) => LifecycleEvent::ApplicationStart,
        Some(Command::ValidateService) => LifecycleEvent::ValidateService,
        Some(Command::Status { json }) => {
            return finish(
                "status",
                Revision::of_this_binary().and_then(|rev| lifecycle::status(&ctx, &rev, json)),
            );
        }
        Some(Command::Rollback { to, force }) => {
            install_signal_handlers();
            let mut log = Log::new("rollback");
            let res = Revision::of_this_binary()
                .and_then(|rev| lifecycle::rollback(&ctx, &rev, to.as_deref(), force, &mut log));
            return finish("rollback", res);
        }
        Some(Command::Prune { keep }) => {
            let mut log = Log::new("prune");
            return finish(
                "prune",
                Revision::of_this_binary().and_then(|rev| lifecycle::prune_cmd(&ctx, &rev, keep, &mut log)),
            );
        }
        Some(Command::ListenHolder { socket_file, control, pidfile }) => {
            return match crate::listen::holder_main(&cli.root, &socket_file, &control, &pidfile) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        None => match std::env::var("LIFECYCLE_EVENT") {
            Ok(name) => match LifecycleEvent::from_name(&name) {
                Some(event) => event,
                None => {
                    println!(
                        "deploy-hook: nothing is configured for the lifecycle event {name:?}; exiting 0"
                    );
                    return ExitCode::SUCCESS;
                }
            },
            Err(_) => {
                eprintln!("deploy-hook: no subcommand and no $LIFECYCLE_EVENT; see deploy-hook --help");
                return ExitCode::from(2);
            }
        },
    };
    install_signal_handlers();
    let name = match event {
        LifecycleEvent::ApplicationStop => "application-stop",
        LifecycleEvent::BeforeInstall => "before-install",
        LifecycleEvent::AfterInstall => "after-install",
        LifecycleEvent::ApplicationStart => "application-start",
        LifecycleEvent::ValidateService => "validate-service",
        other => {
            println!("deploy-hook: nothing is configured for the lifecycle event {other}; exiting 0");
            return ExitCode::SUCCESS;
        }
    };
    let mut log = Log::new(name);
    // ApplicationStop runs the previous revision's binary with the new deployment's id; it
    // needs no id and must never fail, whatever state that old revision is in.
    if event == LifecycleEvent::ApplicationStop {
        // Verified first, as in every event: its release.yaml names the unit and the app root.
        let verdict = match Revision::of_this_binary().and_then(|r| r.verify().map(|_| r)) {
            Ok(revision) => lifecycle::application_stop(&ctx, &revision, &log),
            Err(err) => format!(
                "application-stop ok, with a warning (a failed stop must not block deployments): {err:#}"
            ),
        };
        return finish(name, Ok(verdict));
    }
    let res = (|| -> anyhow::Result<String> {
        let revision = Revision::of_this_binary()?;
        let env = hook_env()?;
        log.info(format!(
            "{event} of deployment {} ({} / {}), revision {}",
            env.deployment_id, env.application_name, env.deployment_group_name, revision.id
        ));
        match event {
            LifecycleEvent::BeforeInstall => lifecycle::before_install(&ctx, &revision, &mut log),
            LifecycleEvent::AfterInstall => after_install::run(&ctx, &revision, &env.deployment_id, &mut log),
            // Nothing is read from the revision (release.yaml names the unit, the app root, the
            // health URL) or written anywhere before every file matches the MANIFEST.
            LifecycleEvent::ApplicationStart => {
                log.step("verify revision", |_| revision.verify())?;
                lifecycle::application_start(&ctx, &revision, &mut log)
            }
            _ => {
                log.step("verify revision", |_| revision.verify())?;
                lifecycle::validate_service(&ctx, &revision, &env.deployment_id, &mut log)
            }
        }
    })();
    finish(name, res)
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
