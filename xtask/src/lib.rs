//! The tasks behind `cargo xtask`: `bundle` builds a CodeDeploy revision.

mod bench;
mod bundle;
mod elf;
mod flags;
mod rehearse;
pub mod verify;
pub mod wheels;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

pub use elf::{StaticElf, check_static_elf};

/// The workspace root: xtask lives one level below it.
pub fn project_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Parses the command line, runs the task, prints errors, returns the exit code.
pub fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    let res = match flags.command {
        flags::Command::Bundle(cmd) => cmd.run(),
        flags::Command::Bench(cmd) => cmd.run(),
        flags::Command::Verify(cmd) => return cmd.run(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
