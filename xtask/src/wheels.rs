//! `dependencies: vendored`: a wheel for every requirement and its dependencies, chosen for the
//! instances' arch, CPython version and platform (never the build machine's), and the static
//! `uv` from uv's musllinux wheel for that arch. Downloaded with the build machine's pip into a
//! cache under the target directory, keyed by everything that decides the download, so a second
//! bundle of the same inputs contacts no index.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use appspec::diag::Severity;
use packaging::{
    bundle::{AppSource, Arch, Vendored},
    config::{Dependencies, DeployConfig, WheelTarget},
    inspect,
    wheel::{WheelName, target_interpreter},
};
use sha2::{Digest, Sha256};

use crate::{check_static_elf, project_root};

/// The uv shipped in vendored bundles: its musllinux wheel holds a static binary.
pub const UV_VERSION: &str = "0.13.9";

/// Where downloads are kept between bundles: `$CARGO_TARGET_DIR` (else `target/`)`/wheelhouse`.
pub fn cache_root() -> PathBuf {
    let root = project_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() { target } else { root.join(target) };
    target.join("wheelhouse")
}

/// Every requirement line must pin one exact version: the wheels, their hashes and the venv
/// key are chosen from it. The error names the file, the line and the fix.
pub fn check_pins(file: &Path, text: &str) -> anyhow::Result<()> {
    let shown = file.display().to_string();
    let findings = inspect::requirements(&shown, text);
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error || f.rule == "requirements.unpinned")
        .map(|f| format!("{}:{}: {} (fix: {})", f.file, f.line.unwrap_or(0), f.message, f.fix))
        .collect();
    ensure!(
        bad.is_empty(),
        "dependencies: vendored needs every requirement pinned to one version (==):\n  {}",
        bad.join("\n  ")
    );
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(packaging::hex(&hasher.finalize()))
}

/// What `app` (read from `app_dir`) vendors for `arch`: `None` with `dependencies: index`.
pub fn for_app(app: &AppSource, app_dir: &Path, arch: Arch) -> anyhow::Result<Option<Vendored>> {
    match app.config.dependencies {
        Dependencies::Vendored => {
            let requirements = app_dir.join(app.config.requirements.as_str());
            Ok(Some(vendor(&app.config, &requirements, arch)?))
        }
        Dependencies::Index => Ok(None),
    }
}

