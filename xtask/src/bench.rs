//! `cargo xtask bench`: speed against baselines run side by side, printed as ratios. Never a
//! pass/fail threshold: the numbers are for people to read.
//!
//! - bundle: `packaging` writing the revision, vs GNU `tar | gzip -6` of the same tree;
//! - redeploy: deploy-hook AfterInstall of a new revision (venv reused), staging by hard links
//!   and by copies, vs the seed's AfterInstall script (sandboxed) on the same revision.
//!
//! File creation costs depend on the filesystem: put `--dir` on the kind of disk the instances
//! have (TESTBED.md: a journaled ext4 loop mount).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use packaging::bundle::{AppSource, Arch, Bundle};
use xshell::{Shell, cmd};

use crate::{bundle::build_hook, flags, project_root};

const APP_UID: u32 = 1500;

/// The seed's AfterInstall, with its paths moved under a sandbox root and its global
/// `pip install` pointed at an existing venv (where it reports "already satisfied", as on a
/// host that has the packages).
const SEED: &str = r#"set -e
ROOT=$1; CD_INSTALL_TARGET=$2; DEPLOYMENT_ID=$3; VENV=$4; APP=$ROOT/home/snake/app
cp "$CD_INSTALL_TARGET/configs/python-app.service" "$ROOT/etc/systemd/system/python-app.service"
if [ -d "$APP/current" ]; then rm -rf "$APP/current"; mkdir -p "$APP"; fi
mkdir -p "$APP/$DEPLOYMENT_ID/configs" "$APP/$DEPLOYMENT_ID/dependencies"
cp "$CD_INSTALL_TARGET/configs/sample.env" "$APP/$DEPLOYMENT_ID/.env"
cp "$CD_INSTALL_TARGET/configs/hypercorn.toml" "$APP/$DEPLOYMENT_ID/configs/hypercorn.toml"
cp "$CD_INSTALL_TARGET/dependencies/requirements.pip" "$APP/$DEPLOYMENT_ID/dependencies/requirements.pip"
cp -r "$CD_INSTALL_TARGET"/src/* "$APP/$DEPLOYMENT_ID/"
ln -s "$APP/$DEPLOYMENT_ID" "$APP/current"
"$VENV/bin/python" -m pip install --quiet -r "$APP/current/dependencies/requirements.pip"
chown -R 1500:1500 "$ROOT/home/snake/"
echo "[$(date)] after install step completed"
"#;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl flags::Bench {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let base = match &self.dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir(),
        };
        let work = tempfile::Builder::new().prefix("deploy-bench.").tempdir_in(&base)?;
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755))?;
        let app = work.path().join("app");
        make_app(&sh, &app, self.files, self.mib)?;
        let hook = build_hook(&sh, Arch::X86_64)?;
        println!(
            "bench: {} source files, {} MiB, {} runs each, in {}",
            self.files,
            self.mib,
            self.runs,
            work.path().display()
        );
        bench_bundle(&sh, &app, &hook, work.path(), self.runs)?;
        if crate::rehearse::effective_ids()?.0 != 0 {
            println!("redeploy: skipped (needs root: the hook and the seed chown to the app user)");
            return Ok(());
        }
        bench_redeploy(&sh, &app, &hook, work.path(), self.runs)
    }
}

/// The example app plus `files` source files of `mib` MiB in all, with deterministic content.
fn make_app(sh: &Shell, app: &Path, files: u64, mib: u64) -> anyhow::Result<()> {
    let example = project_root().join("examples/python-app");
    cmd!(sh, "cp -r {example} {app}").quiet().run()?;
    let per_file = ((mib << 20) / files.max(1)) as usize;
    for i in 0..files {
        let dir = app.join(format!("src/pkg/sub{:02}", i % 50));
        fs::create_dir_all(&dir)?;
        let line = format!("VALUE_{i} = {i}  # padding to make a realistic module\n");
        let body = line.repeat(per_file / line.len() + 1);
        fs::write(dir.join(format!("mod_{i:05}.py")), &body.as_bytes()[..per_file])?;
    }
    Ok(())
}

fn bench_bundle(sh: &Shell, app: &Path, hook: &Path, work: &Path, runs: u64) -> anyhow::Result<()> {
    let out = work.join("bundles");
    let tree = work.join("tree");
    let source = AppSource::load(app)?;
    let bundle = Bundle::new(&source, hook, Arch::X86_64)?;
    let written = bundle.write(&out, 1)?;
    fs::create_dir_all(&tree)?;
    let path = &written.path;
    cmd!(sh, "tar -xzf {path} -C {tree}").quiet().run()?;
    let (mut ours, mut gnu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let source = AppSource::load(app)?;
        Bundle::new(&source, hook, Arch::X86_64)?.write(&out, 1)?;
        ours.push(t.elapsed());
        let t = Instant::now();
        let gz = work.join("gnu.tgz");
        let status = Command::new("bash")
            .args(["-c", "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 -cf - -C \"$1\" . | gzip -6 -n > \"$2\"", "bash"])
            .arg(&tree)
            .arg(&gz)
            .status()?;
        ensure!(status.success(), "tar | gzip failed");
        gnu.push(t.elapsed());
    }
    let (ours, gnu) = (median(ours), median(gnu));
    println!(
        "bundle    ours {} | GNU tar | gzip -6 {} | ratio ours/baseline {:.2} ({} bytes)",
        secs(ours),
        secs(gnu),
        ours.as_secs_f64() / gnu.as_secs_f64(),
        written.size
    );
    Ok(())
}

fn bench_redeploy(sh: &Shell, app: &Path, hook: &Path, work: &Path, runs: u64) -> anyhow::Result<()> {
    let root = work.join("root");
    fs::create_dir_all(root.join("etc/systemd/system"))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("etc/passwd"), format!("snake:x:{APP_UID}:{APP_UID}::/home/snake:/bin/bash\n"))?;
    fs::write(root.join("etc/group"), format!("snake:x:{APP_UID}:\n"))?;
    let yaml = app.join("deploy.yaml");
    let text = fs::read_to_string(&yaml)?.replace("installer: auto", "installer: pip");
    fs::write(&yaml, text)?;

    let mut n = 0;
    // A new revision each time: one source file changes.
    let mut next_archive = |sh: &Shell| -> anyhow::Result<(PathBuf, String)> {
        n += 1;
        fs::write(app.join("src/BENCH_REVISION.txt"), format!("{n}\n"))?;
        let source = AppSource::load(app)?;
        let written = Bundle::new(&source, hook, Arch::X86_64)?.write(&work.join("bundles"), 1)?;
        let id = format!("d-BENCH{n:05}");
        let archive =
            root.join("opt/codedeploy-agent/deployment-root/bench").join(&id).join("deployment-archive");
        fs::create_dir_all(&archive)?;
        let path = written.path;
        cmd!(sh, "tar -zxpsf {path} -C {archive}").quiet().run()?;
        Ok((archive, id))
    };
    let run_hook = |archive: &Path, id: &str, stage: &str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let out = Command::new(archive.join("bin/deploy-hook"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LIFECYCLE_EVENT", "AfterInstall")
            .env("DEPLOYMENT_ID", id)
            .env("APPLICATION_NAME", "bench")
            .env("DEPLOYMENT_GROUP_NAME", "bench")
            .env("DEPLOYMENT_GROUP_ID", "bench")
            .env("DEPLOY_HOOK_ROOT", &root)
            .env("DEPLOY_HOOK_SERVICE_MANAGER", "none")
            .env("DEPLOY_HOOK_STAGE", stage)
            .output()?;
        let elapsed = t.elapsed();
        if !out.status.success() {
            bail!("deploy-hook failed:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(elapsed)
    };
    // The first deployment builds the venv from the index; it is not timed.
    let (archive, id) = next_archive(sh)?;
    run_hook(&archive, &id, "link").context("first deployment")?;
    let venv = fs::read_dir(root.join("home/snake/app/venvs"))?.next().context("a venv")??.path();

    let (mut link, mut copy, mut seed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (archive, id) = next_archive(sh)?;
        link.push(run_hook(&archive, &id, "link")?);
        let (archive, id) = next_archive(sh)?;
        copy.push(run_hook(&archive, &id, "copy")?);
        let (archive, id) = next_archive(sh)?;
        let t = Instant::now();
        let status = Command::new("bash")
            .args(["-c", SEED, "seed"])
            .arg(&root)
            .arg(&archive)
            .arg(&id)
            .arg(&venv)
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "the seed script failed");
        seed.push(t.elapsed());
        // The seed leaves `current` a real-path link to its directory; give it back to the hook.
        let current = root.join("home/snake/app/current");
        let _ = fs::remove_file(&current);
    }
    let (link, copy, seed) = (median(link), median(copy), median(seed));
    println!(
        "redeploy  hook (link) {} | hook (copy) {} | seed script {} | ratios link/seed {:.2}, copy/seed {:.2}, link/copy {:.2}",
        secs(link),
        secs(copy),
        secs(seed),
        link.as_secs_f64() / seed.as_secs_f64(),
        copy.as_secs_f64() / seed.as_secs_f64(),
        link.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "          (the hook also verifies every file's sha256, locks, fsyncs, checks imports, journals and prunes; the seed does none of it)"
    );
    Ok(())
}
