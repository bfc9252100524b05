//! `cargo xtask bundle`: build the static hook, render, and write the revision.

use std::path::{Path, PathBuf};

use anyhow::Context;
use packaging::bundle::{AppSource, Arch, Bundle};
use xshell::{Shell, cmd};

use crate::{check_static_elf, flags, project_root};

/// The hook must stay under this, in bytes, on x86_64 (1 MiB until the process manager's socket
/// holder took it to 1,049,920 bytes).
const HOOK_SIZE_BUDGET: u64 = 2 * 1024 * 1024;

impl flags::Bundle {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let cwd = sh.current_dir();
        let app_dir = cwd.join(&self.app);
        let out_dir = cwd.join(&self.out);
        // Check the app before the slow build, so bad input fails in milliseconds.
        let app = AppSource::load(&app_dir)?;
        if app.config.dependencies == packaging::config::Dependencies::Vendored {
            let requirements = app_dir.join(app.config.requirements.as_str());
            crate::wheels::check_pins(&requirements, &String::from_utf8_lossy(&app.requirements))?;
        }
        let (mtime, mtime_source) = source_date_epoch(&sh, &app_dir)?;
        let arches: &[Arch] = match self.target {
            flags::Target::X86_64 => &[Arch::X86_64],
            flags::Target::Aarch64 => &[Arch::Aarch64],
            flags::Target::All => &Arch::ALL,
        };
        let mut paths = Vec::new();
        for &arch in arches {
            let hook = build_hook(&sh, arch)?;
            let vendored = crate::wheels::for_app(&app, &app_dir, arch)?;
            let bundle = Bundle::new(&app, &hook, arch, vendored.as_ref())?;
            let written = bundle.write(&out_dir, mtime)?;
            let hook_size = std::fs::metadata(&hook)?.len();
            let shown = written.path.strip_prefix(&cwd).unwrap_or(&written.path).display().to_string();
            println!("bundle    {shown}");
            println!("  size      {} bytes", written.size);
            println!("  sha256    {}", written.sha256);
            println!("  revision  {}", bundle.revision);
            println!("  files     {}", bundle.file_count());
            println!("  hook      {} bytes, static {} ELF", hook_size, arch.name());
            match (&bundle.release.wheels, &vendored) {
                (Some(target), Some(v)) => println!(
                    "  wheels    {} for CPython {} ({}) {}; uv {}",
                    v.wheels.len(),
                    target.python_version,
                    target.abi,
                    target.platform,
                    target.uv_version
                ),
                _ => println!("  wheels    none (dependencies: index: the instances download them)"),
            }
            println!("  mtime     {mtime} ({mtime_source})");
            paths.push((shown, bundle));
        }
        println!();
        println!("To deploy (a hint; fill in the bucket and the deployment group):");
        for (path, bundle) in &paths {
            let app = bundle.release.app.as_str();
            let key = Path::new(path).file_name().unwrap().to_string_lossy();
            println!("  aws s3 cp {path} s3://BUCKET/{app}/{key}");
            println!(
                "  aws deploy create-deployment --application-name {app} --deployment-group-name GROUP \\\n      --s3-location bucket=BUCKET,key={app}/{key},bundleType=tgz"
            );
        }
        for (path, _) in &paths {
            println!("{path}");
        }
        Ok(())
    }
}

/// `$SOURCE_DATE_EPOCH`, else the last commit's time, else a fixed 1: never the clock.
fn source_date_epoch(sh: &Shell, app_dir: &Path) -> anyhow::Result<(u64, &'static str)> {
    if let Ok(value) = sh.var("SOURCE_DATE_EPOCH") {
        let epoch = value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"))?;
        return Ok((epoch, "SOURCE_DATE_EPOCH"));
    }
    let git = cmd!(sh, "git -C {app_dir} log -1 --format=%ct").quiet().ignore_stderr().read();
    match git.ok().and_then(|it| it.trim().parse().ok()) {
        Some(epoch) => Ok((epoch, "last commit")),
        None => Ok((1, "fixed: no SOURCE_DATE_EPOCH and no git history")),
    }
}

/// Builds deploy-hook for `arch` in release mode, installing the rustup target if missing.
pub(crate) fn build_hook(sh: &Shell, arch: Arch) -> anyhow::Result<PathBuf> {
    let triple = arch.triple();
    let installed = cmd!(sh, "rustup target list --installed").quiet().read().unwrap_or_default();
    if !installed.lines().any(|line| line.trim() == triple) {
        eprintln!("xtask: rustup target {triple} is missing; installing it (rustup target add {triple})");
        cmd!(sh, "rustup target add {triple}")
            .run()
            .with_context(|| format!("cannot install the rustup target {triple}"))?;
    }
    let root = project_root();
    let _dir = sh.push_dir(&root);
    let cargo = sh.var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd!(sh, "{cargo} build --quiet --release --locked --package hook --bin deploy-hook --target {triple}")
        .run()
        .with_context(|| format!("cannot build deploy-hook for {triple}"))?;
    let target_dir = sh.var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let target_dir = if target_dir.is_absolute() { target_dir } else { root.join(target_dir) };
    let hook = target_dir.join(triple).join("release/deploy-hook");
    let bytes = std::fs::read(&hook).with_context(|| format!("cannot read {}", hook.display()))?;
    check_static_elf(&bytes, arch.elf_machine())
        .with_context(|| format!("{}: not a static {} binary", hook.display(), arch.name()))?;
    if arch == Arch::X86_64 && bytes.len() as u64 > HOOK_SIZE_BUDGET {
        eprintln!("xtask: warning: {} is {} bytes, over the 2 MiB budget", hook.display(), bytes.len());
    }
    Ok(hook)
}
