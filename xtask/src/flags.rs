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
    /// Check a CodeDeploy EC2/on-prem revision (a .zip, .tgz or .tar bundle, or an extracted
    /// directory) the way the agent and the instance will read it.
    ///
    /// Reports every finding as `file:line:col: severity[rule]: message (fix: ...)`, then a
    /// summary line that counts apart the errors the deployment fails on and the traps the agent
    /// accepts. Exit status: 0 no errors (warnings and notes allowed), 1 errors, 2 could not run.
    Verify(Verify),
    /// Time bundling and redeploying against baselines run side by side (GNU tar | gzip, the
    /// seed's AfterInstall script) and print the ratios. Redeploy needs root.
    Bench(Bench),
    /// Upload a bundle to S3 and start its CodeDeploy deployment; with --wait, follow it to the
    /// end and print, for each failed instance, the failing event and the hook's last lines.
    ///
    /// Refuses a bundle `verify` finds errors in. Credentials, region and endpoints come from the
    /// aws CLI's standard chain (environment, profiles, web identity, instance roles;
    /// AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_S3 / _CODEDEPLOY). The last stdout line is the
    /// deployment id. Exit status: 0 created (with --wait: succeeded), 1 the deployment failed or
    /// was stopped, 2 it could not run (nothing deployed, or --wait lost track): fix what the
    /// message says.
    Publish(Publish),
}

#[derive(Debug, clap::Args)]
pub struct Publish {
    /// The bundle .tgz `cargo xtask bundle` wrote.
    pub bundle: PathBuf,
    /// The CodeDeploy application.
    #[arg(long, value_name = "APP")]
    pub application: String,
    /// The deployment group (EC2/On-premises).
    #[arg(long, value_name = "GROUP")]
    pub deployment_group: String,
    /// Where the revision goes: s3://BUCKET/PREFIX; the key is PREFIX/APP/APP-REVISION-ARCH.tgz.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub s3: String,
    /// Follow the deployment until it succeeds, fails or stops.
    #[arg(long)]
    pub wait: bool,
    /// The deployment's description [default: APP REVISION ARCH].
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// What the agent does with files of appspec `files:` already on the instance.
    #[arg(long, value_enum, value_name = "BEHAVIOR")]
    pub file_exists_behavior: Option<FileExistsBehavior>,
    /// The deployment configuration [default: the group's].
    #[arg(long, value_name = "NAME")]
    pub deployment_config: Option<String>,
    /// Print one JSON object on stdout at the end (bucket, key, sha256, etag, version,
    /// deployment_id, status, error); the progress lines go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Publish even when verify finds errors (says so loudly, and marks the description).
    #[arg(long)]
    pub allow_verify_errors: bool,
    /// Bundles larger than this many MiB go up in parts of this size (at least 5).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub part_size: u64,
    /// With --wait: seconds between polls.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub poll_interval: u64,
    /// With --wait: give up following after this many seconds (exit 1; the deployment goes on).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub wait_timeout: u64,
}

/// CreateDeployment's fileExistsBehavior.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileExistsBehavior {
    /// Fail the deployment (CodeDeploy's default).
    #[value(name = "DISALLOW")]
    Disallow,
    /// Replace the file with the revision's.
    #[value(name = "OVERWRITE")]
    Overwrite,
    /// Keep the file on the instance.
    #[value(name = "RETAIN")]
    Retain,
}

impl FileExistsBehavior {
    /// The API's value.
    pub fn api_name(self) -> &'static str {
        match self {
            FileExistsBehavior::Disallow => "DISALLOW",
            FileExistsBehavior::Overwrite => "OVERWRITE",
            FileExistsBehavior::Retain => "RETAIN",
        }
    }
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
    /// Redeploys under load without, then with socket activation.
    #[arg(long, default_value_t = 3)]
    pub redeploys: usize,
    /// Files in the large tgz that verify reads (every file hashed) against `tar -tzf`.
    #[arg(long, default_value_t = 20_000)]
    pub verify_files: usize,
    /// Its total size in MiB.
    #[arg(long, default_value_t = 150)]
    pub verify_mib: usize,
    /// Symlinks (and as many files) in the archive that must read in time linear in its entries.
    #[arg(long, default_value_t = 100_000)]
    pub links: usize,
    /// Run only this part [default: all of them].
    #[arg(long, value_enum)]
    pub only: Option<BenchPart>,
    /// Where to work: put it on the kind of filesystem the instances use.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Verify {
    /// The revision: a .zip, .tgz or .tar bundle, or an extracted directory.
    pub path: PathBuf,
    /// Print the findings as a JSON array (file, line, column, rule, severity, agent: fails or
    /// accepts, message, fix).
    #[arg(long)]
    pub json: bool,
    /// The instances' architecture, for ELF hooks [default: deploy/release.yaml's arch].
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Cap on the expanded size of the archive, in bytes; more is reported as a zip or gzip bomb.
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
pub enum BenchPart {
    Bundle,
    Verify,
    Redeploy,
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
