//! `cargo xtask bench`: speed against baselines run side by side, printed as ratios. Never a
//! pass/fail threshold: the numbers are for people to read.
//!
//! - bundle: `packaging` writing the revision (wheels and uv included), vs GNU `tar -czf` and
//!   `tar | pigz -6` of the same extracted tree, checking the bundle is byte-identical each run;
//! - first deploy: deploy-hook AfterInstall on a fresh host with the bundled uv and wheels, vs
//!   the seed's script pip-installing from the package index;
//! - restarts: requests refused, reset or failed during N redeploys without and with socket
//!   activation (`bench_socket.rs`);
//! - redeploy: deploy-hook AfterInstall of a new revision (venv reused), staging by hard links
//!   and by copies, vs the seed's AfterInstall script (sandboxed) on the same revision;
//! - verify: `cargo xtask verify` of a large foreign tgz (every file hashed) vs `tar -tzf` of the
//!   same file, and of an archive of N symlinks and N files vs a benign one of 2N files (reading
//!   must stay linear in the entries).
//!
//! File creation costs depend on the filesystem: put `--dir` on the kind of disk the instances
//! have (a journaled ext4 loop mount; see README).

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
        let part = |p: flags::BenchPart| self.only.is_none_or(|only| only == p);
        if part(flags::BenchPart::Bundle) {
            bench_bundle(&sh, &app, &hook, work.path(), self.runs)?;
        }
        if part(flags::BenchPart::Verify) {
            bench_verify(work.path(), self.verify_files, self.verify_mib, self.links, self.runs)?;
        }
        if !part(flags::BenchPart::Redeploy) {
            return Ok(());
        }
        if crate::rehearse::effective_ids()?.0 != 0 {
            println!(
                "first deploy, redeploy: skipped (needs root: the hook and the seed chown to the app user)"
            );
            return Ok(());
        }
        bench_first_deploy(&sh, &hook, work.path(), self.runs)?;
        bench_redeploy(&sh, &app, &hook, work.path(), self.runs)?;
        crate::bench_socket::bench(&sh, &hook, work.path(), self.redeploys)
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
        // Valid Python of exactly `per_file` bytes: whole lines, then a comment to fill up (a
        // module cut mid-line would not compile, and AfterInstall compiles the release).
        let line = format!("VALUE_{i} = {i}  # padding to make a realistic module\n");
        let mut body = line.repeat(per_file.saturating_sub(2) / line.len());
        let fill = per_file.saturating_sub(body.len() + 2);
        body.push('#');
        body.push_str(&" ".repeat(fill));
        body.push('\n');
        fs::write(dir.join(format!("mod_{i:05}.py")), body)?;
    }
    Ok(())
}

fn bench_bundle(sh: &Shell, app: &Path, hook: &Path, work: &Path, runs: u64) -> anyhow::Result<()> {
    let out = work.join("bundles");
    let tree = work.join("tree");
    let source = AppSource::load(app)?;
    let vendored = crate::wheels::for_app(&source, app, Arch::X86_64)?;
    let bundle = Bundle::new(&source, hook, Arch::X86_64, vendored.as_ref())?;
    let written = bundle.write(&out, 1)?;
    fs::create_dir_all(&tree)?;
    let path = &written.path;
    cmd!(sh, "tar -xzf {path} -C {tree}").quiet().run()?;
    let (mut ours, mut gzip, mut pigz) = (Vec::new(), Vec::new(), Vec::new());
    let baseline = |script: &str, out: &Path| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let status = Command::new("bash").args(["-c", script, "bash"]).arg(&tree).arg(out).status()?;
        ensure!(status.success(), "{script} failed");
        Ok(t.elapsed())
    };
    const TAR: &str = "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1";
    let gzip_script = format!("{TAR} -czf \"$2\" -C \"$1\" .");
    let pigz_script = format!("{TAR} -cf - -C \"$1\" . | pigz -6 -n > \"$2\"");
    let (gzip_out, pigz_out) = (work.join("gnu.tgz"), work.join("pigz.tgz"));
    for _ in 0..runs {
        let t = Instant::now();
        let source = AppSource::load(app)?;
        let vendored = crate::wheels::for_app(&source, app, Arch::X86_64)?;
        let again = Bundle::new(&source, hook, Arch::X86_64, vendored.as_ref())?.write(&out, 1)?;
        ours.push(t.elapsed());
        ensure!(again.sha256 == written.sha256, "two bundles of the same inputs differ");
        gzip.push(baseline(&gzip_script, &gzip_out)?);
        pigz.push(baseline(&pigz_script, &pigz_out)?);
    }
    let (ours, gzip, pigz) = (median(ours), median(gzip), median(pigz));
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "bundle    ours {} ({} bytes, byte-identical every run) | tar -czf {} ({} bytes) | tar | pigz -6 {} ({} bytes)",
        secs(ours),
        written.size,
        secs(gzip),
        size(&gzip_out),
        secs(pigz),
        size(&pigz_out)
    );
    println!(
        "          ratios ours/tar -czf {:.2}, ours/pigz {:.2} ({} threads here, tree of {} bytes)",
        ours.as_secs_f64() / gzip.as_secs_f64(),
        ours.as_secs_f64() / pigz.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        dir_size(&tree)?
    );
    Ok(())
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").args(["-sb"]).arg(dir).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().and_then(|n| n.parse().ok()).context("du -sb")
}

