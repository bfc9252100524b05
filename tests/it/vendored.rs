//! `dependencies: vendored` end to end: the instance installs the revision's own wheels with the
//! bundled uv and never an index (every index and proxy variable the hook passes on points at a
//! closed port), falls back to venv + pip with the same wheels when the app user cannot run the
//! bundled uv, refuses an interpreter the wheels do not fit in BeforeInstall, and rebuilds a venv
//! whose interpreter changed. The aarch64 bundle carries aarch64 wheels.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use packaging::wheel::{Interpreter, Libc, WheelName};
use tests::{
    build_bundle, describe, edit_file, path_str, run_ok,
    sandbox::{Sandbox, example_variant, free_port, http_get, revisions_a_and_b},
    xtask_bundle_cmd,
};

const UNIT: &str = "python-app.service";

/// Every variable the hook passes to pip and uv that could reach an index, aimed at a port
/// where nothing listens: any download fails the install.
const NO_INDEX: [(&str, &str); 6] = [
    ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
    ("UV_INDEX_URL", "http://127.0.0.1:9/simple"),
    ("UV_DEFAULT_INDEX", "http://127.0.0.1:9/simple"),
    ("http_proxy", "http://127.0.0.1:9"),
    ("https_proxy", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
];

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned()
}

fn run_offline(sandbox: &Sandbox, archive: &Path, event: &str, id: &str) -> Output {
    sandbox.hook(archive, event, id).envs(NO_INDEX).output().unwrap()
}

#[test]
fn installs_the_bundled_wheels_with_the_bundled_uv_and_no_index() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[]).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&bundle, "d-VENDOR0001").unwrap();

    let out = run_offline(&sandbox, &archive, "BeforeInstall", "d-VENDOR0001");
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 wheels fit CPython 3.11"), "{}", describe(&out));

    let out = run_offline(&sandbox, &archive, "AfterInstall", "d-VENDOR0001");
    assert!(out.status.success(), "{}", describe(&out));
    let verdict = last_line(&out);
    assert!(verdict.contains("venv built with uv"), "{verdict}");
    let log = fs::read_dir(sandbox.state_dir().join("logs")).unwrap().next().unwrap().unwrap().path();
    let log = fs::read_to_string(log).unwrap();
    assert!(log.contains("markupsafe==3.0.3"), "uv's log names what it installed:\n{log}");

    let venv = sandbox.app_root().join("current/.venv");
    let marker = fs::read_to_string(venv.join(".deploy-complete")).unwrap();
    assert!(marker.contains("installer=uv") && marker.contains("interpreter=cpython 3.11."), "{marker}");
    let _service = sandbox.start_service(UNIT).unwrap();
    let (status, body) = http_get(port, "/healthz", Duration::from_secs(20)).unwrap();
    assert_eq!(status, 200, "{body}");
    // The compiled wheel for this arch was installed: markupsafe's C speedups load.
    assert!(body.contains("\"markupsafe\": \"compiled\""), "{body}");
}

