//! `cargo xtask verify --rehearse`: the example bundle goes through every lifecycle event in a
//! sandbox with a real venv and hypercorn; a bundle whose health check fails stops the rehearsal
//! at ValidateService; either way no process and no sandbox directory is left, even when the
//! rehearsing process is killed.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tests::{build_bundle, describe, sandbox::example_variant, sandbox::free_port};

use crate::verify::xtask_verify;

const EVENTS: [&str; 5] =
    ["ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"];

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The sandbox directory the rehearsal announced.
fn sandbox_of(text: &str) -> PathBuf {
    let line = text.lines().find_map(|l| l.strip_prefix("rehearse: sandbox ")).expect("a sandbox line");
    PathBuf::from(line.split(" (root ").next().unwrap())
}

/// Processes whose cwd, executable or command line mention `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let links = ["cwd", "exe"].map(|l| fs::read_link(entry.path().join(l)).unwrap_or_default());
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if links.iter().any(|l| l.starts_with(dir)) || cmdline.contains(dir) {
            found.push(format!("{name}: {links:?} {cmdline}"));
        }
    }
    found
}

/// The rehearsal left no process and no directory, and nothing answers on its port.
fn assert_nothing_left(output: &Output, port: u16) {
    let sandbox = sandbox_of(&stdout(output));
    assert!(!sandbox.exists(), "{} is left\n{}", sandbox.display(), describe(output));
    let left = processes_in(&sandbox);
    assert!(left.is_empty(), "processes left: {left:#?}\n{}", describe(output));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "something still answers on port {port}");
}

fn event_line<'a>(text: &'a str, event: &str) -> &'a str {
    text.lines()
        .find(|l| l.strip_prefix("rehearse: ").is_some_and(|rest| rest.starts_with(&format!("{event} "))))
        .unwrap_or_else(|| panic!("no line for {event} in\n{text}"))
}

#[test]
fn the_example_bundle_rehearses_clean_and_leaves_nothing() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[]).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("out"), &[]).unwrap();
    let bundle = bundle.to_str().unwrap();

    let output = xtask_verify(&["--rehearse", bundle]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with(": ok: 0 errors, 0 warnings, 0 notes (20 files, ours, unit exposure 1.3)"),
        "{text}"
    );
    let secs = |line: &str| -> f64 {
        line.split_whitespace().nth(2).unwrap().trim_end_matches('s').parse().unwrap()
    };
    for event in EVENTS {
        let line = event_line(&text, event);
        assert!(!line.contains("FAILED") && secs(line) < 600.0, "{line}");
    }
    // Building the venv from the index takes a while; the time is the hook's, not a placeholder.
    assert!(secs(event_line(&text, "AfterInstall")) > 0.5, "{text}");
    assert!(event_line(&text, "ApplicationStop").contains("not installed, nothing to stop"), "{text}");
    assert!(event_line(&text, "AfterInstall").contains("venv built with"), "{text}");
    assert!(
        event_line(&text, "ValidateService")
            .contains(&format!("validate-service ok: http://127.0.0.1:{port}/healthz healthy")),
        "{text}"
    );
    assert!(text.contains("stopped the service (process group "), "{text}");
    assert!(text.lines().last().unwrap().contains(": ok: 5 of 5 events passed in "), "{text}");
    assert_nothing_left(&output, port);

    // --json: one object with the findings and the steps; progress goes to stderr.
    let output = xtask_verify(&["--rehearse", "--json", bundle]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(json["findings"], serde_json::json!([]));
    assert_eq!(json["rehearsal"]["ok"], true);
    let steps = json["rehearsal"]["steps"].as_array().unwrap();
    let events: Vec<&str> = steps.iter().map(|s| s["event"].as_str().unwrap()).collect();
    assert_eq!(events, EVENTS);
    assert!(steps.iter().all(|s| s["ok"] == true && s["seconds"].is_f64()), "{json}");
    assert!(steps[2]["seconds"].as_f64().unwrap() > 0.5, "{json}");
    assert!(steps[4]["verdict"].as_str().unwrap().starts_with("validate-service ok:"), "{json}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rehearse: sandbox "), "{stderr}");
    let sandbox = PathBuf::from(json["rehearsal"]["sandbox"].as_str().unwrap());
    assert!(!sandbox.exists() && processes_in(&sandbox).is_empty(), "{}", sandbox.display());

    // The health check's port taken here: no rehearsal, and the message names the port.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let output = xtask_verify(&["--rehearse", bundle]);
    drop(listener);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("port {port} is already in use on this machine")), "{stderr}");
    assert!(!stdout(&output).contains("rehearse: ApplicationStop"), "{}", describe(&output));
}

#[test]
fn a_failing_health_check_stops_the_rehearsal_at_validate_service() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[("deadline: 60", "deadline: 5")]).unwrap();
    let app_py = app.join("src/app.py");
    let from = "await _send(send, 200, body, b\"application/json\")";
    let code = fs::read_to_string(&app_py).unwrap();
    assert!(code.contains(from), "src/app.py lacks {from:?}");
    fs::write(&app_py, code.replacen(from, &from.replace("200", "503"), 1)).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("out"), &[]).unwrap();

    let output = xtask_verify(&["--rehearse", bundle.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = stdout(&output);
    for event in &EVENTS[..4] {
        assert!(!event_line(&text, event).contains("FAILED"), "{text}");
    }
    let validate = event_line(&text, "ValidateService");
    assert!(validate.contains("FAILED: validate-service failed: GET http://127.0.0.1:"), "{validate}");
    assert!(validate.contains("HTTP 503"), "{validate}");
    assert!(text.contains("rehearse: the whole output of ValidateService (exit status: 1):"), "{text}");
    assert!(text.contains("    | "), "{text}");
    assert!(
        text.contains("bin/deploy-hook: error[rehearse.event]: ValidateService failed in the rehearsal"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().contains(": FAILED at ValidateService: 4 of 5 events passed"),
        "{text}"
    );
    assert_nothing_left(&output, port);

    // The rehearsing process killed during ValidateService, before its own cleanup: its janitor
    // stops the service and removes the sandbox.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(tests::project_root())
        .args(["xtask", "verify", "--rehearse", bundle.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sandbox = None;
    let mut started = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("rehearse: sandbox ") {
            sandbox = Some(sandbox_of(&line));
        }
        if line.starts_with("rehearse: ApplicationStart ") {
            started = true;
            break;
        }
    }
    assert!(started, "the rehearsal never reached ApplicationStart");
    let sandbox = sandbox.expect("a sandbox line");
    // `cargo run` execs xtask on Unix; look at its children too, but not at the janitor.
    let rehearsing = |pid: &u32| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("xtask"))
            && args.contains(&b"--rehearse".as_slice())
            && !args.contains(&b"--rehearse-janitor".as_slice())
    };
    let xtask = std::iter::once(child.id())
        .chain(children(child.id()))
        .find(rehearsing)
        .expect("the rehearsing xtask process");
    let killed = Command::new("kill").args(["-KILL", &xtask.to_string()]).status().unwrap();
    assert!(killed.success());
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (sandbox.exists() || !processes_in(&sandbox).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sandbox.exists(), "{} is left after the rehearsal was killed", sandbox.display());
    let left = processes_in(&sandbox);
    assert!(left.is_empty(), "processes left after the rehearsal was killed: {left:#?}");
}

/// The children of `pid`, from every thread's `/proc/<pid>/task/<tid>/children`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .flat_map(|task| {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}