/// A sandbox root with the app user and a unit directory.
fn sandbox_root(root: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(root.join("etc/systemd/system"))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("etc/passwd"), format!("snake:x:{APP_UID}:{APP_UID}::/home/snake:/bin/bash\n"))?;
    fs::write(root.join("etc/group"), format!("snake:x:{APP_UID}:\n"))?;
    Ok(())
}

/// Extracts `bundle` as the agent does for deployment `id` under `root`.
fn extract(sh: &Shell, root: &Path, bundle: &Path, id: &str) -> anyhow::Result<PathBuf> {
    let archive = root.join("opt/codedeploy-agent/deployment-root/bench").join(id).join("deployment-archive");
    fs::create_dir_all(&archive)?;
    cmd!(sh, "tar -zxpsf {bundle} -C {archive}").quiet().run()?;
    Ok(archive)
}

/// Runs the hook's AfterInstall from `archive` under `root`; returns its wall time.
fn after_install(root: &Path, archive: &Path, id: &str, stage: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = Command::new(archive.join("bin/deploy-hook"))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LIFECYCLE_EVENT", "AfterInstall")
        .env("DEPLOYMENT_ID", id)
        .env("APPLICATION_NAME", "bench")
        .env("DEPLOYMENT_GROUP_NAME", "bench")
        .env("DEPLOYMENT_GROUP_ID", "bench")
        .env("DEPLOY_HOOK_ROOT", root)
        .env("DEPLOY_HOOK_SERVICE_MANAGER", "none")
        .env("DEPLOY_HOOK_STAGE", stage)
        .output()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!("deploy-hook failed:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(elapsed)
}

/// A first deployment of the example app on a fresh host: the hook with the bundled uv and
/// wheels (no index), vs the seed's script pip-installing from the package index into a fresh
/// interpreter environment with no pip cache, as on a new instance. Creating that environment
/// is not timed (the seed relies on the system Python), which favours the seed.
fn bench_first_deploy(sh: &Shell, hook: &Path, work: &Path, runs: u64) -> anyhow::Result<()> {
    let example = project_root().join("examples/python-app");
    let source = AppSource::load(&example)?;
    let vendored = crate::wheels::for_app(&source, &example, Arch::X86_64)?;
    let bundle =
        Bundle::new(&source, hook, Arch::X86_64, vendored.as_ref())?.write(&work.join("first"), 1)?;
    let (mut ours, mut seed) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let root = work.join(format!("first-ours-{i}"));
        sandbox_root(&root)?;
        let id = format!("d-FIRST{i:05}");
        let archive = extract(sh, &root, &bundle.path, &id)?;
        ours.push(after_install(&root, &archive, &id, "link").context("first deployment by the hook")?);

        let root = work.join(format!("first-seed-{i}"));
        sandbox_root(&root)?;
        let archive = extract(sh, &root, &bundle.path, &id)?;
        let python = work.join(format!("first-seed-python-{i}"));
        cmd!(sh, "/usr/bin/python3 -m venv {python}").quiet().run()?;
        let t = Instant::now();
        let status = Command::new("bash")
            .args(["-c", SEED, "seed"])
            .arg(&root)
            .arg(&archive)
            .arg(&id)
            .arg(&python)
            .env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "the seed script failed");
        seed.push(t.elapsed());
    }
    let (ours, seed) = (median(ours), median(seed));
    println!(
        "first     hook (bundled uv + wheels, no index) {} | seed script (pip from the index) {} | ratio hook/seed {:.2}",
        secs(ours),
        secs(seed),
        ours.as_secs_f64() / seed.as_secs_f64()
    );
    Ok(())
}

