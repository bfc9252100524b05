//! Command-line parsing and dispatch.

use std::{ffi::OsString, process::ExitCode};

use clap::Parser;

/// Installs a hypercorn service revision during each AWS CodeDeploy lifecycle event.
///
/// The CodeDeploy agent runs this binary with no arguments; it reads $LIFECYCLE_EVENT and the
/// revision it belongs to (found from its own path). Subcommands run one step by hand.
#[derive(Debug, Parser)]
#[command(name = "deploy-hook", version, about, long_about)]
pub struct Cli {}

/// Parses `args`, runs, and returns the process's exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let _cli = Cli::parse_from(args);
    eprintln!("deploy-hook: lifecycle events are not handled yet");
    ExitCode::FAILURE
}
