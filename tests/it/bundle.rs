//! `cargo xtask bundle`: determinism, what GNU tar sees, a static hook, a unit systemd accepts,
//! and bad input that fails cleanly.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use tests::{
    build_bundle, describe, edit_file, example_app, example_bundle, path_str, run_ok, xtask_bundle_cmd,
};

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path)).unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// A copy of the example app in a fresh temporary directory.
fn app_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    tests::copy_tree(&example_app(), &app).unwrap();
    (dir, app)
}

fn extract(bundle: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // The agent's own command (docs/codedeploy-agent.md, "Unpacking"), run in the destination directory.
    run_ok(Command::new("/bin/tar").arg("-zxpsf").arg(bundle).current_dir(dir.path())).unwrap();
    dir
}

#[test]
fn same_inputs_give_the_same_bytes() {
    const EPOCH: (&str, &str) = ("SOURCE_DATE_EPOCH", "1700000000");
    let out = tempfile::tempdir().unwrap();
    let first = build_bundle(&example_app(), &out.path().join("a"), &[EPOCH]).unwrap();
    let again = build_bundle(&example_app(), &out.path().join("b"), &[EPOCH]).unwrap();
    assert_eq!(sha256(&first), sha256(&again));

    // Another copy of the source: files created in reverse order under umask 077, every mtime
    // changed, then bundled under another umask.
    let scratch = tempfile::tempdir().unwrap();
    let app = scratch.path().join("app");
    let script = "umask 077 && cp -r -- \"$1\" \"$2\" && find \"$2\" -type f -exec touch -d '2001-02-03 04:05' {} + \
                  && find \"$2\" -depth -type f -name '*.py' -exec sh -c 'cp \"$1\" \"$1.x\" && rm \"$1\" && mv \"$1.x\" \"$1\"' _ {} \\;";
    run_ok(Command::new("bash").args(["-c", script, "bash"]).arg(example_app()).arg(&app)).unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "umask 027 && exec \"$@\"", "bash"]);
    cmd.arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["xtask", "bundle", "--app", path_str(&app).unwrap(), "--out"]).arg(out.path().join("c"));
    cmd.current_dir(tests::project_root()).env(EPOCH.0, EPOCH.1);
    let output = run_ok(&mut cmd).unwrap();
    let moved = tests::bundle_paths(&output).remove(0);
    assert_eq!(sha256(&first), sha256(&moved), "bundle differs after touch, umask and copy");
    assert_eq!(first.file_name(), moved.file_name());

    // And the mtime is the epoch, never the clock.
    let listing = run_ok(Command::new("tar").arg("--full-time").arg("-tzvf").arg(&first)).unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.lines().all(|l| l.contains("2023-11-14 22:13:20")), "{listing}");
}

#[test]
fn gnu_tar_sees_root_owned_entries_and_the_agent_extracts_them() {
    let bundle = example_bundle();
    let listing = run_ok(Command::new("tar").arg("-tzvf").arg(bundle)).unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.iter().all(|l| l.split_whitespace().nth(1) == Some("root/root")), "{listing}");
    assert!(lines.iter().any(|l| l.starts_with("-rw-r--r--") && l.ends_with(" appspec.yml")), "{listing}");
    assert!(
        lines.iter().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" bin/deploy-hook")),
        "{listing}"
    );
    let names: Vec<&str> = lines.iter().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");

    // One gzip member with no name and no time: `gzip -l` would show a name; check the header.
    let bytes = fs::read(bundle).unwrap();
    assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);

    let dir = extract(bundle);
    let root = dir.path();
    for (path, mode) in
        [("appspec.yml", 0o644), ("bin/deploy-hook", 0o755), ("src/app.py", 0o644), ("bin", 0o755)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(root.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path}");
    }
    let manifest = fs::read_to_string(root.join("deploy/MANIFEST")).unwrap();
    let manifest = packaging::Manifest::parse(&manifest).unwrap();
    manifest.verify_tree(root).unwrap();
    let appspec = fs::read_to_string(root.join("appspec.yml")).unwrap();
    assert!(appspec.contains("version: 0.0\nos: linux\n") && !appspec.contains("files:"), "{appspec}");
}

#[test]
fn the_hook_is_static_small_and_answers_version() {
    let dir = extract(example_bundle());
    let hook = dir.path().join("bin/deploy-hook");
    let bytes = fs::read(&hook).unwrap();
    xtask::check_static_elf(&bytes, 62).unwrap();
    // 1 MiB until socket activation's holder (listen.rs) took it just past; 2 MiB is the ceiling.
    assert!(bytes.len() <= 2 * 1024 * 1024, "the x86_64 hook is {} bytes, over 2 MiB", bytes.len());
    let out = run_ok(Command::new(&hook).arg("--version")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "deploy-hook 0.0.0\n");
    let help = run_ok(Command::new(&hook).arg("--help")).unwrap();
    assert!(String::from_utf8(help.stdout).unwrap().contains("LIFECYCLE_EVENT"));
}

