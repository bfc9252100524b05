//! Every lifecycle event and the outside commands in a sandbox, with the `process` service
//! manager running the real hypercorn from the release: health gate, automatic revert, rollback,
//! status, prune.

use std::{fs, path::Path, process::Output, time::Duration};

use tests::{
    build_bundle, describe, edit_file,
    sandbox::{Sandbox, example_variant, free_port, http_get},
};

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned()
}

/// Kills the sandbox's supervised service and its socket holder when the test ends, pass or fail.
struct StopService<'a>(&'a Sandbox);

impl Drop for StopService<'_> {
    fn drop(&mut self) {
        for pidfile in ["service.pid", "listen.pid"] {
            if let Ok(text) = fs::read_to_string(self.0.state_dir().join(pidfile))
                && let Some(pid) = text.split(' ').next()
            {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
        }
    }
}

/// Runs `events` of one deployment in order with the process manager; returns each output.
fn deploy(sandbox: &Sandbox, archive: &Path, deployment_id: &str, events: &[&str]) -> Vec<Output> {
    events
        .iter()
        .map(|event| {
            sandbox
                .hook(archive, event, deployment_id)
                .env("DEPLOY_HOOK_SERVICE_MANAGER", "process")
                .output()
                .unwrap()
        })
        .collect()
}

fn revision_served(port: u16) -> String {
    let (status, body) = http_get(port, "/healthz", Duration::from_secs(20)).unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["revision"].as_str().unwrap().to_owned()
}