/// Deterministic text that compresses about as well as source code (xorshift over a small
/// vocabulary).
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "def", "return", "self", "import", "from", "class", "value", "request", "response", "async", "await",
        "None", "True", "False", "if", "else", "for", "in", "config", "logger", "data", "items", "user",
        "session", "handler", "path", "json", "status", "error", "result", "=", ":",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 32) as usize].as_bytes());
        out.push(if x & 0x700 == 0 { b'\n' } else { b' ' });
        if x & 0xf000 == 0 {
            out.extend_from_slice(format!("{:x}", x >> 20).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Times `f` and `baseline` alternately, `runs` times each; medians.
fn side_by_side(
    runs: u64,
    mut f: impl FnMut() -> anyhow::Result<()>,
    mut baseline: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        a.push(t.elapsed());
        let t = Instant::now();
        baseline()?;
        b.push(t.elapsed());
    }
    Ok((median(a), median(b)))
}

fn bench_verify(work: &Path, files: usize, mib: usize, links: usize, runs: u64) -> anyhow::Result<()> {
    use crate::verify::{Options, verify};
    use packaging::reader::Limits;

    // 1. A foreign revision of `files` files, `mib` MiB, packed by GNU tar and gzip -6.
    let tree = work.join("verify-tree");
    fs::create_dir_all(&tree)?;
    fs::write(tree.join("appspec.yml"), "version: 0.0\nos: linux\n")?;
    let per_file = (mib << 20) / files.max(1);
    for i in 0..files {
        let dir = tree.join(format!("app/d{:03}", i % 200));
        if i < 200 {
            fs::create_dir_all(&dir)?;
        }
        fs::write(dir.join(format!("f{i:05}.py")), text(i as u64 + 1, per_file))?;
    }
    let big = work.join("verify-big.tgz");
    let status = Command::new("tar").arg("-czf").arg(&big).arg("-C").arg(&tree).arg(".").status()?;
    ensure!(status.success(), "tar -czf failed");
    fs::remove_dir_all(&tree)?;
    let options = Options { systemd_analyze: false, ..Options::default() };
    let report = verify(&big, &options)?;
    ensure!(report.errors() == 0 && report.files == files + 1, "the bench revision verifies clean");
    let (ours, tar) = side_by_side(
        runs,
        || {
            let report = verify(&big, &options)?;
            ensure!(report.files == files + 1, "every file read");
            Ok(())
        },
        || {
            let out =
                Command::new("tar").arg("-tzf").arg(&big).stdout(std::process::Stdio::null()).status()?;
            ensure!(out.success(), "tar -tzf failed");
            Ok(())
        },
    )?;
    println!(
        "verify    {files} files, {mib} MiB tgz ({} bytes): ours (every file hashed) {} | tar -tzf {} | ratio ours/tar {:.2}",
        fs::metadata(&big)?.len(),
        secs(ours),
        secs(tar),
        ours.as_secs_f64() / tar.as_secs_f64()
    );
    fs::remove_file(&big)?;

    // 2. `links` symlinks and `links` files, vs `2 * links` files: the same number of entries.
    let archive = |with_links: bool| -> anyhow::Result<PathBuf> {
        let path = work.join(if with_links { "verify-links.tar" } else { "verify-benign.tar" });
        let mut builder = tar::Builder::new(std::io::BufWriter::new(fs::File::create(&path)?));
        let mut add = |name: String, kind: tar::EntryType, target: Option<String>, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(if kind == tar::EntryType::Symlink { 0o777 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_mtime(1);
            if let Some(target) = target {
                header.set_link_name(target)?;
            }
            builder.append_data(&mut header, name, data)
        };
        add("appspec.yml".into(), tar::EntryType::Regular, None, b"version: 0.0\nos: linux\n")?;
        for i in 0..links {
            let dir = i % 100;
            add(format!("files/d{dir:02}/f{i:06}"), tar::EntryType::Regular, None, b"x")?;
            if with_links {
                add(
                    format!("links/d{dir:02}/l{i:06}"),
                    tar::EntryType::Symlink,
                    Some(format!("../../files/d{dir:02}/f{i:06}")),
                    b"",
                )?;
            } else {
                add(format!("links/d{dir:02}/l{i:06}"), tar::EntryType::Regular, None, b"y")?;
            }
        }
        builder.into_inner()?;
        Ok(path)
    };
    let (with_links, benign) = (archive(true)?, archive(false)?);
    let options = Options {
        systemd_analyze: false,
        limits: Limits { max_entries: 2 * links + 1000, ..Limits::default() },
        ..Options::default()
    };
    for path in [&with_links, &benign] {
        let report = verify(path, &options)?;
        ensure!(report.errors() == 0, "{} verifies clean", path.display());
    }
    let (links_time, benign_time) = side_by_side(
        runs,
        || verify(&with_links, &options).map(drop).map_err(Into::into),
        || verify(&benign, &options).map(drop).map_err(Into::into),
    )?;
    println!(
        "verify    {links} symlinks + {links} files {} | {} files {} | ratio links/benign {:.2}",
        secs(links_time),
        2 * links,
        secs(benign_time),
        links_time.as_secs_f64() / benign_time.as_secs_f64()
    );
    Ok(())
}

fn bench_redeploy(sh: &Shell, app: &Path, hook: &Path, work: &Path, runs: u64) -> anyhow::Result<()> {
    let root = work.join("root");
    sandbox_root(&root)?;
    // The seed gets a host of its own: its `chown -R` of the home directory would hand the hook's
    // root-owned app root to the app user, which the hook then refuses as replaced.
    let seed_root = work.join("seed-root");
    sandbox_root(&seed_root)?;
    let yaml = app.join("deploy.yaml");
    let text = fs::read_to_string(&yaml)?.replace("installer: auto", "installer: pip");
    fs::write(&yaml, text)?;

    let mut n = 0;
    // A new revision each time: one source file changes.
    let mut next_bundle = || -> anyhow::Result<(PathBuf, String)> {
        n += 1;
        fs::write(app.join("src/BENCH_REVISION.txt"), format!("{n}\n"))?;
        let source = AppSource::load(app)?;
        let vendored = crate::wheels::for_app(&source, app, Arch::X86_64)?;
        let written =
            Bundle::new(&source, hook, Arch::X86_64, vendored.as_ref())?.write(&work.join("bundles"), 1)?;
        Ok((written.path, format!("d-BENCH{n:05}")))
    };
    let mut hook_deploys = |stage: &str| -> anyhow::Result<Duration> {
        let (bundle, id) = next_bundle()?;
        let archive = extract(sh, &root, &bundle, &id)?;
        after_install(&root, &archive, &id, stage)
    };
    // The first deployment builds the venv; it is not timed.
    hook_deploys("link").context("first deployment")?;
    let (mut link, mut copy) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        link.push(hook_deploys("link")?);
        copy.push(hook_deploys("copy")?);
    }

    // The seed's redeploy: the packages are already in its interpreter environment (its first
    // run, not timed, put them there), as on a host it deployed before.
    let (bundle, _) = next_bundle()?;
    let venv = work.join("seed-venv");
    cmd!(sh, "/usr/bin/python3 -m venv {venv}").quiet().run()?;
    let mut seed = Vec::new();
    for i in 0..=runs {
        let id = format!("d-SEED{i:05}");
        let archive = extract(sh, &seed_root, &bundle, &id)?;
        let t = Instant::now();
        let status = Command::new("bash")
            .args(["-c", SEED, "seed"])
            .arg(&seed_root)
            .arg(&archive)
            .arg(&id)
            .arg(&venv)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "the seed script failed");
        if i > 0 {
            seed.push(t.elapsed());
        }
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
