//! Hostile and broken revisions, each built here, each with the finding `verify` must report.

use std::io::Read;

use tar::EntryType;
use xtask::verify::{Options, verify};

use super::{
    Member, assert_error, gzip, rules, simple, tar_bytes, verify_bytes, verify_members, write_input,
};

fn with(extra: Vec<Member>) -> Vec<Member> {
    let mut members = simple();
    members.extend(extra);
    members
}

/// A 64-byte ELF64 little-endian header with no program headers: a static binary for `machine`.
fn minimal_elf(machine: u16) -> Vec<u8> {
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(machine.to_le_bytes());
    elf.extend(1u32.to_le_bytes());
    elf.extend(0u64.to_le_bytes()); // entry
    elf.extend(0u64.to_le_bytes()); // phoff
    elf.extend(0u64.to_le_bytes()); // shoff
    elf.extend(0u32.to_le_bytes()); // flags
    elf.extend(64u16.to_le_bytes());
    elf.extend(56u16.to_le_bytes());
    elf.extend(0u16.to_le_bytes());
    elf.extend(64u16.to_le_bytes());
    elf.extend(0u16.to_le_bytes());
    elf.extend(0u16.to_le_bytes());
    elf
}

fn elf_hook(binary: Vec<u8>) -> Vec<Member> {
    let appspec = "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: bin/hook\n";
    vec![Member::file("appspec.yml", 0o644, appspec.as_bytes()), Member::file("bin/hook", 0o755, &binary)]
}

/// The members of the real example bundle, to tamper with.
fn ours() -> Vec<Member> {
    let bytes = std::fs::read(tests::example_bundle()).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let header = entry.header();
        out.push(Member {
            path: entry.path_bytes().into_owned(),
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            data,
            link: entry.link_name_bytes().map(|l| l.into_owned()),
            uid: 0,
        });
    }
    out
}

fn replace(members: &mut [Member], path: &str, data: &[u8]) {
    let member = members
        .iter_mut()
        .find(|m| m.path == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} in the bundle"));
    member.data = data.to_vec();
}

fn content(members: &[Member], path: &str) -> String {
    let member = members.iter().find(|m| m.path == path.as_bytes()).unwrap();
    String::from_utf8(member.data.clone()).unwrap()
}

#[test]
fn a_simple_foreign_revision_is_clean() {
    let report = verify_members(&simple());
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    assert!(!report.ours);
    // The same as a plain .tar.
    let report = verify_bytes("bundle.tar", &tar_bytes(&simple()), &Options::default());
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
}

#[test]
fn path_traversal() {
    assert_error(
        &verify_members(&with(vec![Member::file("../evil.sh", 0o755, b"x")])),
        "archive.path-traversal",
    );
    assert_error(
        &verify_members(&with(vec![Member::file("scripts/../../evil", 0o644, b"x")])),
        "archive.path-traversal",
    );
}

#[test]
fn absolute_path() {
    assert_error(
        &verify_members(&with(vec![Member::file("/etc/cron.d/evil", 0o644, b"x")])),
        "archive.absolute-path",
    );
}

#[test]
fn unnormalized_and_non_utf8_paths() {
    assert_error(
        &verify_members(&with(vec![Member::file("scripts//x", 0o644, b"x")])),
        "archive.path-not-normalized",
    );
    let mut bad = Member::file("x", 0o644, b"x");
    bad.path = b"caf\xe9".to_vec();
    assert_error(&verify_members(&with(vec![bad])), "archive.path-encoding");
    // A leading ./ is what `tar -C dir .` writes: accepted.
    let dotted: Vec<Member> = simple()
        .into_iter()
        .map(|mut m| {
            m.path = [b"./".as_slice(), &m.path].concat();
            m
        })
        .collect();
    assert!(verify_members(&dotted).findings.is_empty());
}

