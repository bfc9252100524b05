//! The hostile app user: a real unprivileged uid (`setpriv` to the app user's uid) acting
//! between and during lifecycle events, against the real `deploy-hook` run as root in a
//! sandbox. One test per attack of issue 8, plus the matrix (every path under the app root the
//! hook touches, replaced before each event by a symlink to a canary, a FIFO, or swapped while
//! the attacker holds the old lock) and the soak (`#[ignore]`d; see README).
//!
//! The attacker plants at the paths it finds and with only its own rights: where the new layout
//! leaves it no write access the plant itself fails, which is the point. Canaries live outside
//! the app root (root-only files, a directory with a subdirectory, a root process in a group of
//! its own) and must come through untouched; every event must end with a verdict line and never
//! hang (each run is bounded).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use tests::{
    build_bundle, describe, edit_file,
    sandbox::{APP_UID, Sandbox, example_variant, free_port},
};

const UNIT: &str = "python-app.service";
/// Longest any one hook run may take before the test calls it a hang.
const BOUND: Duration = Duration::from_secs(240);

/// Three revisions of one app (A, B, C differ in app.py), with a shared file, a shared dir, a
/// post-install command that prints its environment, keep_releases 2 and a short health
/// deadline; and a directory of wheels so venvs build offline in seconds.
struct Fixture {
    _dir: tempfile::TempDir,
    bundles: [PathBuf; 3],
    wheels: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let port = free_port();
        PORT.set(port).unwrap();
        let edits = [
            ("deadline: 60", "deadline: 4"),
            ("keep_releases: 5", "keep_releases: 2\nshared_files: [settings/local.ini]\nshared_dirs: [data]"),
            ("post_install: []", "post_install:\n  - name: env\n    run: [/usr/bin/env]\n    timeout: 60"),
        ];
        let (dir, app) = example_variant(port, &edits).unwrap();
        fs::create_dir_all(app.join("src/settings")).unwrap();
        fs::write(app.join("src/settings/local.ini"), "seeded = 1\n").unwrap();
        let a = build_bundle(&app, &dir.path().join("a"), &[]).unwrap();
        edit_file(&app, "src/app.py", "hello", "hello B");
        let b = build_bundle(&app, &dir.path().join("b"), &[]).unwrap();
        edit_file(&app, "src/app.py", "hello B", "hello C");
        let c = build_bundle(&app, &dir.path().join("c"), &[]).unwrap();
        let wheels = dir.path().join("wheels");
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d"])
            .arg(&wheels)
            .arg("-r")
            .arg(app.join("requirements.pip"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pip download: {}", describe(&out));
        for p in [dir.path(), wheels.as_path()] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for entry in fs::read_dir(&wheels).unwrap() {
            fs::set_permissions(entry.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
        }
        Fixture { _dir: dir, bundles: [a, b, c], wheels }
    })
}

/// The port the fixture's service binds.
static PORT: OnceLock<u16> = OnceLock::new();

/// Tests that run hypercorn on the fixture's port take turns.
static SERVICE: Mutex<()> = Mutex::new(());

/// What lives outside the app root and must not change: root-only files, a directory with a
/// subdirectory, and a root process in a process group of its own.
struct Canaries {
    dir: PathBuf,
    before: BTreeMap<PathBuf, (u32, u32, Vec<u8>)>,
    process: Child,
}

impl Canaries {
    fn new(base: &Path) -> Canaries {
        let dir = base.join("canary");
        fs::create_dir_all(dir.join("dir/sub")).unwrap();
        fs::write(dir.join("file"), "canary file\n").unwrap();
        fs::write(dir.join("secret.env"), "CANARY_SECRET=leaked\n").unwrap();
        fs::write(dir.join("dir/sub/kept"), "kept\n").unwrap();
        for (p, mode) in [("", 0o700), ("file", 0o600), ("secret.env", 0o600), ("dir", 0o700)] {
            fs::set_permissions(dir.join(p), fs::Permissions::from_mode(mode)).unwrap();
        }
        let process = Command::new("sleep").arg("900").process_group(0).spawn().unwrap();
        let before = snapshot(&dir);
        Canaries { dir, before, process }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("file")
    }

