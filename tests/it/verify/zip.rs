//! Zip revisions: made by the `zip` tool and by Python's zipfile (what `aws deploy push` uses),
//! read the same as the agent's `unzip -qo` extracts them, and hostile zips built here byte by
//! byte (traversal, absolute paths, symlinks out of the revision or under a symlink, repeated
//! names, sizes that lie, bombs, devices, encryption, truncation).

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
    process::Command,
};

use packaging::reader::{self, Kind, Limits};
use xtask::verify::Options;

use super::{APPSPEC, SCRIPT, assert_error, rules, verify_bytes, write_input};

/// One raw zip member: the name as written, the whole Unix `st_mode` (type bits included) for
/// the external attributes, the content, and optionally a size that lies.
struct Raw {
    name: Vec<u8>,
    mode: u32,
    data: Vec<u8>,
    deflate: bool,
    declared: Option<u32>,
    flags: u16,
}

fn raw(name: &str, mode: u32, data: &[u8]) -> Raw {
    Raw { name: name.into(), mode, data: data.to_vec(), deflate: false, declared: None, flags: 0 }
}

fn le16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn le32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A zip written field by field (APPNOTE 4.3.7, 4.3.12, 4.3.16): local headers with the data,
/// the central directory "made by Unix", the end record.
fn zip_bytes(members: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let mut crc = flate2::Crc::new();
        crc.update(&m.data);
        let stored = if m.deflate {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&m.data).unwrap();
            enc.finish().unwrap()
        } else {
            m.data.clone()
        };
        let size = m.declared.unwrap_or(m.data.len() as u32);
        let method = if m.deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        le32(&mut out, 0x0403_4b50);
        for v in [20, m.flags, method, 0, 0x21] {
            le16(&mut out, v);
        }
        for v in [crc.sum(), stored.len() as u32, size] {
            le32(&mut out, v);
        }
        le16(&mut out, m.name.len() as u16);
        le16(&mut out, 0);
        out.extend_from_slice(&m.name);
        out.extend_from_slice(&stored);

        le32(&mut central, 0x0201_4b50);
        for v in [3 << 8 | 20, 20, m.flags, method, 0, 0x21] {
            le16(&mut central, v);
        }
        for v in [crc.sum(), stored.len() as u32, size] {
            le32(&mut central, v);
        }
        for v in [m.name.len() as u16, 0, 0, 0, 0] {
            le16(&mut central, v);
        }
        le32(&mut central, m.mode << 16);
        le32(&mut central, offset);
        central.extend_from_slice(&m.name);
    }
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    le32(&mut out, 0x0605_4b50);
    for v in [0, 0, members.len() as u16, members.len() as u16] {
        le16(&mut out, v);
    }
    le32(&mut out, central.len() as u32);
    le32(&mut out, start);
    le16(&mut out, 0);
    out
}

fn simple_raw() -> Vec<Raw> {
    vec![
        raw("appspec.yml", 0o100644, APPSPEC.as_bytes()),
        raw("scripts/", 0o040755, b""),
        raw("scripts/install.sh", 0o100755, SCRIPT),
    ]
}

fn verify_zip(members: &[Raw]) -> xtask::verify::Report {
    verify_bytes("bundle.zip", &zip_bytes(members), &Options::default())
}

/// What a revision holds: path -> (kind, mode, content hash).
fn listing(revision: &reader::Revision) -> BTreeMap<String, String> {
    revision
        .items
        .iter()
        .map(|(path, item)| {
            let what = match &item.kind {
                Kind::File { sha256, .. } => format!("file {:o} {sha256}", item.mode),
                Kind::Dir => "dir".to_owned(),
                Kind::Symlink { target } => format!("link {target}"),
            };
            (path.clone(), what)
        })
        .collect()
}

