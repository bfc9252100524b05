//! The appspec corpus: accepted and rejected appspec.yml texts, each with the exact rules (and
//! severities) `appspec::validate` must report, written from the agent's rules in
//! docs/codedeploy-agent.md.

use appspec::{
    diag::{Agent, Finding, Severity},
    validate::validate,
};

/// `E:` an error the deployment fails on, `T:` an error the agent accepts (a trap), `W:` a
/// warning, `N:` a note.
struct Case {
    name: &'static str,
    text: &'static str,
    expect: &'static [&'static str],
}

const HEAD: &str = "version: 0.0\nos: linux\n";

macro_rules! case {
    ($name:literal, $text:expr, [$($rule:literal),* $(,)?]) => {
        Case { name: $name, text: $text, expect: &[$($rule),*] }
    };
}

fn with_head(body: &str) -> String {
    format!("{HEAD}{body}")
}

fn cases() -> Vec<(String, String, Vec<&'static str>)> {
    // Cases whose text is complete.
    let whole: Vec<Case> = vec![
        // ----- accepted
        case!("minimal", "version: 0.0\nos: linux\n", []),
        case!("json form", "{\"version\": 0.0, \"os\": \"linux\"}\n", []),
        case!("crlf line endings", "version: 0.0\r\nos: linux\r\n", []),
        case!("explicit document start", "---\nversion: 0.0\nos: linux\n", []),
        case!("version 0.00 passes with a warning", "version: 0.00\nos: linux\n", ["W:appspec.version"]),
        case!("version 0 passes with a warning", "version: 0\nos: linux\n", ["W:appspec.version"]),
        case!("version -0.0 passes with a warning", "version: -0.0\nos: linux\n", ["W:appspec.version"]),
        case!(
            "duplicate version keeps the last",
            "version: 1.0\nversion: 0.0\nos: linux\n",
            ["W:yaml.duplicate-key"]
        ),
        case!("tagged float", "version: !!float 0.0\nos: linux\n", ["W:yaml.tag"]),
        case!(
            "second document ignored",
            "version: 0.0\nos: linux\n---\nversion: 9\n",
            ["W:yaml.multiple-documents"]
        ),
        // ----- rejected by the YAML layer
        case!("empty file", "", ["E:appspec.empty"]),
        case!("comments only", "# nothing here\n\n", ["E:appspec.empty"]),
        case!("document is false", "false\n", ["E:appspec.empty"]),
        case!("top-level list", "- version: 0.0\n", ["E:appspec.structure"]),
        case!("top-level scalar", "hello\n", ["E:appspec.version"]),
        case!(
            "tab indentation",
            "version: 0.0\nos: linux\nhooks:\n\tAfterInstall:\n\t- location: x\n",
            ["E:yaml.syntax"]
        ),
        case!("alias", "version: &v 0.0\nos: linux\nx: *v\n", ["E:yaml.alias"]),
        case!("utf-8 bom", "\u{feff}version: 0.0\nos: linux\n", ["E:yaml.bom"]),
        case!("syntax error", "version: 0.0\nos: [linux\n", ["E:yaml.syntax"]),
        case!("date value", "version: 0.0\nos: linux\nbuilt: 2024-01-31\n", ["E:yaml.disallowed-class"]),
        case!("symbol value", "version: 0.0\nos: :linux\n", ["E:appspec.os"]),
        case!("reserved indicator", "version: 0.0\nos: linux\nx: @home\n", ["E:yaml.syntax"]),
        // ----- version and os
        case!("version missing", "os: linux\n", ["E:appspec.version"]),
        case!("version quoted", "version: \"0.0\"\nos: linux\n", ["E:appspec.version"]),
        case!("version single-quoted", "version: '0.0'\nos: linux\n", ["E:appspec.version"]),
        case!("version 0.0.0", "version: 0.0.0\nos: linux\n", ["E:appspec.version"]),
        case!("version 1.0", "version: 1.0\nos: linux\n", ["E:appspec.version"]),
        case!("version null", "version:\nos: linux\n", ["E:appspec.version"]),
        case!("os missing", "version: 0.0\n", ["E:appspec.os"]),
        case!("os capitalized", "version: 0.0\nos: Linux\n", ["E:appspec.os"]),
        case!("os windows on the linux agent", "version: 0.0\nos: windows\n", ["E:appspec.os"]),
        case!("os with a trailing space", "version: 0.0\nos: 'linux '\n", ["E:appspec.os"]),
        case!("os yes is a boolean", "version: 0.0\nos: yes\n", ["E:appspec.os", "W:yaml.bool"]),
        case!(
            "ecs appspec",
            "version: 0.0\nResources:\n  - TargetService: {}\n",
            ["E:appspec.os", "W:appspec.unknown-key"]
        ),
        case!(
            "duplicate hooks: the discarded first value is not checked",
            "version: 0.0\nos: linux\nhooks:\n  AfterInstall: 5\nhooks:\n  AfterInstall:\n  - location: bin/h\n",
            ["W:yaml.duplicate-key"]
        ),
        case!(
            "duplicate hooks: the kept last value is checked",
            "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: bin/h\nhooks:\n  AfterInstall: 5\n",
            ["W:yaml.duplicate-key", "E:appspec.hook-scripts"]
        ),
        case!(
            "windows with permissions",
            "version: 0.0\nos: windows\npermissions:\n  - object: /x\n",
            ["E:appspec.os", "E:appspec.permission-windows"]
        ),
    ];
    // Cases that follow a valid `version` and `os`.
    let body: Vec<Case> = vec![
        // ----- hooks accepted
        case!(
            "five in-place hooks",
            "hooks:\n  ApplicationStop:\n  - location: bin/h\n    timeout: 60\n  BeforeInstall:\n  - location: bin/h\n  AfterInstall:\n  - location: bin/h\n    timeout: 900\n  ApplicationStart:\n  - location: bin/h\n  ValidateService:\n  - location: bin/h\n    timeout: 300\n",
            []
        ),
        case!(
            "traffic hooks",
            "hooks:\n  BeforeAllowTraffic:\n  - location: bin/h\n  AfterBlockTraffic:\n  - location: bin/h\n",
            []
        ),
        case!("hooks null", "hooks:\n", []),
        case!("event with no scripts", "hooks:\n  AfterInstall:\n", ["W:appspec.hook-empty"]),
        case!(
            "timeout quoted digits",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: \"900\"\n",
            []
        ),
        case!("runas quoted", "hooks:\n  AfterInstall:\n  - location: bin/h\n    runas: 'snake'\n", []),
        case!("runas plain", "hooks:\n  AfterInstall:\n  - location: bin/h\n    runas: snake\n", []),
        case!("leading slash location", "hooks:\n  AfterInstall:\n  - location: /bin/h\n", []),
        case!(
            "timeout exactly 3600",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 3600\n",
            []
        ),
        case!(
            "two scripts in one event",
            "hooks:\n  AfterInstall:\n  - location: a.sh\n  - location: b.sh\n",
            []
        ),
        // ----- hooks rejected
        case!(
            "Hooks capitalized",
            "Hooks:\n  AfterInstall:\n  - location: bin/h\n",
            ["T:appspec.unknown-key"]
        ),
        case!("hook name typo", "hooks:\n  AfterInstal:\n  - location: bin/h\n", ["T:appspec.hook-name"]),
        case!(
            "hook name two letters off",
            "hooks:\n  BeforInstal:\n  - location: bin/h\n",
            ["T:appspec.hook-name"]
        ),
        case!(
            "hook name lower case",
            "hooks:\n  afterinstall:\n  - location: bin/h\n",
            ["T:appspec.hook-name"]
        ),
        case!("Install is never run", "hooks:\n  Install:\n  - location: bin/h\n", ["T:appspec.hook-name"]),
        case!(
            "DownloadBundle is never run",
            "hooks:\n  DownloadBundle:\n  - location: bin/h\n",
            ["T:appspec.hook-name"]
        ),
        case!(
            "hook name on is a boolean: one finding",
            "hooks:\n  on:\n  - location: bin/h\n",
            ["T:appspec.hook-name"]
        ),
        case!(
            "permission singular",
            "permission:\n  - object: /opt/app\n    mode: '0644'\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "file singular",
            "file:\n  - source: /\n    destination: /opt/app\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "hook key two letters off",
            "hoks:\n  AfterInstall:\n  - location: bin/h\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "timeout dedented to the top level",
            "hooks:\n  AfterInstall:\n  - location: bin/h\ntimeout: 300\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "event dedented to the top level",
            "hooks:\n  AfterInstall:\n  - location: bin/h\nApplicationStart:\n  - location: bin/h\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "destination dedented to the top level",
            "files:\n  - source: /\ndestination: /opt/app\n",
            ["E:appspec.files-destination", "T:appspec.unknown-key"]
        ),
        case!("an ignored key with a yes value: one finding", "run_tests: yes\n", ["W:appspec.unknown-key"]),
        case!(
            "a miscased key with yes inside: one finding",
            "Hooks:\n  AfterInstall:\n  - location: bin/h\n    sudo: yes\n",
            ["T:appspec.unknown-key"]
        ),
        case!("hooks as a list", "hooks:\n  - AfterInstall\n", ["E:appspec.hooks"]),
        case!("scripts as a string", "hooks:\n  AfterInstall: bin/h\n", ["E:appspec.hook-scripts"]),
        case!(
            "scripts as a mapping",
            "hooks:\n  AfterInstall:\n    location: bin/h\n",
            ["E:appspec.hook-scripts"]
        ),
        case!("script as a string", "hooks:\n  AfterInstall:\n  - bin/h\n", ["E:appspec.hook-scripts"]),
        case!("location missing", "hooks:\n  AfterInstall:\n  - timeout: 60\n", ["E:appspec.location"]),
        case!("location null", "hooks:\n  AfterInstall:\n  - location:\n", ["E:appspec.location"]),
        case!("location blank", "hooks:\n  AfterInstall:\n  - location: '  '\n", ["E:appspec.location"]),
        case!(
            "location with arguments",
            "hooks:\n  AfterInstall:\n  - location: bin/h --flag\n",
            ["E:appspec.location"]
        ),
        case!(
            "location escaping",
            "hooks:\n  AfterInstall:\n  - location: ../../bin/sh\n",
            ["E:appspec.location"]
        ),
        case!(
            "timeout zero",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 0\n",
            ["E:appspec.timeout"]
        ),
        case!(
            "timeout negative",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: -5\n",
            ["E:appspec.timeout"]
        ),
        case!(
            "timeout word",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: soon\n",
            ["E:appspec.timeout"]
        ),
        case!(
            "timeout half a second",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 0.5\n",
            ["E:appspec.timeout", "W:appspec.timeout"]
        ),
        case!(
            "timeout over 3600",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 7200\n",
            ["T:appspec.timeout"]
        ),
        case!(
            "timeout with a unit",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 300s\n",
            ["W:appspec.timeout"]
        ),
        case!(
            "timeout float",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 1.5\n",
            ["W:appspec.timeout"]
        ),
        case!(
            "timeout sexagesimal over the cap",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 12:30\n",
            ["T:appspec.timeout"]
        ),
        case!(
            "timeout sexagesimal past any integer type",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 99999999999999999999999999999999999999999:00\n",
            ["T:appspec.timeout"]
        ),
        case!(
            "timeout yes",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: yes\n",
            ["E:appspec.timeout", "W:yaml.bool"]
        ),
        case!(
            "timeout infinite",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: .inf\n",
            ["E:appspec.timeout"]
        ),
        case!(
            "runas yes",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    runas: yes\n",
            ["E:appspec.runas", "W:yaml.bool"]
        ),
        case!(
            "runas two words",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    runas: a b\n",
            ["E:appspec.runas"]
        ),
        case!(
            "sudo undocumented",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    sudo: true\n",
            ["W:appspec.sudo"]
        ),
        case!(
            "unknown script key",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeot: 60\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "unknown script key far from any",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    retries: 3\n",
            ["W:appspec.unknown-key"]
        ),
        case!(
            "duplicate timeout: the discarded 0 is not checked",
            "hooks:\n  AfterInstall:\n  - location: bin/h\n    timeout: 0\n    timeout: 60\n",
            ["W:yaml.duplicate-key"]
        ),
        case!(
            "script key case",
            "hooks:\n  AfterInstall:\n  - Location: bin/h\n",
            ["T:appspec.unknown-key", "E:appspec.location"]
        ),
        // ----- files
        case!(
            "files entry",
            "files:\n  - source: /\n    destination: /opt/app\n",
            ["N:appspec.files-replaced"]
        ),
        case!(
            "files entries: one note per appspec",
            "files:\n  - source: ./\n    destination: /opt/app\n  - source: conf\n    destination: /etc/app\n  - source: bin\n    destination: /usr/local/bin/app\n",
            ["N:appspec.files-replaced"]
        ),
        case!("files empty list", "files: []\n", []),
        case!("files as a mapping", "files:\n  source: /\n  destination: /opt\n", ["E:appspec.files"]),
        case!("files without source", "files:\n  - destination: /opt/app\n", ["E:appspec.files-source"]),
        case!("files without destination", "files:\n  - source: app\n", ["E:appspec.files-destination"]),
        case!("files as strings", "files:\n  - app\n", ["E:appspec.files-source"]),
        case!(
            "files source escaping",
            "files:\n  - source: ../secret\n    destination: /opt\n",
            ["N:appspec.files-replaced", "E:appspec.files-source"]
        ),
        case!("file_exists_behavior valid", "file_exists_behavior: RETAIN\n", []),
        case!("file_exists_behavior null", "file_exists_behavior:\n", []),
        case!(
            "file_exists_behavior lower case",
            "file_exists_behavior: overwrite\n",
            ["E:appspec.file-exists-behavior"]
        ),
        // ----- permissions
        case!(
            "permission quoted mode",
            "permissions:\n  - object: /opt/app\n    mode: \"0644\"\n    owner: snake\n    type: [file]\n",
            []
        ),
        case!("permission plain three digits", "permissions:\n  - object: /opt/app\n    mode: 644\n", []),
        case!("permission mode 7777", "permissions:\n  - object: /opt/app\n    mode: '7777'\n", []),
        case!("permission mode 0000", "permissions:\n  - object: /opt/app\n    mode: '0000'\n", []),
        case!("permissions as a mapping", "permissions:\n  object: /opt\n", ["E:appspec.permissions"]),
        case!(
            "permission without object",
            "permissions:\n  - mode: '644'\n",
            ["E:appspec.permission-object"]
        ),
        case!("permission object blank", "permissions:\n  - object: ' '\n", ["E:appspec.permission-object"]),
        case!(
            "unquoted 0644 is octal 420",
            "permissions:\n  - object: /opt/app\n    mode: 0644\n",
            ["T:appspec.mode-octal"]
        ),
        case!(
            "duplicate mode: the discarded unquoted 0644 is not checked",
            "permissions:\n  - object: /opt/app\n    mode: 0644\n    mode: '0644'\n",
            ["W:yaml.duplicate-key"]
        ),
        case!(
            "permission key misspelled",
            "permissions:\n  - object: /opt/app\n    mod: '0644'\n",
            ["T:appspec.unknown-key"]
        ),
        case!(
            "unquoted 0755 is rejected",
            "permissions:\n  - object: /opt/app\n    mode: 0755\n",
            ["E:appspec.mode"]
        ),
        case!("mode with 8", "permissions:\n  - object: /opt/app\n    mode: '0888'\n", ["E:appspec.mode"]),
        case!("symbolic mode", "permissions:\n  - object: /opt/app\n    mode: u+x\n", ["E:appspec.mode"]),
        case!("mode too long", "permissions:\n  - object: /opt/app\n    mode: 12345\n", ["E:appspec.mode"]),
        case!("mode float", "permissions:\n  - object: /opt/app\n    mode: 6.4\n", ["E:appspec.mode"]),
        case!(
            "type scalar",
            "permissions:\n  - object: /opt/app\n    type: file\n",
            ["E:appspec.permission-type"]
        ),
        case!(
            "type unknown",
            "permissions:\n  - object: /opt/app\n    type: [socket]\n",
            ["E:appspec.permission-type"]
        ),
        case!(
            "except scalar",
            "permissions:\n  - object: /opt/app\n    except: '*.log'\n",
            ["E:appspec.permission-except"]
        ),
        case!(
            "pattern with a slash",
            "permissions:\n  - object: /opt/app\n    pattern: 'bin/*'\n",
            ["W:appspec.permission-pattern"]
        ),
        case!(
            "owner numeric",
            "permissions:\n  - object: /opt/app\n    owner: 1000\n",
            ["E:appspec.permission-owner"]
        ),
        case!(
            "acls valid",
            "permissions:\n  - object: /opt/app\n    acls: ['u:snake:rwx', 'd:g:staff:r-x', 'm::rw']\n",
            ["W:appspec.acls-local"]
        ),
        case!(
            "acls base entry",
            "permissions:\n  - object: /opt/app\n    acls: ['u::rwx']\n",
            ["W:appspec.acls-local", "E:appspec.acls"]
        ),
        case!(
            "acls bad character",
            "permissions:\n  - object: /opt/app\n    acls: ['u:snake:rwz']\n",
            ["W:appspec.acls-local", "E:appspec.acls"]
        ),
        case!(
            "context valid",
            "permissions:\n  - object: /opt/app\n    context:\n      type: httpd_sys_content_t\n      range: s0-s1:c0.c3,c7\n",
            ["W:appspec.context-local"]
        ),
        case!(
            "context without type",
            "permissions:\n  - object: /opt/app\n    context:\n      name: unconfined_u\n",
            ["W:appspec.context-local", "E:appspec.context"]
        ),
        case!(
            "context range reversed",
            "permissions:\n  - object: /opt/app\n    context:\n      type: t\n      range: s2-s0\n",
            ["W:appspec.context-local", "E:appspec.context"]
        ),
        case!(
            "context as a string",
            "permissions:\n  - object: /opt/app\n    context: httpd_t\n",
            ["W:appspec.context-local", "E:appspec.context"]
        ),
        case!(
            "type as a mapping",
            "permissions:\n  - object: /opt/app\n    type: {file: 1}\n",
            ["E:appspec.permission-type"]
        ),
        case!("permissions empty mapping", "permissions: {}\n", []),
        case!("files empty mapping", "files: {}\n", []),
        case!("files entry as a symbol", "files:\n  - :app\n", ["E:appspec.files-source"]),
        case!(
            "context category over 1023",
            "permissions:\n  - object: /opt/app\n    context:\n      type: t\n      range: s0:c1024\n",
            ["W:appspec.context-local", "E:appspec.context"]
        ),
    ];
    let mut out: Vec<(String, String, Vec<&'static str>)> =
        whole.into_iter().map(|c| (c.name.to_owned(), c.text.to_owned(), c.expect.to_vec())).collect();
    out.extend(body.into_iter().map(|c| (c.name.to_owned(), with_head(c.text), c.expect.to_vec())));
    out
}

/// `E:rule`, `T:rule`, `W:rule`, `N:rule`; a warning the deployment fails on is `F:rule`.
pub fn code(f: &Finding) -> String {
    let letter = match (f.severity, f.agent) {
        (Severity::Error, Agent::Fails) => "E",
        (Severity::Error, Agent::Accepts) => "T",
        (Severity::Warning, Agent::Accepts) => "W",
        (Severity::Warning, Agent::Fails) => "F",
        (Severity::Note, _) => "N",
    };
    format!("{letter}:{}", f.rule)
}

#[test]
fn appspec_corpus() {
    let cases = cases();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    let accepted = cases
        .iter()
        .filter(|(_, _, expect)| !expect.iter().any(|r| r.starts_with("E:") || r.starts_with("T:")))
        .count();
    assert!(accepted >= 20 && cases.len() - accepted >= 40, "{accepted} accepted of {}", cases.len());
    let mut failures = Vec::new();
    for (name, text, expect) in &cases {
        let validation = validate(text);
        let mut got: Vec<String> = validation.findings.iter().map(code).collect();
        got.sort();
        let mut want: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            let shown: Vec<String> = validation.findings.iter().map(|f| f.to_string()).collect();
            failures.push(format!("{name}: want {want:?}, got {got:?}\n    {}", shown.join("\n    ")));
        }
        for f in &validation.findings {
            assert!(f.line.is_some() && f.col.is_some(), "{name}: {f} has no position");
            assert!(!f.fix.is_empty(), "{name}: {f} has no fix");
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
fn agent_messages_and_positions() {
    let v = validate("version: 0.0\nos: linux\npermissions:\n  - object: /opt/app\n    mode: 0755\n");
    let f = &v.findings[0];
    assert_eq!((f.line, f.col), (Some(5), Some(11)));
    assert_eq!(
        f.message,
        "The deployment failed because the permissions mode (493) in the application specification file contains an invalid character (9). Update the permissions section of the AppSpec file, and then try again."
    );
    let v = validate("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: x\n    timeout: 0\n");
    assert_eq!(
        v.findings[0].message,
        "The deployment failed because an invalid timeout value was provided for a script in the application specification file. Make corrections in the hooks section of the AppSpec file, and then try again."
    );
    let v = validate("version: 0.0\nos: linux\nfiles:\n  - source: app\n");
    assert_eq!(
        v.findings[0].message,
        "The deployment failed because the application specification file specifies only a source file (app). Add the name of the destination file to the files section of the AppSpec file, and then try again."
    );
}

/// Found by fuzzing (fuzz/fuzz_targets/appspec.rs, whose check counted only `\n`): a lone
/// carriage return is a YAML line break, for Psych as for our reader, so a finding's line counts
/// it and agrees with the line in Psych's own message.
#[test]
fn lone_carriage_returns_are_line_breaks_in_positions() {
    let v = validate("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - \r\r\rlocation: a: b\n");
    let f = v.findings.iter().find(|f| f.rule == "yaml.syntax").expect("a syntax error");
    assert_eq!((f.line, f.col), (Some(8), Some(12)), "{f:?}");
    assert!(f.message.contains("at line 8 column 12"), "{f:?}");
}