    fn assert_untouched(&mut self, what: &str) {
        let after = snapshot(&self.dir);
        assert_eq!(after, self.before, "{what}: a canary outside the app root changed");
        assert!(self.process.try_wait().unwrap().is_none(), "{what}: the canary process was killed");
    }
}

impl Drop for Canaries {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            out.insert(path, (0, 0, b"(removed)".to_vec()));
            continue;
        };
        let data = if meta.is_file() { fs::read(&path).unwrap() } else { Vec::new() };
        if meta.is_dir() {
            stack.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        out.insert(path, (meta.mode(), meta.uid(), data));
    }
    out
}

/// Runs `args` as the app user (uid and gid 1500, no groups); returns whether it succeeded.
/// A refused plant is the expected outcome on a safe layout, so failure is not an error here.
fn as_app(args: &[&str]) -> bool {
    as_app_cmd(args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success()
}

fn as_app_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={APP_UID}"), format!("--regid={APP_UID}"), "--clear-groups".into()])
        .arg("--")
        .args(args)
        .current_dir("/");
    cmd
}

/// A command's output, killed (with its group) and reported as a hang past [`BOUND`].
fn bounded(mut cmd: Command, what: &str) -> Output {
    let out_dir = tempfile::tempdir().unwrap();
    let (out, err) = (out_dir.path().join("out"), out_dir.path().join("err"));
    cmd.stdout(fs::File::create(&out).unwrap()).stderr(fs::File::create(&err).unwrap()).process_group(0);
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!("{what} hung for {}s: {}", BOUND.as_secs(), fs::read_to_string(&out).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: fs::read(out).unwrap(), stderr: fs::read(err).unwrap() }
}

/// A sandbox with A deployed, the canaries beside it, and the service stopped when dropped.
struct Target {
    sandbox: Sandbox,
    canaries: Canaries,
    archives: BTreeMap<String, PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        // Whatever the process manager started, under the old layout or the new one, and the
        // socket holder that keeps the fixture's port (socket activation).
        for pidfile in [
            self.sandbox.state_dir().join("service.pid"),
            self.sandbox.app_root().join("service.pid"),
            self.sandbox.state_dir().join("listen.pid"),
        ] {
            if let Ok(text) = fs::read_to_string(pidfile)
                && let Some(pid) = text.split(' ').next().and_then(|p| p.parse::<i32>().ok())
                && pid > 1
                && pid as u32 != self.canaries.process.id()
            {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
        }
    }
}

impl Target {
    /// A sandbox with nothing deployed yet.
    fn bare() -> Target {
        fixture();
        let mut sandbox = Sandbox::new().unwrap();
        sandbox.provide_uv().unwrap();
        let canaries = Canaries::new(sandbox.root.parent().unwrap());
        Target { sandbox, canaries, archives: BTreeMap::new() }
    }

    fn new() -> Target {
        let mut target = Target::bare();
        target.deploy(0, "d-A00000001", &["BeforeInstall", "AfterInstall"], "none");
        target
    }

    fn app(&self, rel: &str) -> String {
        self.sandbox.app_root().join(rel).to_str().unwrap().to_owned()
    }

    fn state(&self, rel: &str) -> String {
        self.sandbox.state_dir().join(rel).to_str().unwrap().to_owned()
    }

    /// The hook of bundle `which` (0 = A, 1 = B, 2 = C) for `id`, extracted on first use.
    fn archive(&mut self, which: usize, id: &str) -> PathBuf {
        let bundle = &fixture().bundles[which];
        self.archives
            .entry(id.to_owned())
            .or_insert_with(|| self.sandbox.extract(bundle, id).unwrap())
            .clone()
    }