#[test]
fn health_gate_reverts_and_rollback_and_status_tell_the_story() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[("deadline: 60", "deadline: 6")]).unwrap();
    let mut sandbox = Sandbox::new().unwrap();
    sandbox.provide_uv().unwrap();
    let _stop = StopService(&sandbox);
    let first = ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"];
    let later = ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"];

    let bundle_a = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let archive_a = sandbox.extract(&bundle_a, "d-LIFEA0001").unwrap();
    for out in deploy(&sandbox, &archive_a, "d-LIFEA0001", &first) {
        assert!(out.status.success(), "{}", describe(&out));
    }
    let rev_a = sandbox.current().unwrap();
    assert_eq!(revision_served(port), rev_a);

    edit_file(&app, "src/app.py", "hello", "hello B");
    let bundle_b = build_bundle(&app, &dir.path().join("b"), &[]).unwrap();
    let archive_b = sandbox.extract(&bundle_b, "d-LIFEB0001").unwrap();
    // ApplicationStop runs from the previous revision's archive, with the new deployment id.
    let stop = deploy(&sandbox, &archive_a, "d-LIFEB0001", &["ApplicationStop"]).remove(0);
    assert!(stop.status.success() && last_line(&stop).contains("keeps serving"), "{}", describe(&stop));
    for out in deploy(&sandbox, &archive_b, "d-LIFEB0001", &later) {
        assert!(out.status.success(), "{}", describe(&out));
    }
    let rev_b = sandbox.current().unwrap();
    assert_eq!(revision_served(port), rev_b);

    // A revision whose health check fails: ValidateService goes back to B and marks C bad.
    edit_file(
        &app,
        "src/app.py",
        "await _send(send, 200, body, b\"application/json\")",
        "await _send(send, 503, body, b\"application/json\")",
    );
    let bundle_c = build_bundle(&app, &dir.path().join("c"), &[]).unwrap();
    let archive_c = sandbox.extract(&bundle_c, "d-LIFEC0001").unwrap();
    let outs = deploy(&sandbox, &archive_c, "d-LIFEC0001", &later);
    for out in &outs[..3] {
        assert!(out.status.success(), "{}", describe(out));
    }
    let validate = &outs[3];
    assert_eq!(validate.status.code(), Some(1), "{}", describe(validate));
    let verdict = last_line(validate);
    assert!(verdict.starts_with("validate-service failed: GET http://127.0.0.1:"), "{verdict}");
    assert!(
        verdict.contains("HTTP 503") && verdict.contains(&format!("back on {rev_b} (healthy)")),
        "{verdict}"
    );
    let rev_c = fs::read_to_string(archive_c.join("deploy/MANIFEST"))
        .map(|m| packaging::Manifest::revision_id(&m))
        .unwrap();
    assert!(verdict.contains(&format!("{rev_c} marked bad")), "{verdict}");
    assert!(
        String::from_utf8_lossy(&validate.stdout).contains("the service's last log lines"),
        "{}",
        describe(validate)
    );
    assert_eq!(sandbox.current().as_deref(), Some(rev_b.as_str()));
    assert_eq!(revision_served(port), rev_b);

    // By hand: rollback refuses the bad release, then goes back to A.
    let hook = |args: &[&str]| {
        sandbox
            .hook(&archive_b, "", "d-UNUSED0001")
            .env_remove("LIFECYCLE_EVENT")
            .env("DEPLOY_HOOK_SERVICE_MANAGER", "process")
            .args(args)
            .output()
            .unwrap()
    };
    let refused = hook(&["rollback", "--to", &rev_c]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(last_line(&refused).contains("is marked Bad; pass --force"), "{}", describe(&refused));
    let back = hook(&["rollback"]);
    assert!(back.status.success(), "{}", describe(&back));
    assert_eq!(last_line(&back), format!("rollback ok: {rev_a} live and healthy (was {rev_b})"));
    assert_eq!(revision_served(port), rev_a);

    let status = hook(&["status", "--json"]);
    assert!(status.status.success(), "{}", describe(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["current"], rev_a.as_str());
    assert_eq!(status["previous"], rev_b.as_str());
    assert!(status["service"].as_str().unwrap().starts_with("active"), "{status}");
    let state_of = |rev: &str| {
        status["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["revision"] == rev)
            .map(|r| r["state"].clone())
            .unwrap()
    };
    assert_eq!(state_of(&rev_a), "live");
    assert_eq!(state_of(&rev_b), "live");
    assert_eq!(state_of(&rev_c), "bad");
    let events: Vec<&str> =
        status["journal"].as_array().unwrap().iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"Rollback") && events.contains(&"ValidateService"), "{events:?}");

    let human = hook(&["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(&format!("current {rev_a}, previous {rev_b}")),
        "{}",
        describe(&human)
    );

    // Prune by hand keeps the current and the previous whatever N says; the bad one stays for forensics.
    let pruned = hook(&["prune", "--keep", "1"]);
    assert!(pruned.status.success(), "{}", describe(&pruned));
    let releases = sandbox.listing("releases");
    assert!(
        releases.contains(&rev_a) && releases.contains(&rev_b) && releases.contains(&rev_c),
        "{releases:?}"
    );

    // A damaged journal: a non-UTF-8 line and a 100 KiB line in the middle. Status reports them
    // and reads the rest; rollback still works from it.
    let journal_path = sandbox.state_dir().join("journal.jsonl");
    let text = fs::read(&journal_path).unwrap();
    let cut = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut damaged = text[..cut].to_vec();
    damaged.extend_from_slice(b"{\"time\": \"\xff\xfe\"}\n");
    damaged.extend(std::iter::repeat_n(b'x', 100 * 1024));
    damaged.push(b'\n');
    damaged.extend_from_slice(&text[cut..]);
    fs::write(&journal_path, damaged).unwrap();
    let status = hook(&["status", "--json"]);
    assert!(status.status.success(), "{}", describe(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["journal_skipped"], 2, "{status}");
    assert_eq!(status["current"], rev_a.as_str());
    assert_eq!(status["previous"], rev_b.as_str());
    let human = hook(&["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains("journal.jsonl: skipped 2 lines that are not records (line 2, 3;"),
        "{}",
        describe(&human)
    );
    let back = hook(&["rollback"]);
    assert!(back.status.success(), "{}", describe(&back));
    assert_eq!(last_line(&back), format!("rollback ok: {rev_b} live and healthy (was {rev_a})"));
    assert!(String::from_utf8_lossy(&back.stderr).contains("skipped 2 lines"), "{}", describe(&back));

    // A forced rollback onto the bad release switches, then fails its health check: the switch
    // and the failure are both recorded, and status names what is live.
    let forced = hook(&["rollback", "--to", &rev_c, "--force"]);
    assert_eq!(forced.status.code(), Some(1), "{}", describe(&forced));
    assert_eq!(sandbox.current().as_deref(), Some(rev_c.as_str()));
    // The journal still holds the two damaged lines: read it as the hook does, skipping them.
    let journal: Vec<serde_json::Value> = String::from_utf8_lossy(&fs::read(&journal_path).unwrap())
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let tail: Vec<(&str, &str)> = journal[journal.len() - 2..]
        .iter()
        .map(|r| (r["revision"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(tail, [(rev_c.as_str(), "live"), (rev_c.as_str(), "bad")], "{journal:#?}");
    assert_eq!(journal[journal.len() - 2]["message"], format!("rolled back from {rev_b}"));
    assert!(
        journal[journal.len() - 1]["message"].as_str().unwrap().contains("current is on"),
        "{journal:#?}"
    );
    let status = hook(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["current"], rev_c.as_str());
}

#[test]
fn events_that_must_not_fail_and_preflight_errors() {
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(tests::example_bundle(), "d-EVENTS001").unwrap();
    // ApplicationStop before anything was installed: exit 0.
    let out = sandbox.hook(&archive, "ApplicationStop", "d-EVENTS001").output().unwrap();
    assert!(
        out.status.success() && last_line(&out).contains("not installed, nothing to stop"),
        "{}",
        describe(&out)
    );
    // An event with nothing configured: exit 0 and say so.
    let out = sandbox.hook(&archive, "BeforeAllowTraffic", "d-EVENTS001").output().unwrap();
    assert!(out.status.success() && last_line(&out).contains("nothing is configured"), "{}", describe(&out));
    let out = sandbox.hook(&archive, "SomethingNew", "d-EVENTS001").output().unwrap();
    assert!(out.status.success() && last_line(&out).contains("nothing is configured"), "{}", describe(&out));
    // BeforeInstall passes here, and names the user and the space it checked.
    let out = sandbox.hook(&archive, "BeforeInstall", "d-EVENTS001").output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(last_line(&out).starts_with("before-install ok: user snake (1500:1500)"), "{}", describe(&out));
    // Without the app user, it says how to create it.
    fs::write(sandbox.root.join("etc/passwd"), "root:x:0:0::/root:/bin/bash\n").unwrap();
    let out = sandbox.hook(&archive, "BeforeInstall", "d-EVENTS001").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        last_line(&out)
            .contains("the user \"snake\" does not exist on this instance (create it first: useradd"),
        "{}",
        describe(&out)
    );
    // ApplicationStop still exits 0, with a warning.
    let out = sandbox.hook(&archive, "ApplicationStop", "d-EVENTS001").output().unwrap();
    assert!(out.status.success() && last_line(&out).contains("with a warning"), "{}", describe(&out));
    // Even when the old revision it runs from is broken.
    fs::write(archive.join("deploy/release.yaml"), "{ not json").unwrap();
    let out = sandbox.hook(&archive, "ApplicationStop", "d-EVENTS001").output().unwrap();
    assert!(out.status.success() && last_line(&out).contains("with a warning"), "{}", describe(&out));
    assert!(last_line(&out).contains("deploy/release.yaml"), "{}", describe(&out));
}

#[test]
fn a_missing_interpreter_fails_preflight() {
    let port = free_port();
    let (dir, app) =
        example_variant(port, &[("python: /usr/bin/python3", "python: /opt/nowhere/python3")]).unwrap();
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let sandbox = Sandbox::new().unwrap();
    let archive = sandbox.extract(&bundle, "d-NOPY00001").unwrap();
    let out = sandbox.hook(&archive, "BeforeInstall", "d-NOPY00001").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        last_line(&out).contains("the interpreter /opt/nowhere/python3 does not exist"),
        "{}",
        describe(&out)
    );
}

/// The process manager's socket holder keeps the port open across restarts: a steady stream of
/// requests through two ApplicationStarts loses none; the holder is one process, reused. Two
/// hypercorn workers share the inherited socket.
#[test]
fn the_process_manager_restarts_behind_a_held_socket() {
    let port = free_port();
    let (dir, app) = example_variant(port, &[("workers: 1", "workers: 2")]).unwrap();
    let mut sandbox = Sandbox::new().unwrap();
    sandbox.provide_uv().unwrap();
    let _stop = StopService(&sandbox);
    let bundle = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
    let archive = sandbox.extract(&bundle, "d-LISTEN001").unwrap();
    let events = ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"];
    for out in deploy(&sandbox, &archive, "d-LISTEN001", &events) {
        assert!(out.status.success(), "{}", describe(&out));
    }
    let holder = fs::read_to_string(sandbox.state_dir().join("listen.pid")).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limits = xtask::load::Limits {
        max_requests: 20_000,
        max_time: Duration::from_secs(300),
        interval: Duration::from_millis(10),
    };
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || xtask::load::run(addr, "/", limits, &stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        let out = deploy(&sandbox, &archive, "d-LISTEN001", &["ApplicationStart"]).remove(0);
        assert!(out.status.success(), "{}", describe(&out));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = client.join().unwrap();
    println!("2 restarts behind the held socket: {report}");
    assert!(report.ok > 0 && report.failures() == 0, "{report}: {:?}", report.samples);
    assert_eq!(fs::read_to_string(sandbox.state_dir().join("listen.pid")).unwrap(), holder);

    // status names the socket, who holds it and what it listens on.
    let status = sandbox
        .hook(&archive, "", "d-UNUSED0001")
        .env_remove("LIFECYCLE_EVENT")
        .env("DEPLOY_HOOK_SERVICE_MANAGER", "process")
        .arg("status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", describe(&status));
    let pid = holder.split_whitespace().next().unwrap();
    let line = format!("python-app.socket is held by process {pid}, listening on 127.0.0.1:{port}");
    assert!(String::from_utf8_lossy(&status.stdout).contains(&line), "{line}\n{}", describe(&status));
}