/// A revision tree on disk: appspec, an executable hook, a symlink to it, a nested file.
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::create_dir_all(root.join("app/static")).unwrap();
    std::fs::write(
        root.join("appspec.yml"),
        format!("{APPSPEC}files:\n  - source: ./\n    destination: /srv/app\n"),
    )
    .unwrap();
    std::fs::write(root.join("scripts/install.sh"), SCRIPT).unwrap();
    std::fs::set_permissions(root.join("scripts/install.sh"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::fs::write(root.join("app/static/site.css"), b"body {}\n").unwrap();
    symlink("install.sh", root.join("scripts/current")).unwrap();
}

/// The agent's own extraction, `unzip -qo ZIP -d DIR`, read back as a directory.
fn unzipped(zip: &Path) -> reader::Revision {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unzip").arg("-qo").arg(zip).arg("-d").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "unzip: {}", String::from_utf8_lossy(&out.stderr));
    reader::read(dir.path(), &Limits::default()).unwrap()
}

#[test]
fn zip_tool_revision_reads_as_unzip_extracts_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rev");
    tree(&root);
    let zip = dir.path().join("rev.zip");
    let status = Command::new("zip")
        .args(["-qry", "../rev.zip", "."])
        .current_dir(&root)
        .status()
        .expect("the zip tool");
    assert!(status.success());

    let report = xtask::verify::verify(&zip, &Options::default()).unwrap();
    assert!(!report.findings.iter().any(|f| f.is_error()), "{:?}", rules(&report));
    let revision = reader::read(&zip, &Limits::default()).unwrap();
    assert_eq!(revision.items["scripts/current"].kind, Kind::Symlink { target: "install.sh".into() });
    assert_eq!(revision.items["scripts/install.sh"].mode, 0o755);
    assert_eq!(listing(&revision), listing(&unzipped(&zip)));

    // A single top-level directory holding the appspec is stripped, as the agent does.
    let nested = dir.path().join("nested.zip");
    let status =
        Command::new("zip").args(["-qry", "nested.zip", "rev"]).current_dir(dir.path()).status().unwrap();
    assert!(status.success());
    let revision = reader::read(&nested, &Limits::default()).unwrap();
    assert_eq!(revision.stripped.as_deref(), Some("rev"));
    assert!(revision.findings.is_empty(), "{:?}", revision.findings);
}

#[test]
fn python_zipfile_revision_reads_as_unzip_extracts_it() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("py.zip");
    // As `aws deploy push` writes them: ZIP_DEFLATED, Unix modes in the external attributes;
    // directories are implied, a symlink is a member with S_IFLNK and its target as content.
    let script = format!(
        r#"
import stat, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    def add(name, mode, data):
        info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
        info.create_system = 3
        info.external_attr = mode << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
    add("appspec.yml", stat.S_IFREG | 0o644, {appspec:?})
    add("scripts/install.sh", stat.S_IFREG | 0o755, {script:?})
    add("scripts/current", stat.S_IFLNK | 0o777, "install.sh")
    add("app/data.bin", stat.S_IFREG | 0o644, bytes(range(256)) * 4096)
"#,
        appspec = APPSPEC,
        script = String::from_utf8_lossy(SCRIPT),
    );
    let out = Command::new("python3").arg("-c").arg(&script).arg(&zip).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = xtask::verify::verify(&zip, &Options::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    assert_eq!(report.files, 4);
    let revision = reader::read(&zip, &Limits::default()).unwrap();
    assert_eq!(revision.items["scripts/current"].kind, Kind::Symlink { target: "install.sh".into() });
    assert_eq!(listing(&revision), listing(&unzipped(&zip)));
}

