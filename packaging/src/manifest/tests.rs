//! Manifest rendering, parsing and tree checks.

use std::{fs, os::unix::fs::PermissionsExt};

use expect_test::expect;

use super::*;

fn sample() -> Manifest {
    let mut m = Manifest::default();
    m.push("src/app.py", FILE, b"print('hi')\n");
    m.push("bin/deploy-hook", EXECUTABLE, b"\x7fELF");
    m.push("src/link", SYMLINK, b"app.py");
    m.sort();
    m
}

#[test]
fn renders_sorted_and_parses_back() {
    let text = sample().render();
    expect![[r#"
        # deploy MANIFEST v1: sha256 mode size path
        3bdbb4fe8397cd2b842430b39ccff01a8663c751945ef5e9a09e267fb8b1d359 100755 4 bin/deploy-hook
        caf026f25d7140209f98072605307a438914b9ce6f3c14b23d15d9667241de52 100644 12 src/app.py
        568470d013cd12e4f388206520da39ab9a4e4c3c6b95846cbc281abc1ba3c959 120777 6 src/link
    "#]]
    .assert_eq(&text);
    assert_eq!(Manifest::parse(&text).unwrap(), sample());
    assert!(Manifest::revision_id(&text).starts_with("r-"));
}

#[test]
fn rejects_bad_lines() {
    let good = sample().render();
    let cases = [
        (good.replace("100644", "100600"), "mode 100600"),
        (good.replace("src/app.py", "../app.py"), "not a clean relative path"),
        (good.replace("src/link", "bin/deploy-hook"), "out of order or repeated"),
        (good.replacen("# deploy", "#deploy", 1), "expected the header"),
        (format!("{good}abc 100644 1 x\n"), "is not a sha256"),
    ];
    for (text, want) in cases {
        let err = Manifest::parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        assert!(err.starts_with("deploy/MANIFEST:"), "{err}");
    }
}

#[test]
fn verifies_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("src/app.py"), b"print('hi')\n").unwrap();
    fs::write(root.join("bin/deploy-hook"), b"\x7fELF").unwrap();
    fs::set_permissions(root.join("bin/deploy-hook"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("app.py", root.join("src/link")).unwrap();
    let m = sample();
    m.verify_tree(root).unwrap();

    fs::write(root.join("src/app.py"), b"print('HI')\n").unwrap();
    let err = m.verify_tree(root).unwrap_err().to_string();
    assert!(err.starts_with("src/app.py: sha256"), "{err}");
    fs::write(root.join("src/app.py"), b"print('hi')\n").unwrap();

    fs::set_permissions(root.join("bin/deploy-hook"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(m.verify_tree(root).unwrap_err().to_string().starts_with("bin/deploy-hook: mode 100644"));
    fs::set_permissions(root.join("bin/deploy-hook"), fs::Permissions::from_mode(0o755)).unwrap();

    fs::write(root.join("src/extra.py"), b"").unwrap();
    assert_eq!(m.verify_tree(root).unwrap_err().to_string(), "src/extra.py: is not in the manifest");
    fs::remove_file(root.join("src/extra.py")).unwrap();

    fs::remove_file(root.join("src/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("src/link")).unwrap();
    assert!(m.verify_tree(root).unwrap_err().to_string().starts_with("src/link: size"));
}

#[test]
fn the_uv_line_round_trips_and_is_checked() {
    let mut m = sample();
    m.push(layout::UV, EXECUTABLE, b"\x7fELF");
    m.sort();
    m.uv_version = Some("0.13.9".into());
    let text = m.render();
    assert_eq!(text.lines().nth(1), Some("# bin/uv: uv 0.13.9"));
    assert_eq!(Manifest::parse(&text).unwrap(), m);

    let bad = text.replace("uv 0.13.9", "uv 0.13.9;rm");
    expect!["deploy/MANIFEST:2: \"0.13.9;rm\" is not a uv version"]
        .assert_eq(&Manifest::parse(&bad).unwrap_err().to_string());
    let without_uv: String =
        text.lines().filter(|l| !l.ends_with(" bin/uv")).map(|l| format!("{l}\n")).collect();
    expect!["deploy/MANIFEST:2: names a uv version but lists no bin/uv"]
        .assert_eq(&Manifest::parse(&without_uv).unwrap_err().to_string());
}
