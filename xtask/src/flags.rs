//! The command line of `cargo xtask`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Build and check AWS CodeDeploy revisions of a hypercorn service.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build deploy-hook (static musl), render appspec.yml, the unit and hypercorn.toml from
    /// the app's deploy.yaml, and write a deterministic revision .tgz.
    ///
    /// The last line on stdout is the bundle's path (one line per bundle with --target all).
    /// The archive's mtime is $SOURCE_DATE_EPOCH, else the last commit's time, never the clock.
    Bundle(Bundle),
}

#[derive(Debug, clap::Args)]
pub struct Bundle {
    /// The app directory holding deploy.yaml.
    #[arg(long, value_name = "DIR", default_value = "examples/python-app")]
    pub app: PathBuf,
    /// The instances' architecture.
    #[arg(long, value_enum, default_value_t = Target::X86_64)]
    pub target: Target,
    /// Where the bundle is written.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
    #[value(name = "all")]
    All,
}
