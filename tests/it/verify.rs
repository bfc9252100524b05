//! `cargo xtask verify`: the appspec corpus, hostile and broken bundles built here byte by byte,
//! the real bundle verifying clean, exit codes, `--json` and the rendered human output.

mod appspec_corpus;
mod hostile;
mod install;
mod zip;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use appspec::diag::Finding;
use xtask::verify::{Options, Report, verify};

/// One raw tar member. Paths and link names are written into the header as given, so the
/// nasty cases (`..`, absolute paths) the tar crate's safe setters refuse can be built.
pub struct Member {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub uid: u64,
}

impl Member {
    pub fn file(path: &str, mode: u32, data: &[u8]) -> Member {
        Member {
            path: path.into(),
            kind: tar::EntryType::Regular,
            mode,
            data: data.to_vec(),
            link: None,
            uid: 0,
        }
    }
    pub fn dir(path: &str) -> Member {
        Member {
            path: path.into(),
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: Vec::new(),
            link: None,
            uid: 0,
        }
    }
    pub fn link(path: &str, kind: tar::EntryType, target: &str) -> Member {
        Member { path: path.into(), kind, mode: 0o777, data: Vec::new(), link: Some(target.into()), uid: 0 }
    }
    pub fn special(path: &str, kind: tar::EntryType) -> Member {
        Member { path: path.into(), kind, mode: 0o644, data: Vec::new(), link: None, uid: 0 }
    }
}

