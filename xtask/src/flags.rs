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
    /// Check a CodeDeploy EC2/on-prem revision (a .tgz or .tar bundle, or an extracted
    /// directory) the way the agent and the instance will read it.
    ///
    /// Reports every finding as `file:line:col: severity[rule]: message (fix: ...)`, then a
    /// summary line. Exit status: 0 no errors (warnings allowed), 1 errors, 2 could not run.
    Verify(Verify),
    /// Time bundling and redeploying against baselines run side by side (GNU tar | gzip, the
    /// seed's AfterInstall script) and print the ratios. Redeploy needs root.
    Bench(Bench),
}

#[derive(Debug, clap::Args)]
pub struct Bench {
    /// Source files in the synthetic app.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub files: u64,
    /// Their total size in MiB.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub mib: u64,
    /// Timed runs of each variant (the median is printed).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub runs: u64,
    /// Where to work: put it on the kind of filesystem the instances use.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Verify {
    /// The revision: a .tgz or .tar bundle, or an extracted directory.
    pub path: PathBuf,
    /// Print the findings as a JSON array (file, line, column, rule, severity, message, fix).
    #[arg(long)]
    pub json: bool,
    /// The instances' architecture, for ELF hooks [default: deploy/release.yaml's arch].
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Cap on the expanded size of the archive, in bytes; more is reported as a gzip bomb.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 30)]
    pub max_expanded: u64,
    /// After clean static checks, rehearse our revision's whole lifecycle (ApplicationStop to
    /// ValidateService) in a temporary sandbox root: the bundle's own deploy-hook with the
    /// process service manager, a real venv from the package index and a real hypercorn. Prints
    /// each event's time and verdict, and leaves no process or file behind. Needs the
    /// interpreter of release.yaml, the health check's port free, and an x86_64 hook (or
    /// qemu-aarch64-static). With --json the output becomes {"findings": [...], "rehearsal": {...}}.
    #[arg(long)]
    pub rehearse: bool,
    /// Internal, started by --rehearse: once the rehearsing process is gone, kill what still
    /// runs from the sandbox PATH and remove it, unless that process did.
    #[arg(long, hide = true)]
    pub rehearse_janitor: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Xtask;

    /// Out-of-range bench sizes are refused by the parser, naming the flag, instead of
    /// panicking later (a median of no runs, a shift past usize).
    #[test]
    fn bench_refuses_out_of_range_counts() {
        for (flag, value) in [("--runs", "0"), ("--files", "0"), ("--mib", "99999999999999")] {
            let err = Xtask::try_parse_from(["cargo xtask", "bench", flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains(value), "{flag} {value}: {err}");
        }
        Xtask::try_parse_from(["cargo xtask", "bench", "--runs", "1", "--files", "1", "--mib", "0"]).unwrap();
    }
}