    fn command(&mut self, which: usize, id: &str, event: &str, manager: &str) -> Command {
        let archive = self.archive(which, id);
        let mut cmd = self.sandbox.hook(&archive, event, id);
        cmd.env("DEPLOY_HOOK_SERVICE_MANAGER", manager)
            .env("DEPLOY_HOOK_LOCK_WAIT", "20")
            .env("UV_FIND_LINKS", &fixture().wheels)
            .env("UV_NO_INDEX", "1");
        cmd
    }

    /// Runs `events` of deployment `id` of bundle `which`; each must end with a verdict line.
    fn deploy(&mut self, which: usize, id: &str, events: &[&str], manager: &str) -> Vec<Output> {
        events
            .iter()
            .map(|event| {
                let cmd = self.command(which, id, event, manager);
                let out = bounded(cmd, &format!("{event} of {id}"));
                assert_verdict(&out, event);
                out
            })
            .collect()
    }

    /// `deploy-hook ARGS` by hand (rollback, status, prune) from bundle `which`.
    fn by_hand(&mut self, which: usize, args: &[&str]) -> Output {
        let mut cmd = self.command(which, "d-HAND00001", "", "none");
        cmd.env_remove("LIFECYCLE_EVENT").args(args);
        bounded(cmd, &format!("deploy-hook {}", args.join(" ")))
    }

    fn unit_of(&mut self, which: usize, id: &str) -> String {
        fs::read_to_string(self.archive(which, id).join("configs").join(UNIT)).unwrap()
    }

    fn installed_unit(&self) -> String {
        fs::read_to_string(self.sandbox.root.join("etc/systemd/system").join(UNIT)).unwrap()
    }
}

/// The last stdout line is a verdict: `<event> ok…` or `<event> failed: <reason>`.
fn assert_verdict(out: &Output, event: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let ok = last.contains(" ok") || last.contains(" failed: ") || last.starts_with("deploy-hook: nothing");
    assert!(ok, "{event} ended without a verdict line: {}", describe(out));
    if !out.status.success() {
        assert!(last.contains(" failed: ") && last.len() > 25, "{event}: an unclear failure: {last}");
    }
}

const EVENTS: [&str; 4] = ["ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart"];

#[test]
fn attack_01_tampered_unit_in_a_release_is_never_installed() {
    let mut t = Target::new();
    t.deploy(1, "d-B00000001", &EVENTS, "none");
    let rev_a = fs::read_dir(t.sandbox.app_root().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|name| Some(name) != t.sandbox.current().as_ref() && name.starts_with("r-"))
        .expect("A's release is on disk");
    let evil = t.sandbox.root.parent().unwrap().join("evil.service");
    fs::write(&evil, "[Service]\nExecStart=/bin/sh -c 'id > /tmp/pwned'\n").unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o644)).unwrap();
    let planted =
        as_app(&["cp", evil.to_str().unwrap(), &t.app(&format!("releases/{rev_a}/configs/{UNIT}"))]);
    // The .pth route: code in the venv that root's import check would run.
    let venv = fs::read_link(t.sandbox.app_root().join("current/.venv")).unwrap();
    let site = t.sandbox.app_root().join("current").join(&venv).join("lib");
    let pth_planted = as_app(&["cp", evil.to_str().unwrap(), site.join("evil.pth").to_str().unwrap()]);
    // A flip back to A (the agent's redeploy) and a manual rollback both install A's unit.
    t.deploy(0, "d-A00000002", &["BeforeInstall", "AfterInstall"], "none");
    assert_eq!(t.installed_unit(), t.unit_of(0, "d-A00000002"), "planted: {planted}");
    let installed = t.installed_unit();
    assert!(installed.contains("User=snake") && !installed.contains("pwned"), "{installed}");
    t.deploy(1, "d-B00000003", &["AfterInstall"], "none");
    let out = t.by_hand(1, &["rollback", "--to", &rev_a, "--force"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("install unit ok"), "{}", describe(&out));
    assert_eq!(t.installed_unit(), t.unit_of(0, "d-A00000002"));
    assert!(!site.join("evil.pth").exists(), "the app user wrote into a venv (planted: {pth_planted})");
    t.canaries.assert_untouched("attack 1");
}