#[test]
fn symlink_escapes() {
    let absolute = with(vec![Member::link("scripts/passwd", EntryType::Symlink, "/etc/passwd")]);
    assert_error(&verify_members(&absolute), "archive.symlink-escape");
    let relative = with(vec![Member::link("scripts/up", EntryType::Symlink, "../../etc")]);
    assert_error(&verify_members(&relative), "archive.symlink-escape");
    // A link that stays inside is fine, and a hook may be reached through it.
    let inside = with(vec![Member::link("scripts/alias.sh", EntryType::Symlink, "install.sh")]);
    assert!(verify_members(&inside).findings.is_empty());
}

#[test]
fn entries_written_through_a_symlink() {
    let members = with(vec![
        Member::link("lib", EntryType::Symlink, "scripts"),
        Member::file("lib/planted.sh", 0o755, b"#!/bin/sh\n"),
    ]);
    assert_error(&verify_members(&members), "archive.symlink-parent");
}

#[test]
fn hardlink_escapes() {
    let out = with(vec![Member::link("scripts/shadow", EntryType::Link, "/etc/shadow")]);
    assert_error(&verify_members(&out), "archive.hardlink-escape");
    let dangling = with(vec![Member::link("scripts/copy", EntryType::Link, "nowhere")]);
    assert_error(&verify_members(&dangling), "archive.hardlink-escape");
    let inside = with(vec![Member::link("scripts/copy.sh", EntryType::Link, "scripts/install.sh")]);
    assert!(verify_members(&inside).findings.is_empty());
    // A hard link shares its target's mode, whatever its own header says: a hook through it is
    // executable.
    let mut through = inside;
    let appspec = super::APPSPEC.replace("scripts/install.sh", "scripts/copy.sh");
    through[0] = Member::file("appspec.yml", 0o644, appspec.as_bytes());
    through.last_mut().unwrap().mode = 0o644;
    let report = verify_members(&through);
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
}

#[test]
fn devices_and_fifos() {
    assert_error(
        &verify_members(&with(vec![Member::special("dev/null", EntryType::Char)])),
        "archive.device",
    );
    assert_error(
        &verify_members(&with(vec![Member::special("dev/sda", EntryType::Block)])),
        "archive.device",
    );
    assert_error(&verify_members(&with(vec![Member::special("pipe", EntryType::Fifo)])), "archive.fifo");
}

#[test]
fn duplicate_entries() {
    let members = with(vec![Member::file("scripts/install.sh", 0o755, b"#!/bin/sh\nrm -rf /\n")]);
    assert_error(&verify_members(&members), "archive.duplicate-entry");
}

#[test]
fn truncated_gzip() {
    let bytes = gzip(&tar_bytes(&simple()));
    let report = verify_bytes("bundle.tgz", &bytes[..bytes.len() / 2], &Options::default());
    assert_error(&report, "archive.corrupt");
    // Only the 8-byte trailer missing: the CRC cannot be checked.
    let report = verify_bytes("bundle.tgz", &bytes[..bytes.len() - 8], &Options::default());
    assert_error(&report, "archive.corrupt");
}

#[test]
fn corrupt_gzip_and_garbage() {
    let mut bytes = gzip(&tar_bytes(&simple()));
    let n = bytes.len();
    bytes[n - 6] ^= 0xff; // the CRC
    assert_error(&verify_bytes("bundle.tgz", &bytes, &Options::default()), "archive.corrupt");
    assert_error(&verify_bytes("bundle.tar", &[7u8; 3000], &Options::default()), "archive.corrupt");
}

#[test]
fn truncated_tar() {
    let bytes = tar_bytes(&simple());
    let report = verify_bytes("bundle.tar", &bytes[..700], &Options::default());
    assert_error(&report, "archive.corrupt");
}

#[test]
fn gzip_bomb() {
    // 64 MiB of zeros compresses to about 64 KiB; the cap is lowered so the test stays quick.
    let zeros = vec![0u8; 64 << 20];
    let members = with(vec![Member::file("payload.bin", 0o644, &zeros)]);
    let bytes = gzip(&tar_bytes(&members));
    assert!(bytes.len() < 1 << 20, "a bomb: {} compressed bytes", bytes.len());
    let options = Options {
        limits: packaging::reader::Limits { max_expanded: 16 << 20, ..Default::default() },
        ..Options::default()
    };
    assert_error(&verify_bytes("bundle.tgz", &bytes, &options), "archive.too-large");
    // The zeros of a tar's end blocks alone also count: a stream of nothing but zeros is stopped.
    let endless = gzip(&vec![0u8; 32 << 20]);
    let report = verify_bytes("bundle.tgz", &endless, &options);
    assert!(report.findings.iter().any(|f| f.is_error()), "{:?}", rules(&report));
}