#[test]
fn aarch64_bundle_runs_under_qemu() {
    let out = tempfile::tempdir().unwrap();
    let output =
        run_ok(&mut xtask_bundle_cmd(&["--target", "all", "--out", path_str(out.path()).unwrap()])).unwrap();
    let paths = tests::bundle_paths(&output);
    assert_eq!(paths.len(), 2, "{}", describe(&output));
    assert!(paths[0].to_str().unwrap().ends_with("-x86_64.tgz"));
    assert!(paths[1].to_str().unwrap().ends_with("-aarch64.tgz"));
    let dir = extract(&paths[1]);
    let hook = dir.path().join("bin/deploy-hook");
    xtask::check_static_elf(&fs::read(&hook).unwrap(), 183).unwrap();
    let release = fs::read_to_string(dir.path().join("deploy/release.yaml")).unwrap();
    let release = packaging::Release::parse(Path::new("release.yaml"), &release).unwrap();
    assert_eq!(release.arch, "aarch64");
    let out = run_ok(Command::new("qemu-aarch64-static").arg(&hook).arg("--version")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "deploy-hook 0.0.0\n");

    // `status` reads its revision (found from its own path) and a sandboxed instance.
    let sandbox = tests::sandbox::Sandbox::new().unwrap();
    let archive = sandbox.extract(&paths[1], "d-ARM000001").unwrap();
    let out = run_ok(
        Command::new("qemu-aarch64-static")
            .arg(archive.join("bin/deploy-hook"))
            .args(["--service-manager", "none", "--root"])
            .arg(&sandbox.root)
            .args(["status", "--json"]),
    )
    .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["app"], "python-app");
    assert_eq!(status["current"], serde_json::Value::Null);
    assert_eq!(status["releases"], serde_json::json!([]));
}

#[test]
fn systemd_analyze_accepts_the_unit_silently() {
    let (dir, app) = app_copy();
    let app_root = dir.path().join("root");
    let yaml = fs::read_to_string(app.join("deploy.yaml")).unwrap();
    let yaml = format!("{yaml}\napp_root: {}\n", app_root.display());
    fs::write(app.join("deploy.yaml"), yaml).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("dist"), &[]).unwrap();
    let tree = extract(&bundle);
    let unit = tree.path().join("configs/python-app.service");
    let text = fs::read_to_string(&unit).unwrap();
    // Make the ExecStart binary exist, as it will on the instance.
    let exec = packaging::unit_file::exec_start(&text).unwrap();
    let python = exec[0].as_str();
    assert!(python.starts_with(app_root.to_str().unwrap()) && python.contains("/venvs/v-"), "{python}");
    fs::create_dir_all(Path::new(python).parent().unwrap()).unwrap();
    fs::copy("/bin/true", python).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{}", describe(&out));
    // A path through `current` only where systemd resolves it once, at start.
    for line in text.lines().filter(|l| l.contains("/current")) {
        assert!(line.starts_with("WorkingDirectory=") || line.starts_with("EnvironmentFile="), "{line}");
    }
}

/// Runs the bundle on a broken app; checks exit code 1, the message, and an empty out dir.
fn assert_refused(app: &Path, want: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let dist = out.path().join("dist");
    let output = xtask_bundle_cmd(&["--app", path_str(app).unwrap(), "--out", path_str(&dist).unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in want {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}\n{}", describe(&output));
    }
    let left: Vec<_> =
        fs::read_dir(&dist).map(|it| it.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "partial output left in dist: {left:?}");
}

#[test]
fn bad_input_is_refused_with_the_file_and_the_rule() {
    let (_d, app) = app_copy();
    fs::remove_file(app.join("deploy.yaml")).unwrap();
    assert_refused(&app, &["deploy.yaml: the app's deploy.yaml is missing"]);

    let (_d, app) = app_copy();
    edit_file(&app, "deploy.yaml", "  workers: 1", "  wrkers: 1");
    assert_refused(&app, &["deploy.yaml: hypercorn: unknown field `wrkers`", "line 24 column 3"]);

    let (_d, app) = app_copy();
    edit_file(&app, "deploy.yaml", "  after_install: 1200", "  after_install: 7200");
    assert_refused(&app, &["timeouts.after_install: timeout 7200 is outside 1..=3600", "line 42 column 18"]);

    let (_d, app) = app_copy();
    edit_file(&app, "deploy.yaml", "    APP_ENV: production", "    APP_ENV: \"prod\\nExecStartPre=/bin/sh\"");
    assert_refused(
        &app,
        &[
            "service.environment.APP_ENV: \"prod\\nExecStartPre=/bin/sh\" contains the control character",
            "line 20 column 14",
        ],
    );

    let (_d, app) = app_copy();
    edit_file(&app, "deploy.yaml", "app: python-app", "app: python-app\nbogus: [");
    assert_refused(&app, &["deploy.yaml: "]);

    let (_d, app) = app_copy();
    fs::remove_file(app.join("requirements.pip")).unwrap();
    assert_refused(&app, &["requirements.pip: the requirements file (deploy.yaml requirements) is missing"]);

    let (_d, app) = app_copy();
    fs::remove_dir_all(app.join("src")).unwrap();
    assert_refused(&app, &["src: the application source directory (deploy.yaml source_dir) is missing"]);

    let (_d, app) = app_copy();
    std::os::unix::fs::symlink("../../etc/passwd", app.join("src/passwd")).unwrap();
    assert_refused(&app, &["src/passwd: symlink to \"../../etc/passwd\" points outside the source tree"]);

    let (_d, app) = app_copy();
    run_ok(Command::new("mkfifo").arg(app.join("src/pipe"))).unwrap();
    assert_refused(&app, &["src/pipe: is a fifo; only files, directories and symlinks can ship"]);

    let (_d, app) = app_copy();
    fs::create_dir(app.join("src/configs")).unwrap();
    assert_refused(&app, &["src/configs: the release puts its own configs here"]);
}

#[test]
fn a_symlink_inside_the_source_ships_as_a_link() {
    let (dir, app) = app_copy();
    std::os::unix::fs::symlink("app.py", app.join("src/alias.py")).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("dist"), &[]).unwrap();
    let tree = extract(&bundle);
    assert_eq!(fs::read_link(tree.path().join("src/alias.py")).unwrap(), Path::new("app.py"));
    let manifest =
        packaging::Manifest::parse(&fs::read_to_string(tree.path().join("deploy/MANIFEST")).unwrap())
            .unwrap();
    manifest.verify_tree(tree.path()).unwrap();
}