#[test]
fn attack_02_journal_names_never_leave_releases() {
    let mut t = Target::new();
    // From `releases/`: app, snake, home, root, then the directory the canaries are in.
    let forged = ["../../../../../canary/dir", "../../../../../canary"]
        .map(|rev| {
            format!(
                "{{\"time\":\"2020-01-01T00:00:00Z\",\"deployment_id\":\"d-FORGED\",\"revision\":\"{rev}\",\"event\":\"AfterInstall\",\"state\":\"ready\"}}\n"
            )
        })
        .concat();
    let forged_file = t.sandbox.root.parent().unwrap().join("forged.jsonl");
    fs::write(&forged_file, forged).unwrap();
    fs::set_permissions(&forged_file, fs::Permissions::from_mode(0o644)).unwrap();
    // Appending where it may; else a copy with the forged lines renamed over the journal, which
    // works wherever the app user can write the directory holding it.
    for journal in [t.app("journal.jsonl"), t.state("journal.jsonl")] {
        let appended = append_as_app(&journal, &forged_file);
        let copy = format!("{journal}.new");
        let replaced = !appended
            && as_app(&["cp", &journal, &copy])
            && append_as_app(&copy, &forged_file)
            && as_app(&["mv", "-f", &copy, &journal]);
        println!("{journal}: appended {appended}, replaced {replaced}");
    }
    t.deploy(1, "d-B00000001", &["AfterInstall"], "none");
    t.deploy(2, "d-C00000001", &["AfterInstall"], "none");
    t.deploy(0, "d-A00000002", &["AfterInstall"], "none");
    let out = t.by_hand(0, &["prune", "--keep", "1"]);
    assert_verdict(&out, "prune");
    t.canaries.assert_untouched("attack 2");
}