#[test]
fn falls_back_to_pip_with_the_same_wheels_when_the_build_identity_cannot_run_uv() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[]).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&bundle, "d-NOUV00001").unwrap();
    // Root may run it, the build identity (nobody) may not (a uv under a private directory, as
    // on some hosts).
    fs::set_permissions(archive.join("bin/uv"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_offline(&sandbox, &archive, "AfterInstall", "d-NOUV00001");
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("installer auto: venv + pip instead of uv:"), "{stdout}");
    assert!(stdout.contains("cannot run") && stdout.contains("bin/uv"), "{stdout}");
    assert!(last_line(&out).contains("venv built with pip"), "{}", describe(&out));

    // installer: uv refuses instead, naming why.
    edit_file(&app, "deploy.yaml", "installer: auto", "installer: uv");
    edit_file(&app, "src/app.py", "hello", "hello uv");
    let bundle = build_bundle(&app, &dir.path().join("b"), &[]).unwrap();
    let archive = sandbox.extract(&bundle, "d-NOUV00002").unwrap();
    fs::set_permissions(archive.join("bin/uv"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_offline(&sandbox, &archive, "AfterInstall", "d-NOUV00002");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        last_line(&out).contains("deploy.yaml asks for installer: uv, but uid 65534 cannot run"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_venv_is_rebuilt_when_its_interpreter_changed() {
    let port = free_port();
    let (dir, app, bundle_a, bundle_b) = revisions_a_and_b(port).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let out = sandbox.after_install(&bundle_a, "d-INTERP001").unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // As after an in-place upgrade: the venv says another interpreter built it.
    let venvs = sandbox.listing("venvs");
    assert_eq!(venvs.len(), 1);
    let marker = sandbox.app_root().join("venvs").join(&venvs[0]).join(".deploy-complete");
    let text = fs::read_to_string(&marker).unwrap();
    let line = text.lines().find(|l| l.starts_with("interpreter=")).unwrap().to_owned();
    fs::write(
        &marker,
        text.replace(&line, "interpreter=cpython 3.11.0 cpython-311-x86_64-linux-gnu x86_64 glibc-2.36"),
    )
    .unwrap();
    let archive = sandbox.extract(&bundle_b, "d-INTERP002").unwrap();
    let out = run_offline(&sandbox, &archive, "AfterInstall", "d-INTERP002");
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("was built by cpython 3.11.0") && stdout.contains("building it again"),
        "{stdout}"
    );
    assert!(last_line(&out).contains("venv built with uv"), "{}", describe(&out));
    // The next deployment with the same interpreter reuses it.
    let out = sandbox.after_install(&bundle_a, "d-INTERP003").unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = {
        edit_file(&app, "src/app.py", "hello B", "hello C");
        let bundle_c = build_bundle(&app, &dir.path().join("c"), &[]).unwrap();
        let archive = sandbox.extract(&bundle_c, "d-INTERP004").unwrap();
        run_offline(&sandbox, &archive, "AfterInstall", "d-INTERP004")
    };
    assert!(last_line(&out).contains("venv reused"), "{}", describe(&out));
}

#[test]
fn before_install_refuses_an_interpreter_the_wheels_do_not_fit() {
    let (dir, app) =
        example_variant(free_port(), &[("python_version: \"3.11\"", "python_version: \"3.12\"")]).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&bundle, "d-PY312FIT1").unwrap();
    let out = run_offline(&sandbox, &archive, "BeforeInstall", "d-PY312FIT1");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let last = last_line(&out);
    assert!(
        last.contains("is CPython 3.11 (cp311")
            && last.contains("wheels are for CPython 3.12 (cp312, manylinux_2_17_x86_64)")
            && last.contains("markupsafe-3.0.3-cp312")
            && last.contains("set python_version: \"3.11\" in deploy.yaml"),
        "{}",
        describe(&out)
    );
    assert!(!sandbox.app_root().join("releases").exists(), "BeforeInstall refused before writing");
}

#[test]
fn unpinned_requirements_are_refused_at_bundle_time_with_the_line() {
    let (dir, app) = example_variant(free_port(), &[]).unwrap();
    edit_file(&app, "requirements.pip", "h2==4.4.1", "h2>=4");
    let out = xtask_bundle_cmd(&["--app", path_str(&app).unwrap(), "--out", path_str(dir.path()).unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("requirements.pip:4: `h2>=4` is not pinned to one version (fix: pin it: h2==VERSION)"),
        "{stderr}"
    );
}

#[test]
fn the_aarch64_bundle_carries_aarch64_wheels_and_uv() {
    let out = tempfile::tempdir().unwrap();
    let output =
        run_ok(&mut xtask_bundle_cmd(&["--target", "all", "--out", path_str(out.path()).unwrap()])).unwrap();
    let paths = tests::bundle_paths(&output);
    assert_eq!(paths.len(), 2, "{}", describe(&output));
    let x86 = Interpreter {
        version: (3, 11),
        abi: "cp311".into(),
        arch: "x86_64".into(),
        libc: Some(Libc::Glibc(2, 36)),
    };
    let arm = Interpreter { arch: "aarch64".into(), ..x86.clone() };
    for (path, arch, wrong, machine) in [(&paths[0], &x86, &arm, 62), (&paths[1], &arm, &x86, 183)] {
        let list = run_ok(Command::new("tar").arg("-tzf").arg(path)).unwrap();
        let list = String::from_utf8(list.stdout).unwrap();
        let wheels: Vec<&str> = list
            .lines()
            .filter_map(|l| l.strip_prefix("dependencies/wheels/"))
            .filter(|n| !n.is_empty())
            .collect();
        assert_eq!(wheels.len(), 8, "{list}");
        let markupsafe =
            wheels.iter().find(|w| w.starts_with("markupsafe-")).expect("the compiled example dependency");
        assert!(markupsafe.ends_with(&format!("{}.whl", arch.arch)), "{markupsafe}");
        let wheel = WheelName::parse(markupsafe).unwrap();
        assert!(wheel.fits(arch).is_ok());
        let why = wheel.fits(wrong).unwrap_err();
        assert!(why.contains(&format!("do not fit {}", wrong.arch)), "{why}");
        // verify agrees, and refuses the bundle for the other arch (wheels' tags aside, the
        // uv and hook ELFs are the wrong machine).
        let dir = tempfile::tempdir().unwrap();
        run_ok(Command::new("tar").arg("-xzf").arg(path).arg("-C").arg(dir.path())).unwrap();
        xtask::check_static_elf(&fs::read(dir.path().join("bin/uv")).unwrap(), machine).unwrap();
        let verify = crate::verify::xtask_verify(&["--json", "--arch", &wrong.arch, path_str(path).unwrap()]);
        assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
        let text = String::from_utf8_lossy(&verify.stdout);
        assert!(text.contains("\"uv.elf-arch\"") && text.contains("\"hook.elf-arch\""), "{text}");
    }

    // The aarch64 hook itself refuses this x86_64 host's interpreter in BeforeInstall.
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&paths[1], "d-ARMFIT001").unwrap();
    let hook = sandbox.hook(&archive, "BeforeInstall", "d-ARMFIT001");
    let mut cmd = Command::new("qemu-aarch64-static");
    cmd.arg(archive.join("bin/deploy-hook"))
        .env_clear()
        .envs(hook.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir("/");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let last = last_line(&out);
    assert!(
        last.contains("wheels are for CPython 3.11 (cp311, manylinux_2_17_aarch64)")
            && last.contains("bundle with --target x86_64"),
        "{}",
        describe(&out)
    );
}

#[test]
fn an_sdist_only_dependency_is_an_error_unless_build_sdists_allows_it() {
    let (dir, app) = example_variant(free_port(), &[]).unwrap();
    // docopt 0.6.2 is published as an sdist only, and is pure Python.
    edit_file(&app, "requirements.pip", "h11==0.16.0", "docopt==0.6.2\nh11==0.16.0");
    let bundle = |out: &str| {
        xtask_bundle_cmd(&[
            "--app",
            path_str(&app).unwrap(),
            "--out",
            path_str(&dir.path().join(out)).unwrap(),
        ])
        .output()
        .unwrap()
    };
    let out = bundle("a");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("docopt==0.6.2: no wheel for CPython 3.11 (cp311) on manylinux_2_17_x86_64")
            && stderr.contains("build_sdists"),
        "{stderr}"
    );

    edit_file(
        &app,
        "deploy.yaml",
        "platform: manylinux_2_17",
        "platform: manylinux_2_17\nbuild_sdists: [docopt]",
    );
    let out = bundle("b");
    assert!(out.status.success(), "{}", describe(&out));
    let path = &tests::bundle_paths(&out)[0];
    let list = String::from_utf8(run_ok(Command::new("tar").arg("-tzf").arg(path)).unwrap().stdout).unwrap();
    assert!(list.contains("dependencies/wheels/docopt-0.6.2-py2.py3-none-any.whl"), "{list}");
    let verify = crate::verify::xtask_verify(&[path_str(path).unwrap()]);
    assert!(verify.status.success(), "{}", describe(&verify));
}

#[test]
fn verify_reports_wheels_that_do_not_fit_are_unlisted_missing_or_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("tar").arg("-xzf").arg(tests::example_bundle()).arg("-C").arg(dir.path())).unwrap();
    let options = xtask::verify::Options::default();
    let report = xtask::verify::verify(dir.path(), &options).unwrap();
    assert_eq!(crate::verify::rules(&report), Vec::<String>::new(), "the example verifies clean");

    let wheels = dir.path().join("dependencies/wheels");
    // An aarch64 build of a listed requirement next to the x86_64 one, an unlisted wheel, and
    // a listed one gone.
    fs::write(wheels.join("markupsafe-3.0.3-cp311-cp311-manylinux_2_17_aarch64.whl"), b"not this arch")
        .unwrap();
    fs::write(wheels.join("six-1.17.0-py2.py3-none-any.whl"), b"unlisted").unwrap();
    fs::remove_file(wheels.join("h11-0.16.0-py3-none-any.whl")).unwrap();
    let report = xtask::verify::verify(dir.path(), &options).unwrap();
    let shown: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    let has = |rule: &str, text: &str| {
        assert!(
            report.findings.iter().any(|f| f.rule == rule && f.is_error() && f.to_string().contains(text)),
            "expected {rule} about {text}:\n{}",
            shown.join("\n")
        )
    };
    has("wheels.tags", "markupsafe-3.0.3-cp311-cp311-manylinux_2_17_aarch64.whl");
    has("wheels.hash", "markupsafe-3.0.3-cp311-cp311-manylinux_2_17_aarch64.whl");
    has("wheels.unlisted", "six==1.17.0");
    has("wheels.missing", "h11==0.16.0");
}

