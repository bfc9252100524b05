//! The tasks behind `cargo xtask`: `bundle` builds a CodeDeploy revision, `verify` checks one,
//! `publish` uploads it and deploys it with CodeDeploy.

mod bench;
mod bench_socket;
mod bundle;
mod elf;
pub mod exposure;
mod flags;
pub mod load;
pub mod publish;
mod rehearse;
pub mod verify;
pub mod wheels;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

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
        flags::Command::Publish(cmd) => return cmd.run(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first `name` on PATH (for verify's systemd-analyze and rehearse's qemu and uv).
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}