/// Appends the file `data` to `path` as the app user; returns whether it could.
fn append_as_app(path: &str, data: &Path) -> bool {
    let mut cmd = as_app_cmd(&["tee", "-a", path]);
    cmd.stdin(fs::File::open(data).unwrap()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status().unwrap().success()
}

/// Replaces `rel` under the app root by a symlink to `target`, as the app user.
fn plant_symlink(t: &Target, rel: &str, target: &Path) -> bool {
    let _ = as_app(&["rm", "-rf", &t.app(rel)]);
    as_app(&["ln", "-s", target.to_str().unwrap(), &t.app(rel)])
}

#[test]
fn attack_03_lock_as_a_symlink() {
    let mut t = Target::new();
    let planted = plant_symlink(&t, ".lock", &t.canaries.file());
    let _ = as_app(&["ln", "-s", t.canaries.file().to_str().unwrap(), &t.state("lock")]);
    t.deploy(1, "d-B00000001", &EVENTS, "none");
    t.canaries.assert_untouched(&format!("attack 3 (planted: {planted})"));
}

#[test]
fn attack_04_journal_as_a_symlink() {
    let mut t = Target::new();
    let planted = plant_symlink(&t, "journal.jsonl", &t.canaries.file());
    t.deploy(1, "d-B00000001", &EVENTS, "none");
    t.canaries.assert_untouched(&format!("attack 4 (planted: {planted})"));
}

#[test]
fn attack_05_app_root_replaced_by_a_symlink() {
    let mut t = Target::new();
    let root = t.app("");
    let root = root.trim_end_matches('/');
    let moved = as_app(&["mv", root, &format!("{root}.old")]);
    let planted = moved && as_app(&["ln", "-s", t.canaries.dir.join("dir").to_str().unwrap(), root]);
    assert!(planted, "the app user owns the home, so it can replace the app root");
    let outs = t.deploy(1, "d-B00000001", &["BeforeInstall", "AfterInstall"], "none");
    t.canaries.assert_untouched("attack 5");
    assert!(!outs[1].status.success(), "AfterInstall went ahead in a symlinked app root");
    assert!(String::from_utf8_lossy(&outs[1].stdout).contains("symlink"), "{}", describe(&outs[1]));
}

#[test]
fn app_root_replaced_by_a_directory_of_the_app_user_is_refused() {
    let mut t = Target::new();
    let root = t.app("");
    let root = root.trim_end_matches('/');
    assert!(as_app(&["mv", root, &format!("{root}.old")]) && as_app(&["mkdir", root]));
    let outs = t.deploy(1, "d-B00000001", &["AfterInstall"], "none");
    assert!(!outs[0].status.success(), "AfterInstall built in a directory the app user made");
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    assert!(stdout.contains("someone replaced it; move it aside and deploy again"), "{stdout}");
    t.canaries.assert_untouched("replaced app root");
}

/// An app root as the previous deploy-hook left it: the app user's, with the journal, the lock,
/// releases, venvs and `current` inside, and a `shared/.env`.
fn legacy_layout(t: &Target) {
    let root = t.sandbox.app_root();
    let rev = "r-0123456789abcdef";
    for dir in ["", "releases", "venvs", "venvs/v-0123456789abcdef", "shared", "logs", "cache"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::create_dir_all(root.join("releases").join(rev)).unwrap();
    fs::write(root.join("releases").join(rev).join("app.py"), "old = 1\n").unwrap();
    std::os::unix::fs::symlink(format!("releases/{rev}"), root.join("current")).unwrap();
    let record = format!(
        "{{\"time\":\"2020-01-01T00:00:00Z\",\"deployment_id\":\"d-OLD\",\"revision\":\"{rev}\",\"event\":\"AfterInstall\",\"state\":\"live\"}}\n"
    );
    fs::write(root.join("journal.jsonl"), record).unwrap();
    fs::write(root.join("shared/.env"), "GREETING=from the legacy shared .env\n").unwrap();
    let out =
        Command::new("chown").args(["-R", &format!("{APP_UID}:{APP_UID}")]).arg(&root).output().unwrap();
    assert!(out.status.success());
    fs::write(root.join(".lock"), "").unwrap();
}

#[test]
fn a_host_of_the_old_layout_is_migrated() {
    let mut t = Target::bare();
    legacy_layout(&t);
    let outs = t.deploy(0, "d-A00000001", &["BeforeInstall", "AfterInstall"], "none");
    assert!(outs[1].status.success(), "{}", describe(&outs[1]));
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    assert!(stdout.contains("migrated") && stdout.contains("legacy-"), "{stdout}");
    let root = t.sandbox.app_root();
    assert_eq!(fs::metadata(&root).unwrap().uid(), 0, "the app root is root's now");
    let legacy: Vec<String> =
        t.sandbox.listing("").into_iter().filter(|n| n.starts_with("legacy-")).collect();
    assert_eq!(legacy.len(), 1, "{:?}", t.sandbox.listing(""));
    let moved = t.sandbox.listing(&legacy[0]);
    for name in [".lock", "current", "journal.jsonl", "releases", "venvs"] {
        assert!(moved.contains(&name.to_owned()), "{name} not moved aside: {moved:?}");
    }
    assert_eq!(fs::metadata(root.join("shared")).unwrap().uid(), APP_UID, "shared/ stays the app user's");
    let env = fs::read_to_string(t.sandbox.state_dir().join("service.env")).unwrap();
    assert_eq!(env, "GREETING=from the legacy shared .env\n");
    // The legacy journal was not read: only this deployment is in the new one.
    assert!(t.sandbox.journal().iter().all(|r| r["deployment_id"] == "d-A00000001"));
    t.deploy(1, "d-B00000001", &EVENTS, "none");
    t.canaries.assert_untouched("migration");
}

/// Holds the (old) lock as the app user while `swap` runs, then lets go, during AfterInstall.
fn swap_while_holding_lock(t: &mut Target, rel: &str) -> bool {
    let lock = t.app(".lock");
    let _ = as_app(&["rm", "-f", &lock]);
    let mut holder = as_app_cmd(&["flock", &lock, "sleep", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let cmd = t.command(1, "d-B00000001", "AfterInstall", "none");
    let hook_run = std::thread::spawn(move || bounded(cmd, "AfterInstall"));
    std::thread::sleep(Duration::from_millis(1500));
    let moved = as_app(&["mv", &t.app(rel), &t.app(&format!("{rel}.old"))]);
    let planted = as_app(&["ln", "-s", t.canaries.dir.join("dir").to_str().unwrap(), &t.app(rel)]);
    let _ = holder.wait();
    let out = hook_run.join().unwrap();
    assert_verdict(&out, "AfterInstall");
    moved && planted
}

#[test]
fn attack_06_venvs_swapped_while_holding_the_lock() {
    let mut t = Target::new();
    let planted = swap_while_holding_lock(&mut t, "venvs");
    t.canaries.assert_untouched(&format!("attack 6 (planted: {planted})"));
}

#[test]
fn attack_07_logs_swapped_while_holding_the_lock() {
    let mut t = Target::new();
    let planted = swap_while_holding_lock(&mut t, "logs");
    t.canaries.assert_untouched(&format!("attack 7 (planted: {planted})"));
}

#[test]
fn attack_08_service_log_as_a_symlink() {
    let _turn = SERVICE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Target::new();
    let _ = as_app(&["mkdir", "-p", &t.app("logs")]);
    let planted = plant_symlink(&t, "logs/service.log", &t.canaries.file());
    let outs = t.deploy(1, "d-B00000001", &EVENTS, "process");
    assert!(outs[3].status.success(), "the service did not start: {}", describe(&outs[3]));
    // hypercorn says where it listens once it does.
    tests::sandbox::http_get(PORT.get().copied().unwrap(), "/healthz", Duration::from_secs(20)).unwrap();
    t.canaries.assert_untouched(&format!("attack 8 (planted: {planted})"));
}

#[test]
fn attack_09_shared_env_never_reads_root_files() {
    let mut t = Target::new();
    let secret = t.canaries.dir.join("secret.env");
    let planted = plant_symlink(&t, "shared/.env", &secret);
    t.deploy(1, "d-B00000001", &["BeforeInstall", "AfterInstall"], "none");
    for log in [t.app("logs/d-B00000001.log"), t.state("logs/d-B00000001.log")] {
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains("CANARY_SECRET"),
            "root handed a root-only file to the app user ({log}, planted: {planted})"
        );
    }
    t.canaries.assert_untouched("attack 9");
}

#[test]
fn attack_10_forged_pidfile_never_signals_another_group() {
    let _turn = SERVICE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Target::new();
    let pid = t.canaries.process.id();
    let start = packaging::procfs::ProcStat::of(pid as i32).unwrap().start;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    // The pidfile as the previous layout wrote it ("PID START"), and as this one does.
    let mut planted = false;
    for (path, text) in [
        (t.app("service.pid"), format!("{pid} {start}\n")),
        (t.state("service.pid"), format!("{pid} {start} 0 {}\n", exe.display())),
    ] {
        let forged = t.sandbox.root.parent().unwrap().join("forged.pid");
        fs::write(&forged, text).unwrap();
        fs::set_permissions(&forged, fs::Permissions::from_mode(0o644)).unwrap();
        planted |= as_app(&["cp", forged.to_str().unwrap(), &path]);
    }
    let outs = t.deploy(1, "d-B00000001", &EVENTS, "process");
    assert!(outs[3].status.success(), "the service did not start: {}", describe(&outs[3]));
    t.canaries.assert_untouched(&format!("attack 10 (planted: {planted})"));
}

#[test]
fn attack_11_dangling_shared_file_link_creates_nothing() {
    let mut t = Target::new();
    let planted = plant_symlink(&t, "shared/settings/local.ini", &t.canaries.dir.join("created"));
    t.deploy(1, "d-B00000001", &["BeforeInstall", "AfterInstall"], "none");
    t.canaries.assert_untouched(&format!("attack 11 (planted: {planted})"));
}

#[test]
fn attack_12_journal_as_a_fifo_never_hangs() {
    let mut t = Target::new();
    let _ = as_app(&["rm", "-f", &t.app("journal.jsonl")]);
    let planted = as_app(&["mkfifo", &t.app("journal.jsonl")]);
    // `bounded` fails the test on a hang.
    t.deploy(1, "d-B00000001", &EVENTS, "none");
    t.canaries.assert_untouched(&format!("attack 12 (planted: {planted})"));
}

/// Every path under the app root the hook touches.
const PATHS: [&str; 16] = [
    ".lock",
    "journal.jsonl",
    "service.pid",
    "current",
    "releases",
    "venvs",
    "shared",
    "shared/.env",
    "shared/data",
    "shared/settings",
    "shared/settings/local.ini",
    "cache",
    "cache/tmp",
    "cache/uv",
    "logs",
    "logs/service.log",
];

/// One plant of the matrix, as the app user: a symlink to the canary file or directory, or a
/// FIFO, at `rel`.
fn plant(t: &Target, rel: &str, kind: usize) -> bool {
    match kind {
        0 => plant_symlink(t, rel, &t.canaries.file()),
        1 => plant_symlink(t, rel, &t.canaries.dir.join("dir")),
        _ => {
            let _ = as_app(&["rm", "-rf", &t.app(rel)]);
            as_app(&["mkfifo", &t.app(rel)])
        }
    }
}

#[test]
fn matrix_symlinks_and_fifos_before_every_event() {
    let mut t = Target::new();
    let mut planted = 0;
    for (i, rel) in PATHS.iter().enumerate() {
        for kind in 0..3 {
            let id = format!("d-M{:04}{kind:04}", i);
            for event in EVENTS {
                planted += usize::from(plant(&t, rel, kind));
                t.deploy((i + kind) % 2, &id, &[event], "none");
            }
            t.canaries.assert_untouched(&format!("matrix {rel} kind {kind}"));
        }
        // status prints a table, not a verdict; it must still read the state it owns.
        let out = t.by_hand(0, &["status"]);
        assert!(out.status.success(), "status after plants at {rel}: {}", describe(&out));
    }
    println!("matrix: {planted} plants the app user could make");
}

#[test]
fn matrix_directory_swaps_while_holding_the_old_lock() {
    let mut t = Target::new();
    let mut planted = 0;
    for rel in ["releases", "venvs", "shared", "cache", "logs", "cache/tmp"] {
        planted += usize::from(swap_while_holding_lock(&mut t, rel));
        t.canaries.assert_untouched(&format!("swap of {rel}"));
    }
    println!("swaps: {planted} the app user could make");
}

/// The soak: random plants from [`PATHS`] between `SOAK_RUNS` deployments (default 50); prints
/// how many changed anything outside the app root. Not a CI test: run it with
/// `cargo test -p tests --test it -- --ignored soak --nocapture`.
#[test]
#[ignore]
fn soak() {
    let runs: usize = std::env::var("SOAK_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut t = Target::new();
    let mut seed: u64 = std::process::id().into();
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut planted, mut changed) = (0, 0);
    for run in 0..runs {
        let rel = PATHS[next(PATHS.len())];
        planted += usize::from(plant(&t, rel, next(3)));
        let id = format!("d-S{run:08}");
        let _ = t.deploy(next(3), &id, &EVENTS, "none");
        let after = snapshot(&t.canaries.dir);
        if after != t.canaries.before || t.canaries.process.try_wait().unwrap().is_some() {
            changed += 1;
            t.canaries.before = after;
        }
    }
    println!(
        "soak: {runs} deployments, {planted} plants made, {changed} changed anything outside the app root"
    );
    assert_eq!(changed, 0);
}