#[test]
fn no_appspec() {
    let members = vec![Member::file("scripts/install.sh", 0o755, super::SCRIPT)];
    let report = verify_members(&members);
    assert_error(&report, "archive.appspec-missing");
    assert!(report.findings[0].message.starts_with("The CodeDeploy agent did not find an AppSpec file"));
}

#[test]
fn appspec_yaml_is_not_enough() {
    let mut members = simple();
    members[0] = Member::file("appspec.yaml", 0o644, super::APPSPEC.as_bytes());
    let report = verify_members(&members);
    assert_error(&report, "archive.appspec-missing");
    assert!(report.findings.iter().any(|f| f.fix.contains("rename appspec.yaml")));
    members[0] = Member::file("AppSpec.yml", 0o644, super::APPSPEC.as_bytes());
    let report = verify_members(&members);
    assert_error(&report, "archive.appspec-missing");
    assert!(report.findings.iter().any(|f| f.fix.starts_with("rename AppSpec.yml to appspec.yml")));
}

#[test]
fn single_top_level_directory_is_stripped() {
    let mut members = vec![Member::dir("myapp/")];
    members.extend(simple().into_iter().map(|mut m| {
        m.path = [b"myapp/".as_slice(), &m.path].concat();
        m
    }));
    let report = verify_members(&members);
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    assert_eq!(report.stripped.as_deref(), Some("myapp"));
    // Anything beside the directory disables the stripping.
    members.push(Member::file("README", 0o644, b"hi"));
    assert_error(&verify_members(&members), "archive.layout");
}

#[test]
fn hook_missing_and_not_a_file() {
    let mut members = simple();
    members.pop();
    let report = verify_members(&members);
    assert_error(&report, "hook.missing");
    let missing = report.findings.iter().find(|f| f.rule == "hook.missing").unwrap();
    assert_eq!((missing.file.as_str(), missing.line, missing.col), ("appspec.yml", Some(5), Some(15)));
    members.push(Member::dir("scripts/install.sh/"));
    assert_error(&verify_members(&members), "hook.not-file");
}

#[test]
fn crlf_script() {
    let mut members = simple();
    members[2] = Member::file("scripts/install.sh", 0o755, b"#!/bin/bash\r\necho hi\r\n");
    let report = verify_members(&members);
    assert_error(&report, "hook.crlf");
    let crlf = report.findings.iter().find(|f| f.rule == "hook.crlf").unwrap();
    assert_eq!((crlf.file.as_str(), crlf.line, crlf.col), ("scripts/install.sh", Some(1), Some(12)));
}

#[test]
fn script_without_shebang_or_exec_bit_warns() {
    let mut members = simple();
    members[2] = Member::file("scripts/install.sh", 0o644, b"echo hi\n");
    let report = verify_members(&members);
    assert_eq!(rules(&report), ["W:hook.not-executable", "W:hook.shebang"]);
    assert_eq!(report.errors(), 0);
}

#[test]
fn dynamically_linked_hook() {
    let dynamic = std::fs::read("/bin/true").expect("/bin/true, a dynamically linked ELF");
    let options = Options { arch: Some(packaging::bundle::Arch::X86_64), ..Options::default() };
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&elf_hook(dynamic))), &options);
    assert_error(&report, "hook.elf-dynamic");
}

#[test]
fn hook_for_the_wrong_arch() {
    let options = Options { arch: Some(packaging::bundle::Arch::X86_64), ..Options::default() };
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&elf_hook(minimal_elf(183)))), &options);
    assert_eq!(rules(&report), ["E:hook.elf-arch"]);
    // A static binary of the right machine is fine.
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&elf_hook(minimal_elf(62)))), &options);
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    // Without --arch and without a manifest, the machine cannot be compared.
    let report = verify_members(&elf_hook(minimal_elf(62)));
    assert_eq!(rules(&report), ["W:hook.elf-arch"]);
}