/// The wheels and uv for `arch`, from the cache or downloaded now.
pub fn vendor(config: &DeployConfig, requirements_file: &Path, arch: Arch) -> anyhow::Result<Vendored> {
    let text = fs::read_to_string(requirements_file)
        .with_context(|| format!("cannot read {}", requirements_file.display()))?;
    check_pins(requirements_file, &text)?;
    let target = WheelTarget {
        python_version: config.python_version.clone(),
        abi: config.python_version.abi(),
        platform: format!("{}_{}", config.platform, arch.name()),
        uv_version: UV_VERSION.into(),
    };
    let interp = target_interpreter(target.python_version.as_str(), &target.abi, &target.platform)
        .context("the platform tag is not one this tool knows")?;
    let mut key = Sha256::new();
    let sdists: Vec<&str> = config.build_sdists.iter().map(|s| s.as_str()).collect();
    for part in
        ["wheels-v1", &text, &target.key_part(), &target.uv_version, &sdists.join(",")].map(str::as_bytes)
    {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    let key = packaging::hex(&key.finalize());
    let cache = cache_root();
    let dir = cache.join(format!("{}-{}-{}", arch.name(), target.abi, &key[..16]));
    let lock = dir.join("wheels.lock");
    let cached = match fs::read_to_string(&lock) {
        Ok(listing) => check_cached(&dir, &listing).ok(),
        Err(_) => None,
    };
    let listing = match cached {
        Some(listing) => listing,
        None => {
            fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
            let tmp = tempfile::Builder::new().prefix(".download.").tempdir_in(&cache)?;
            download(config, requirements_file, &target, tmp.path(), arch)?;
            let mut listing = String::new();
            let mut names: Vec<String> = fs::read_dir(tmp.path())?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<anyhow::Result<_>>()?;
            names.sort();
            for name in names.iter().filter(|n| n.ends_with(".whl")) {
                listing.push_str(&format!("{} {name}\n", sha256_file(&tmp.path().join(name))?));
            }
            listing.push_str(&format!("{} uv\n", sha256_file(&tmp.path().join("uv/uv"))?));
            fs::write(tmp.path().join("wheels.lock"), &listing)?;
            // Bundles run in parallel: a complete entry another one wrote is used as is (it may
            // be read right now); a damaged one is moved aside, never deleted under a reader.
            let theirs = || {
                fs::read_to_string(&lock).map_err(anyhow::Error::from).and_then(|l| check_cached(&dir, &l))
            };
            if dir.exists() {
                if let Ok(listing) = theirs() {
                    return finish(&dir, &listing, &interp, arch);
                }
                let aside = cache.join(format!(".damaged.{}.{}", std::process::id(), &key[..16]));
                fs::rename(&dir, &aside).with_context(|| format!("cannot move {} aside", dir.display()))?;
            }
            let kept = tmp.keep();
            if let Err(err) = fs::rename(&kept, &dir) {
                let _ = fs::remove_dir_all(&kept);
                let listing = theirs().with_context(|| {
                    format!("cannot rename {} to {}: {err}", kept.display(), dir.display())
                })?;
                return finish(&dir, &listing, &interp, arch);
            }
            listing
        }
    };
    finish(&dir, &listing, &interp, arch)
}

/// The vendored set from a complete cache entry: the wheels, the hash-pinned requirements, uv.
fn finish(
    dir: &Path,
    listing: &str,
    interp: &packaging::wheel::Interpreter,
    arch: Arch,
) -> anyhow::Result<Vendored> {
    let mut wheels = Vec::new();
    let mut pinned = String::from(
        "# Generated by cargo xtask bundle (dependencies: vendored): every wheel in dependencies/wheels,\n\
         # pinned with its sha256. The hook installs them with --no-index --require-hashes.\n",
    );
    let mut lines = Vec::new();
    for line in listing.lines() {
        let (sha, name) = line.split_once(' ').context("a wheels.lock line")?;
        if name == "uv" {
            continue;
        }
        let wheel = WheelName::parse(name).map_err(anyhow::Error::msg)?;
        wheel.fits(interp).map_err(|e| anyhow::format_err!("{name}: {e}"))?;
        lines.push(format!("{}=={} \\\n    --hash=sha256:{sha}\n", wheel.name, wheel.version));
        wheels.push((name.to_owned(), dir.join(name)));
    }
    lines.sort();
    pinned.push_str(&lines.concat());
    let uv = dir.join("uv/uv");
    let bytes = fs::read(&uv).with_context(|| format!("cannot read {}", uv.display()))?;
    check_static_elf(&bytes, arch.elf_machine())
        .with_context(|| format!("{}: not a static {} binary", uv.display(), arch.name()))?;
    Ok(Vendored { requirements: pinned.into_bytes(), wheels, uv: (uv, UV_VERSION.into()) })
}

/// A cache entry is used only when every file it lists is there with its hash.
fn check_cached(dir: &Path, listing: &str) -> anyhow::Result<String> {
    for line in listing.lines() {
        let (sha, name) = line.split_once(' ').context("a wheels.lock line")?;
        let path = if name == "uv" { dir.join("uv/uv") } else { dir.join(name) };
        ensure!(sha256_file(&path)? == sha, "{} changed", path.display());
    }
    Ok(listing.to_owned())
}

fn pip(python: &str) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "--disable-pip-version-check", "--no-input"]);
    cmd
}

