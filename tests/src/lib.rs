//! Support for the end-to-end tests: building bundles with the real `cargo xtask bundle`,
//! sandboxes laid out as the CodeDeploy agent lays out an instance, and running real binaries.

pub mod container;
pub mod sandbox;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use anyhow::{Context, ensure};

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// The example app shipped with the project.
pub fn example_app() -> PathBuf {
    project_root().join("examples/python-app")
}

/// A `cargo xtask bundle` command run from the workspace root, with `args` after `bundle`.
pub fn xtask_bundle_cmd(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root()).args(["xtask", "bundle"]).args(args);
    cmd
}

/// Output of a command, with its stdout and stderr, as text for assertions and messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd`, fails unless it exits 0, returns its output.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(output.status.success(), "{cmd:?} failed\n{}", describe(&output));
    Ok(output)
}

/// The bundle paths printed by a successful `cargo xtask bundle` (its last stdout lines ending
/// in `.tgz`), made absolute.
pub fn bundle_paths(output: &Output) -> Vec<PathBuf> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut paths: Vec<PathBuf> = stdout
        .lines()
        .rev()
        .take_while(|line| line.ends_with(".tgz") && !line.contains(' '))
        .map(|line| project_root().join(line))
        .collect();
    paths.reverse();
    paths
}

/// Builds a bundle of `app` for x86_64 into `out` and returns its path.
pub fn build_bundle(app: &Path, out: &Path, envs: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let mut cmd = xtask_bundle_cmd(&["--app", path_str(app)?, "--out", path_str(out)?]);
    cmd.envs(envs.iter().copied());
    let output = run_ok(&mut cmd)?;
    let mut paths = bundle_paths(&output);
    ensure!(paths.len() == 1, "expected one bundle path as the last stdout line\n{}", describe(&output));
    Ok(paths.remove(0))
}

/// The example app's x86_64 bundle, built once per test process into a directory that lives as
/// long as the process.
pub fn example_bundle() -> &'static Path {
    static BUNDLE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = build_bundle(&example_app(), dir.path(), &[]).expect("cargo xtask bundle of the example");
        (dir, path)
    });
    path
}

/// `path` as UTF-8, for command lines.
pub fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Copies a directory tree (files, directories, symlinks as links) with `cp -a`.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    run_ok(Command::new("cp").arg("-a").arg("--").arg(from).arg(to))?;
    Ok(())
}

/// Replaces the first `from` with `to` in `dir/file`; panics when `from` is not there, so an
/// edit that silently does nothing cannot make a test pass.
pub fn edit_file(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains(from), "{file} lacks {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