#[test]
fn our_bundle_for_the_wrong_arch() {
    let bytes = std::fs::read(tests::example_bundle()).unwrap();
    let options = Options { arch: Some(packaging::bundle::Arch::Aarch64), ..Options::default() };
    let report = verify_bytes("bundle.tgz", &bytes, &options);
    // The hook, the vendored wheels and uv are all for x86_64.
    assert_eq!(rules(&report), ["E:hook.elf-arch", "E:wheels.target", "E:uv.elf-arch"]);
    // release.yaml's arch is the default: claiming aarch64 there with an x86_64 hook is caught
    // (and the manifest notices the edit).
    let mut members = ours();
    let release =
        content(&members, "deploy/release.yaml").replace("\"arch\": \"x86_64\"", "\"arch\": \"aarch64\"");
    replace(&mut members, "deploy/release.yaml", release.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    assert_error(&report, "hook.elf-arch");
    assert_error(&report, "manifest.mismatch");
}

#[test]
fn manifest_mismatch() {
    let mut members = ours();
    let app = content(&members, "src/app.py") + "\n# tampered\n";
    replace(&mut members, "src/app.py", app.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    assert_eq!(rules(&report), ["E:manifest.mismatch"]);
    assert!(report.findings[0].message.starts_with("src/app.py: size"), "{}", report.findings[0]);
}

#[test]
fn manifest_unlisted_and_missing_files() {
    let mut members = ours();
    members.push(Member::file("src/extra.py", 0o644, b"print(1)\n"));
    members.retain(|m| m.path != b"configs/sample.env");
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    let mut got = rules(&report);
    got.sort();
    assert_eq!(got, ["E:manifest.mismatch", "E:manifest.unlisted"]);
}

#[test]
fn manifest_mode_mismatch() {
    let mut members = ours();
    members.iter_mut().find(|m| m.path == b"bin/deploy-hook").unwrap().mode = 0o644;
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    let mut got = rules(&report);
    got.sort();
    assert_eq!(got, ["E:manifest.mismatch", "W:hook.not-executable"]);
}

#[test]
fn our_config_files_are_checked() {
    let mut members = ours();
    let toml = content(&members, "configs/hypercorn.toml") + "worker = 4\n";
    replace(&mut members, "configs/hypercorn.toml", toml.as_bytes());
    let reqs = content(&members, "dependencies/requirements.pip") + "requests\n";
    replace(&mut members, "dependencies/requirements.pip", reqs.as_bytes());
    let unit = content(&members, "configs/python-app.service").replace("User=snake", "User=root");
    replace(&mut members, "configs/python-app.service", unit.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    for rule in ["hypercorn.unknown-key", "unit.content", "manifest.mismatch"] {
        assert_error(&report, rule);
    }
    assert!(rules(&report).contains(&"W:requirements.unpinned".to_owned()), "{:?}", rules(&report));
}

#[test]
fn broken_release_yaml() {
    let mut members = ours();
    let release = content(&members, "deploy/release.yaml") + "surprise: 1\n";
    replace(&mut members, "deploy/release.yaml", release.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    assert_error(&report, "release.syntax");
}

#[test]
fn files_source_missing() {
    let appspec =
        format!("{}files:\n  - source: config/app.ini\n    destination: /etc/app\n", super::APPSPEC);
    let mut members = simple();
    members[0] = Member::file("appspec.yml", 0o644, appspec.as_bytes());
    let report = verify_members(&members);
    assert_error(&report, "files.source-missing");
    assert!(rules(&report).contains(&"N:appspec.files-replaced".to_owned()));
}

#[test]
fn setuid_and_foreign_owner_warn() {
    let mut odd = Member::file("scripts/su", 0o4755, b"#!/bin/sh\n");
    odd.uid = 1234;
    let report = verify_members(&with(vec![odd]));
    assert_eq!(rules(&report), ["W:archive.setuid", "W:archive.owner"]);
}

#[test]
fn appspec_traps_inside_a_bundle() {
    let appspec = "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: scripts/install.sh\n    runas: yes\n";
    let mut members = simple();
    members[0] = Member::file("appspec.yml", 0o644, appspec.as_bytes());
    let report = verify_members(&members);
    assert_error(&report, "appspec.runas");
}

#[test]
fn directory_input() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("appspec.yml"), super::APPSPEC).unwrap();
    std::fs::create_dir(root.join("scripts")).unwrap();
    std::fs::write(root.join("scripts/install.sh"), super::SCRIPT).unwrap();
    std::fs::set_permissions(
        root.join("scripts/install.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let report = verify(root, &Options::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", rules(&report));

    std::os::unix::fs::symlink("/etc/passwd", root.join("scripts/passwd")).unwrap();
    let fifo = root.join("scripts/pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let report = verify(root, &Options::default()).unwrap();
    let mut got = rules(&report);
    got.sort();
    assert_eq!(got, ["E:archive.fifo", "T:archive.symlink-escape"]);
}

#[test]
fn unreadable_input_is_an_error_not_a_report() {
    // A zip cut after its magic is read, and is a corrupt archive, as a truncated tgz is.
    let (_dir, path) = write_input("bundle.zip", b"PK\x03\x04");
    assert_error(&verify(&path, &Options::default()).unwrap(), "archive.corrupt");
    assert!(verify(std::path::Path::new("/nonexistent/bundle.tgz"), &Options::default()).is_err());
}

#[test]
fn a_file_where_a_directory_is_needed() {
    let members = with(vec![Member::file("scripts/install.sh/x", 0o644, b"x")]);
    assert_error(&verify_members(&members), "archive.path-conflict");
}

#[test]
fn systemd_analyze_output_is_a_finding() {
    let mut members = ours();
    let unit = content(&members, "configs/python-app.service");
    let line = unit.lines().position(|l| l.starts_with("Restart=")).expect("a Restart= line") + 1;
    let unit = unit.replace("Restart=on-failure", "Restart=sometimes");
    replace(&mut members, "configs/python-app.service", unit.as_bytes());
    let report = verify_bytes(
        "bundle.tgz",
        &gzip(&tar_bytes(&members)),
        &Options { systemd_analyze: true, ..Options::default() },
    );
    let found = report.findings.iter().find(|f| f.rule == "unit.systemd-analyze").unwrap_or_else(|| {
        panic!("systemd-analyze (installed on our machines) reports the bad Restart=: {:?}", rules(&report))
    });
    assert_eq!((found.file.as_str(), found.line), ("configs/python-app.service", Some(line)));
    assert!(found.message.contains("sometimes"), "{found}");
}

#[test]
fn our_appspec_keeps_every_event_and_no_files_in_the_app_root() {
    let mut members = ours();
    let appspec = content(&members, "appspec.yml");
    let appspec = appspec.replace("ValidateService:", "ValidateServic:")
        + "files:\n  - source: src\n    destination: /home/snake/app/current\n";
    replace(&mut members, "appspec.yml", appspec.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    let mut got = rules(&report);
    got.sort();
    // The misspelt event is an appspec error, so the ours.* checks wait for a clean appspec.
    assert_eq!(got, ["E:manifest.mismatch", "N:appspec.files-replaced", "T:appspec.hook-name"]);

    let mut members = ours();
    let appspec = content(&members, "appspec.yml")
        + "files:\n  - source: src\n    destination: /home/snake/app/current\n";
    let appspec =
        appspec.replace("  ValidateService:\n  - location: bin/deploy-hook\n    timeout: 300\n", "");
    replace(&mut members, "appspec.yml", appspec.as_bytes());
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
    let mut got = rules(&report);
    got.sort();
    assert_eq!(
        got,
        ["E:manifest.mismatch", "N:appspec.files-replaced", "T:ours.files", "W:ours.hooks"],
        "{}",
        content(&members, "appspec.yml")
    );
}
