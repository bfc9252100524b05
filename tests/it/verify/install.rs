//! The agent's Install step against real archives: every condition under which it raises while
//! it turns `files:` and `permissions:` into instructions, one case each, and the cases it
//! installs cleanly (`source: ./`, symlinked directories, disjoint permissions).

use super::{APPSPEC, Member, SCRIPT, appspec_corpus::code, gzip, tar_bytes, verify_bytes};
use xtask::verify::Options;

/// A revision with a directory tree, a symlink to a directory and files that collide by name.
fn revision(extra: &str) -> Vec<Member> {
    let appspec = format!("{APPSPEC}{extra}");
    vec![
        Member::file("appspec.yml", 0o644, appspec.as_bytes()),
        Member::dir("scripts/"),
        Member::file("scripts/install.sh", 0o755, SCRIPT),
        Member::dir("app/"),
        Member::file("app/a.txt", 0o644, b"a"),
        Member::dir("app/conf/"),
        Member::file("app/conf/b.conf", 0o644, b"b"),
        Member::dir("conf/"),
        Member::file("conf/c.conf", 0o644, b"c"),
        Member::dir("extra/"),
        Member::file("extra/conf", 0o644, b"not a directory"),
        Member::file("index.html", 0o644, b"<p>hi</p>"),
        Member::link("link", tar::EntryType::Symlink, "app"),
    ]
}

/// The rules found beyond the one note every `files:` section gets, sorted.
fn install_rules(extra: &str) -> Vec<String> {
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&revision(extra))), &Options::default());
    let mut got: Vec<String> =
        report.findings.iter().map(code).filter(|c| c != "N:appspec.files-replaced").collect();
    got.sort();
    got
}

fn message(extra: &str, rule: &str) -> String {
    let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&revision(extra))), &Options::default());
    let found = report.findings.iter().find(|f| f.rule == rule);
    found.unwrap_or_else(|| panic!("no {rule} in {:?}", report.findings)).to_string()
}

const APP: &str = "files:\n  - source: app\n    destination: /srv/app\n";