fn run_pip(mut cmd: Command, what: &str, target: &WheelTarget) -> anyhow::Result<()> {
    let out =
        cmd.output().with_context(|| format!("cannot run pip for {what} (is python3 -m pip installed?)"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr.lines().find(|l| l.contains("No matching distribution found for")) {
        let name = line.rsplit("for ").next().unwrap_or("").trim();
        bail!(
            "{name}: no wheel for CPython {} ({}) on {} on the package index (an sdist only, or no build for this platform); pin a version with wheels for it, or list it in deploy.yaml build_sdists if it is pure Python\n{stderr}",
            target.python_version,
            target.abi,
            target.platform
        );
    }
    bail!("pip failed for {what}:\n{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

/// Downloads into `into`: the wheels at its top, uv's binary at `uv/uv`.
fn download(
    config: &DeployConfig,
    requirements_file: &Path,
    target: &WheelTarget,
    into: &Path,
    arch: Arch,
) -> anyhow::Result<()> {
    let python = std::env::var("DEPLOY_BUNDLE_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!(
        "xtask: downloading wheels for CPython {} {} into {}",
        target.python_version,
        target.platform,
        cache_root().display()
    );
    let built = into.join(".built");
    if !config.build_sdists.is_empty() {
        // Pure-Python packages without wheels, built on this machine; a platform wheel would be
        // for the build machine, never the instances, so it is refused.
        fs::create_dir_all(&built)?;
        let reqs = fs::read_to_string(requirements_file)?;
        for name in &config.build_sdists {
            let wanted = packaging::wheel::normalize_name(name.as_str());
            let spec = reqs
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .find(|l| {
                    let n = l.split(|c: char| "=<>!~; [".contains(c)).next().unwrap_or("");
                    packaging::wheel::normalize_name(n) == wanted
                })
                .with_context(|| format!("deploy.yaml build_sdists: {name} is not in the requirements"))?;
            let mut cmd = pip(&python);
            cmd.args(["wheel", "--quiet", "--no-deps", "--no-binary", ":all:", "-w"]).arg(&built).arg(spec);
            run_pip(cmd, &format!("building {spec}"), target)?;
        }
        for entry in fs::read_dir(&built)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let wheel = WheelName::parse(&name).map_err(anyhow::Error::msg)?;
            ensure!(
                wheel.platform == ["any"],
                "{name}: built from its sdist for this build machine, not for {}; only pure-Python packages can be in build_sdists",
                target.platform
            );
        }
    }
    let mut cmd = pip(&python);
    cmd.args(["download", "--quiet", "--only-binary=:all:", "--platform"])
        .arg(&target.platform)
        .args(["--python-version", target.python_version.as_str(), "--implementation", "cp"])
        .args(["--abi", &target.abi, "--abi", "abi3", "--abi", "none", "-d"])
        .arg(into)
        .arg("-r")
        .arg(requirements_file);
    if built.exists() {
        cmd.arg("--find-links").arg(&built);
    }
    run_pip(cmd, "the requirements", target)?;
    if built.exists() {
        fs::remove_dir_all(&built)?;
    }
    let uv_dir = into.join("uv");
    fs::create_dir_all(&uv_dir)?;
    let mut cmd = pip(&python);
    cmd.args(["download", "--quiet", "--only-binary=:all:", "--no-deps", "--platform"])
        .arg(format!("musllinux_1_1_{}", arch.name()))
        .args(["--python-version", target.python_version.as_str(), "--implementation", "cp"])
        .args(["--abi", "none", "-d"])
        .arg(&uv_dir)
        .arg(format!("uv=={UV_VERSION}"));
    run_pip(cmd, "uv", target)?;
    let wheel = fs::read_dir(&uv_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no uv wheel")?;
    // The binary is `uv-<version>.data/scripts/uv` in the wheel (a zip): Python's zipfile reads
    // it, as pip needs Python here anyway.
    let member = format!("uv-{UV_VERSION}.data/scripts/uv");
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], 'wb') as f:\n    f.write(z.read(sys.argv[2]))",
        ])
        .arg(&wheel)
        .arg(&member)
        .arg(uv_dir.join("uv"))
        .output()?;
    ensure!(
        out.status.success(),
        "cannot extract {member} from {}: {}",
        wheel.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(&wheel)?;
    Ok(())
}