#[test]
fn dependencies_index_ships_no_wheels_and_installs_from_the_index() {
    let port = free_port();
    let (dir, app) = example_variant(
        port,
        &[("dependencies: vendored", "dependencies: index"), ("installer: auto", "installer: pip")],
    )
    .unwrap();
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let list =
        String::from_utf8(run_ok(Command::new("tar").arg("-tzf").arg(&bundle)).unwrap().stdout).unwrap();
    assert!(!list.contains("dependencies/wheels") && !list.contains("bin/uv"), "{list}");
    let shipped =
        run_ok(Command::new("tar").arg("-xzOf").arg(&bundle).arg("dependencies/requirements.pip")).unwrap();
    assert_eq!(shipped.stdout, fs::read(app.join("requirements.pip")).unwrap(), "shipped as written");
    let verify = crate::verify::xtask_verify(&[path_str(&bundle).unwrap()]);
    assert!(verify.status.success(), "{}", describe(&verify));

    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&bundle, "d-INDEX0001").unwrap();
    let out = sandbox.hook(&archive, "BeforeInstall", "d-INDEX0001").output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = sandbox.hook(&archive, "AfterInstall", "d-INDEX0001").output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(last_line(&out).contains("venv built with pip"), "{}", describe(&out));
    let _service = sandbox.start_service(UNIT).unwrap();
    let (status, body) = http_get(port, "/healthz", Duration::from_secs(20)).unwrap();
    assert_eq!(status, 200, "{body}");
}