#[test]
fn install_step_cases() {
    let cases: &[(&str, &str, &[&str])] = &[
        // ----- installs cleanly
        ("source ./ is the whole revision", "files:\n  - source: ./\n    destination: /srv/all\n", &[]),
        ("source . is the whole revision", "files:\n  - source: .\n    destination: /srv/all\n", &[]),
        ("source / is the whole revision", "files:\n  - source: /\n    destination: /srv/all\n", &[]),
        (
            "source app/.. is the whole revision",
            "files:\n  - source: app/..\n    destination: /srv/all\n",
            &[],
        ),
        ("a directory with a trailing slash", "files:\n  - source: app/\n    destination: /srv/app/\n", &[]),
        ("a file into a directory", "files:\n  - source: conf/c.conf\n    destination: /etc/app\n", &[]),
        (
            "disjoint permissions",
            "files:\n  - source: app\n    destination: /srv/app\npermissions:\n  - object: /srv/app\n    pattern: '*.txt'\n    type: [file]\n    mode: '0640'\n  - object: /srv/app/conf\n    type: [file]\n    mode: '0600'\n",
            &[],
        ),
        (
            "a default acl on directories only",
            "files:\n  - source: app\n    destination: /srv/app\npermissions:\n  - object: /srv/app\n    type: [directory]\n    acls: ['d:u:snake:rwx']\n",
            &["W:appspec.acls-local"],
        ),
        (
            "permissions on a path nothing installs",
            "permissions:\n  - object: /srv/other\n    pattern: '*.txt'\n  - object: /srv/other\n",
            &[],
        ),
        (
            "a file into /var/www/html with OVERWRITE",
            "file_exists_behavior: OVERWRITE\nfiles:\n  - source: index.html\n    destination: /var/www/html\n",
            &[],
        ),
        // ----- the agent raises at Install
        (
            "two sources for one destination",
            "files:\n  - source: conf/c.conf\n    destination: /etc/x\n  - source: /conf/c.conf\n    destination: /etc/x/\n",
            &["E:install.duplicate-destination"],
        ),
        (
            "a symlinked directory is followed and collides with its target",
            "files:\n  - source: link\n    destination: /srv/app\n  - source: app\n    destination: /srv/app\n",
            &["E:install.duplicate-destination"],
        ),
        (
            "a file where a directory is created",
            "files:\n  - source: app\n    destination: /srv/app\n  - source: extra/conf\n    destination: /srv/app\n",
            &["E:install.file-over-directory"],
        ),
        (
            "a directory where a file is installed",
            "files:\n  - source: extra/conf\n    destination: /srv/app\n  - source: app\n    destination: /srv/app\n",
            &["E:install.directory-over-file"],
        ),
        (
            "permissions twice for one file",
            "files:\n  - source: app\n    destination: /srv/app\npermissions:\n  - object: /srv/app\n    type: [file]\n    mode: '0640'\n  - object: /srv/app/a.txt\n    mode: '0600'\n",
            &["E:install.permission-twice"],
        ),
        (
            "permissions twice for one directory",
            "files:\n  - source: app\n    destination: /srv/app\npermissions:\n  - object: /srv/app\n    type: [directory]\n  - object: /srv/app/\n    type: [directory]\n    pattern: 'c*'\n",
            &["E:install.permission-twice"],
        ),
        (
            "a pattern on a file object",
            "files:\n  - source: conf/c.conf\n    destination: /etc/app\npermissions:\n  - object: /etc/app/c.conf\n    pattern: '*.conf'\n",
            &["E:install.permission-pattern"],
        ),
        (
            "except on a file object",
            "files:\n  - source: conf/c.conf\n    destination: /etc/app\npermissions:\n  - object: /etc/app/c.conf\n    except: ['*.bak']\n",
            &["E:install.permission-except"],
        ),
        (
            "a default acl on a file object",
            "files:\n  - source: conf/c.conf\n    destination: /etc/app\npermissions:\n  - object: /etc/app/c.conf\n    acls: ['d:u:snake:rwx']\n",
            &["E:install.default-acl-on-file", "W:appspec.acls-local"],
        ),
        (
            "a default acl reaching files under a directory object",
            "files:\n  - source: app\n    destination: /srv/app\npermissions:\n  - object: /srv/app\n    acls: ['default:group:staff:r-x']\n",
            &["E:install.default-acl-on-file", "W:appspec.acls-local"],
        ),
        (
            "a file's destination named after the file",
            "files:\n  - source: index.html\n    destination: /var/www/site/index.html\n",
            &["T:install.destination-is-directory"],
        ),
        // ----- depends on the instance
        (
            "DISALLOW into a directory stock images fill",
            "files:\n  - source: index.html\n    destination: /var/www/html\n",
            &["F:install.file-exists"],
        ),
        (
            "DISALLOW written out",
            "file_exists_behavior: DISALLOW\nfiles:\n  - source: /\n    destination: /usr/local/bin\n",
            &["F:install.file-exists"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, extra, want) in cases {
        let got = install_rules(extra);
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn install_messages_are_the_agents() {
    let dup = "files:\n  - source: conf/c.conf\n    destination: /etc/x\n  - source: conf/c.conf\n    destination: /etc/x/\n";
    expect_test::expect!["appspec.yml:10:13: error[install.duplicate-destination]: The deployment failed because the application specification file specifies two source files named <deployment-archive>/conf/c.conf and <deployment-archive>/conf/c.conf for the same destination (/etc/x/c.conf). Remove one of the source file paths from the AppSpec file, and then try again. (fails at Install) (fix: map each destination file from one source only)"]
    .assert_eq(&message(dup, "install.duplicate-destination"));
    let twice =
        format!("{APP}permissions:\n  - object: /srv/app\n    type: [file]\n  - object: /srv/app/a.txt\n");
    expect_test::expect![[r#"appspec.yml:13:5: error[install.permission-twice]: The deployment failed because the permissions setting for (/srv/app/a.txt) is specified more than once in the application specification file. Update the files section of the AppSpec file, and then try again. (fails at Install) (fix: give each installed path permissions from one entry only (narrow `pattern`, add `except`, or split by `type`))"#]]
    .assert_eq(&message(&twice, "install.permission-twice"));
}

#[test]
fn symlinks_to_directories_above_them() {
    let run = |links: &[(&str, &str)]| {
        let mut members = revision("files:\n  - source: app\n    destination: /srv/app\n");
        for (path, target) in links {
            members.push(Member::link(path, tar::EntryType::Symlink, target));
        }
        let report = verify_bytes("bundle.tgz", &gzip(&tar_bytes(&members)), &Options::default());
        let mut got: Vec<String> =
            report.findings.iter().map(code).filter(|c| c != "N:appspec.files-replaced").collect();
        got.sort();
        got
    };
    // The agent follows it: 40 nested copies (then ELOOP), a trap rather than a failure.
    assert_eq!(run(&[("app/self", ".")]), ["T:install.symlink-loop"]);
    // Two ways down at every level (the root also holds `link -> app`) double the tree each
    // time: the model stops at its budget, where the agent would not finish.
    assert_eq!(run(&[("app/up", "..")]), ["E:install.too-large", "T:install.symlink-loop"]);
}