/// The members as an uncompressed tar.
pub fn tar_bytes(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for m in members {
        let mut header = tar::Header::new_gnu();
        if m.path.len() >= 100 && m.link.is_none() {
            // A long name (a vendored wheel's): the GNU long-name entry GNU tar writes, as our
            // bundles carry it.
            header.set_entry_type(m.kind);
            header.set_mode(m.mode);
            header.set_size(m.data.len() as u64);
            header.set_uid(m.uid);
            header.set_gid(0);
            header.set_mtime(1);
            let path = std::str::from_utf8(&m.path).expect("long test paths are UTF-8");
            builder.append_data(&mut header, path, m.data.as_slice()).expect("appending to a Vec");
            continue;
        }
        {
            let old = header.as_old_mut();
            assert!(m.path.len() < old.name.len(), "test paths stay under 100 bytes");
            old.name.fill(0);
            old.name[..m.path.len()].copy_from_slice(&m.path);
            if let Some(link) = &m.link {
                old.linkname.fill(0);
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        header.set_entry_type(m.kind);
        header.set_mode(m.mode);
        header.set_size(m.data.len() as u64);
        header.set_uid(m.uid);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_cksum();
        builder.append(&header, m.data.as_slice()).expect("appending to a Vec");
    }
    builder.into_inner().expect("finishing a Vec")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip to a Vec");
    gz.finish().expect("gzip to a Vec")
}

pub const APPSPEC: &str =
    "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: scripts/install.sh\n    timeout: 300\n";
pub const SCRIPT: &[u8] = b"#!/bin/sh\necho installed\n";

/// A small valid revision that is not ours (no deploy/MANIFEST): a shell hook.
pub fn simple() -> Vec<Member> {
    vec![
        Member::file("appspec.yml", 0o644, APPSPEC.as_bytes()),
        Member::dir("scripts/"),
        Member::file("scripts/install.sh", 0o755, SCRIPT),
    ]
}

/// Writes `bytes` to a file named `name` in a fresh temporary directory.
pub fn write_input(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("writing the input");
    (dir, path)
}

pub fn verify_bytes(name: &str, bytes: &[u8], options: &Options) -> Report {
    let (_dir, path) = write_input(name, bytes);
    verify(&path, options).expect("the input is readable")
}

pub fn verify_members(members: &[Member]) -> Report {
    verify_bytes("bundle.tgz", &gzip(&tar_bytes(members)), &Options::default())
}

pub fn rules(report: &Report) -> Vec<String> {
    report.findings.iter().map(appspec_corpus::code).collect()
}

/// Asserts that `rule` is reported as an error.
pub fn assert_error(report: &Report, rule: &str) {
    let shown: Vec<String> = report.findings.iter().map(Finding::to_string).collect();
    assert!(
        report.findings.iter().any(|f| f.rule == rule && f.is_error()),
        "expected error {rule}, got:\n{}",
        shown.join("\n")
    );
}

/// Runs `cargo xtask verify ARGS` from the workspace root.
pub fn xtask_verify(args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(tests::project_root())
        .args(["xtask", "verify"])
        .args(args)
        .output()
        .expect("running cargo xtask verify")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

#[test]
fn the_bundle_from_xtask_bundle_verifies_clean() {
    let bundle = tests::example_bundle();
    let output = xtask_verify(&[path_arg(bundle)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", tests::describe(&output));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the summary line: {stdout}");
    assert!(
        lines[0].ends_with(": ok: 0 errors, 0 warnings, 0 notes (20 files, ours, unit exposure 1.3)"),
        "{stdout}"
    );

    // The same revision extracted by GNU tar, as the agent does, verifies clean too.
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar").arg("-xzpf").arg(bundle).arg("-C").arg(dir.path()).status().unwrap();
    assert!(status.success());
    let report = verify(dir.path(), &Options::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    assert!(report.ours);
}

#[test]
fn exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tgz");
    let mut members = simple();
    members.push(Member::file("../escape", 0o644, b"x"));
    std::fs::write(&bad, gzip(&tar_bytes(&members))).unwrap();

    let output = xtask_verify(&[path_arg(&bad)]);
    assert_eq!(output.status.code(), Some(1), "{}", tests::describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("../escape: error[archive.path-traversal]:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .contains("FAILED: 1 error the deployment fails on, 0 warnings, 0 notes"),
        "{stdout}"
    );

    let output = xtask_verify(&["--json", path_arg(&bad)]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let items = json.as_array().expect("an array");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["rule"], "archive.path-traversal");
    assert_eq!(items[0]["severity"], "error");
    assert_eq!(items[0]["agent"], "fails");
    assert_eq!(items[0]["file"], "../escape");
    assert!(items[0]["line"].is_null());

    // Warnings alone still exit 0.
    let warned = dir.path().join("warned.tgz");
    let mut members = simple();
    members[2] = Member::file("scripts/install.sh", 0o755, b"echo no shebang\n");
    std::fs::write(&warned, gzip(&tar_bytes(&members))).unwrap();
    let output = xtask_verify(&[path_arg(&warned)]);
    assert_eq!(output.status.code(), Some(0), "{}", tests::describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("warning[hook.shebang]"));

    // Could not run: unreadable input, bad flags.
    let missing = dir.path().join("missing.tgz");
    assert_eq!(xtask_verify(&[path_arg(&missing)]).status.code(), Some(2));
    assert_eq!(xtask_verify(&["--no-such-flag", path_arg(&bad)]).status.code(), Some(2));
    assert_eq!(xtask_verify(&["--arch", "mips", path_arg(&bad)]).status.code(), Some(2));

    // --rehearse: skipped after static errors (exit 1); a foreign revision cannot be rehearsed (exit 2).
    let rehearse = xtask_verify(&["--rehearse", path_arg(&bad)]);
    assert_eq!(rehearse.status.code(), Some(1), "{}", tests::describe(&rehearse));
    assert!(
        String::from_utf8_lossy(&rehearse.stdout)
            .lines()
            .last()
            .unwrap()
            .ends_with("skipped: the static checks found 1 error"),
        "{}",
        tests::describe(&rehearse)
    );
    let rehearse = xtask_verify(&["--rehearse", "--json", path_arg(&bad)]);
    assert_eq!(rehearse.status.code(), Some(1), "{}", tests::describe(&rehearse));
    let json: serde_json::Value = serde_json::from_slice(&rehearse.stdout).expect("--json prints JSON");
    assert_eq!(json["findings"][0]["rule"], "archive.path-traversal");
    assert_eq!(json["rehearsal"]["skipped"], "the static checks found 1 error");
    assert_eq!(json["rehearsal"]["steps"], serde_json::json!([]));
    let rehearse = xtask_verify(&["--rehearse", path_arg(&warned)]);
    assert_eq!(rehearse.status.code(), Some(2), "{}", tests::describe(&rehearse));
    assert!(
        String::from_utf8_lossy(&rehearse.stderr).contains("the rehearsal needs one of our revisions"),
        "{}",
        tests::describe(&rehearse)
    );
}

#[test]
fn json_output_snapshot() {
    let mut members = simple();
    members[2] = Member::file("scripts/install.sh", 0o755, b"#!/bin/sh\r\necho hi\r\n");
    let report = verify_members(&members);
    expect_test::expect![[r#"
        [
          {
            "agent": "fails",
            "column": 10,
            "file": "scripts/install.sh",
            "fix": "convert the script to LF line endings (dos2unix)",
            "line": 1,
            "message": "CRLF line endings: the kernel reads the interpreter as `…\\r` (\"bad interpreter\") and the shell sees `\\r` in every command",
            "rule": "hook.crlf",
            "severity": "error"
          }
        ]"#]].assert_eq(&report.render_json());
}

#[test]
fn human_output_snapshot() {
    let appspec = "version: \"0.0\"\nos: linux\nhooks:\n  AfterInstal:\n  - location: scripts/install.sh\n    timeout: 7200\npermissions:\n  - object: /opt/app\n    mode: 0644\n";
    let mut members = simple();
    members[0] = Member::file("appspec.yml", 0o644, appspec.as_bytes());
    members.push(Member::link("scripts/passwd", tar::EntryType::Symlink, "/etc/passwd"));
    let report = verify_members(&members);
    expect_test::expect![[r#"
        scripts/passwd: error[archive.symlink-escape]: symlink to "/etc/passwd" points outside the revision (fix: make the link relative and inside the revision, or ship the file itself)
        appspec.yml:1:10: error[appspec.version]: The deployment failed because an invalid version value (0.0) was entered in the application specification file. Make sure your AppSpec file specifies "0.0" as the version, and then try again. (fix: write `version: 0.0` without quotes: a quoted "0.0" is a string, and the agent wants the number)
        appspec.yml:4:3: error[appspec.hook-name]: unknown lifecycle event AfterInstal: the agent silently never runs it (did you mean `AfterInstall`?) (codedeploy-local: ArgumentError: appspec.yml file contains unknown lifecycle events: ["AfterInstal"]) (fix: rename it to AfterInstall)
        appspec.yml:6:14: error[appspec.timeout]: timeout 7200 is over 3600 seconds, the documented maximum for a hook; the agent accepts it but the deployment can be failed by the service (fix: keep each script under 3600 seconds and split long work across events)
        appspec.yml:9:11: error[appspec.mode-octal]: unquoted mode 0644 is the octal number 420 under YAML 1.1: the agent applies mode 420, not 644 (fix: quote it: mode: "0644")
        verify bundle.tgz: FAILED: 5 errors (1 the deployment fails on, 4 the agent accepts: traps), 0 warnings, 0 notes (2 files)
    "#]]
    .assert_eq(&report.render_human("bundle.tgz"));
}