#[test]
fn hostile_zips_built_byte_by_byte() {
    let with = |extra: Vec<Raw>| {
        let mut members = simple_raw();
        members.extend(extra);
        members
    };
    let clean = verify_zip(&simple_raw());
    assert!(clean.findings.is_empty(), "{:?}", rules(&clean));

    assert_error(&verify_zip(&with(vec![raw("../evil.sh", 0o100755, b"x")])), "archive.path-traversal");
    assert_error(&verify_zip(&with(vec![raw("/etc/cron.d/x", 0o100644, b"x")])), "archive.absolute-path");
    assert_error(
        &verify_zip(&with(vec![raw("scripts/passwd", 0o120777, b"/etc/passwd")])),
        "archive.symlink-escape",
    );
    assert_error(&verify_zip(&with(vec![raw("up", 0o120777, b"../..")])), "archive.symlink-escape");
    assert_error(
        &verify_zip(&with(vec![raw("link", 0o120777, b"scripts"), raw("link/x.sh", 0o100755, b"x")])),
        "archive.symlink-parent",
    );
    assert_error(
        &verify_zip(&with(vec![raw("scripts/install.sh", 0o100755, b"#!/bin/sh\n")])),
        "archive.duplicate-entry",
    );
    assert_error(&verify_zip(&with(vec![raw("dev", 0o020644, b"")])), "archive.device");
    assert_error(&verify_zip(&with(vec![raw("win\\path.txt", 0o100644, b"x")])), "archive.zip-backslash");
    let mut locked = raw("secret.txt", 0o100644, b"x");
    locked.flags = 1;
    assert_error(&verify_zip(&with(vec![locked])), "archive.zip-encrypted");

    // A repeated directory is a warning, as in tar.
    let report = verify_zip(&with(vec![raw("scripts/", 0o040755, b"")]));
    assert_eq!(rules(&report), ["W:archive.duplicate-entry"]);

    // A size that lies: the header says 5 bytes, the data inflates to 1 MiB.
    let mut liar = raw("big.bin", 0o100644, &vec![7u8; 1 << 20]);
    liar.deflate = true;
    liar.declared = Some(5);
    assert_error(&verify_zip(&with(vec![liar])), "archive.corrupt");

    // A bomb: 64 MiB of zeros in about 64 KiB; the cap is lowered so the test stays quick.
    let mut bomb = raw("payload.bin", 0o100644, &vec![0u8; 64 << 20]);
    bomb.deflate = true;
    let bytes = zip_bytes(&with(vec![bomb]));
    assert!(bytes.len() < 1 << 20, "a bomb: {} bytes", bytes.len());
    let options =
        Options { limits: Limits { max_expanded: 16 << 20, ..Default::default() }, ..Options::default() };
    assert_error(&verify_bytes("bundle.zip", &bytes, &options), "archive.too-large");
    let options =
        Options { limits: Limits { max_entry: 1 << 20, ..Default::default() }, ..Options::default() };
    assert_error(&verify_bytes("bundle.zip", &bytes, &options), "archive.entry-too-large");
    // The same entry repeated under many names (an overlapping-entry bomb) is counted each time.
    let many: Vec<Raw> = (0..40).map(|i| raw(&format!("f{i}"), 0o100644, &vec![0u8; 1 << 20])).collect();
    let options =
        Options { limits: Limits { max_expanded: 16 << 20, ..Default::default() }, ..Options::default() };
    assert_error(&verify_bytes("bundle.zip", &zip_bytes(&with(many)), &options), "archive.too-large");
    let options = Options { limits: Limits { max_entries: 10, ..Default::default() }, ..Options::default() };
    let many: Vec<Raw> = (0..20).map(|i| raw(&format!("f{i}"), 0o100644, b"x")).collect();
    assert_error(&verify_bytes("bundle.zip", &zip_bytes(&with(many)), &options), "archive.too-many-entries");

    // Truncated, or not a zip past its magic: a finding, exit 1, never a crash.
    let whole = zip_bytes(&simple_raw());
    for cut in [whole.len() - 10, whole.len() / 2, 4] {
        assert_error(&verify_bytes("bundle.zip", &whole[..cut], &Options::default()), "archive.corrupt");
    }
    let (_dir, path) = write_input("bad.zip", b"PK\x03\x04rest");
    let output = super::xtask_verify(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", tests::describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("error[archive.corrupt]"));
}
