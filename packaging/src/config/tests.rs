//! deploy.yaml errors: each names the file, the key, the line and the column.

use std::path::Path;

use expect_test::{Expect, expect};

use super::{DeployConfig, Release};

fn check_err(text: &str, want: Expect) {
    let err = DeployConfig::parse(Path::new("app/deploy.yaml"), text).unwrap_err();
    want.assert_eq(&err.to_string());
}

#[test]
fn minimal_config_gets_defaults() {
    let config = DeployConfig::parse(Path::new("deploy.yaml"), "app: api\n").unwrap();
    let release = config.resolve(b"", "aarch64", None);
    assert_eq!(release.user.as_str(), "snake");
    assert_eq!(release.app_root.as_str(), "/home/snake/app");
    assert_eq!(release.unit.as_str(), "api.service");
    assert_eq!(release.health.url.as_str(), "http://127.0.0.1:8000/healthz");
    assert_eq!(release.timeouts.after_install.secs(), 1200);
}

#[test]
fn errors_name_file_key_line_and_column() {
    check_err(
        "app: api\nhypercorn:\n  wrkers: 2\n",
        expect![
            "app/deploy.yaml: hypercorn: unknown field `wrkers`, expected one of `bind`, `workers`, `worker_class`, `graceful_timeout`, `keep_alive_timeout`, `read_timeout`, `startup_timeout`, `shutdown_timeout`, `backlog`, `max_requests`, `root_path`, `accesslog`, `access_log_format`, `errorlog`, `loglevel`, `include_server_header` at line 3 column 3"
        ],
    );
    check_err(
        "app: api\ntimeouts:\n  after_install: 7200\n",
        expect![
            "app/deploy.yaml: timeouts.after_install: timeout 7200 is outside 1..=3600 seconds (CodeDeploy's limit for a hook) at line 3 column 18"
        ],
    );
    check_err(
        "app: api\nservice:\n  description: \"two\\nlines\"\n",
        expect![[
            r#"app/deploy.yaml: service.description: "two\nlines" contains the control character '\n', which a unit file or TOML value cannot hold at line 3 column 16"#
        ]],
    );
    check_err(
        "app: api\nuser: Root!\n",
        expect![[
            r#"app/deploy.yaml: user: "Root!" is not a portable user or group name ([a-z_][a-z0-9_-]*, at most 32) at line 2 column 7"#
        ]],
    );
    check_err(
        "app: api\napp_root: /srv/../etc\n",
        expect![[
            r#"app/deploy.yaml: app_root: "/srv/../etc" must be an absolute path without '.', '..', empty parts or a trailing '/' at line 2 column 11"#
        ]],
    );
    check_err(
        "app: api\nextra: 1\n",
        expect![
            "app/deploy.yaml: unknown field `extra`, expected one of `app`, `user`, `group`, `app_root`, `source_dir`, `requirements`, `env_sample`, `shared_files`, `shared_dirs`, `keep_releases`, `python`, `installer`, `dependencies`, `python_version`, `platform`, `build_sdists`, `service`, `hypercorn`, `health`, `post_install`, `timeouts` at line 2 column 1"
        ],
    );
    check_err(
        "app: api\nshared_files: [.env]\n",
        expect![
            "app/deploy.yaml: shared_files: .env is where the release puts its own .env; the service's environment file is /var/lib/deploy-hook/<app>/service.env on the instance, root's, seeded from env_sample"
        ],
    );
    check_err(
        "app: api\nshared_dirs: [configs/extra]\n",
        expect![
            "app/deploy.yaml: shared_dirs: configs/extra is where the release puts its own configs; choose another path"
        ],
    );
    check_err(
        "app: api\nshared_files: [data/a]\nshared_dirs: [data/a]\n",
        expect!["app/deploy.yaml: shared_dirs: data/a is listed twice in shared_files and shared_dirs"],
    );
    check_err("user: snake\n", expect!["app/deploy.yaml: missing field `app`"]);
    check_err(
        "app: api\nhypercorn:\n  workers: 0\n",
        expect!["app/deploy.yaml: hypercorn.workers: 0 is below 1 at line 3 column 12"],
    );
    check_err(
        "app: api\nkeep_releases: 1\n",
        expect!["app/deploy.yaml: keep_releases: 1 is below 2 at line 2 column 16"],
    );
    check_err(
        "app: api\nservice:\n  asgi_app: app\n",
        expect![[
            r#"app/deploy.yaml: service.asgi_app: "app" must be MODULE:ATTRIBUTE, like app:app at line 3 column 13"#
        ]],
    );
    check_err(
        "app: api\nservice:\n  environment:\n    BAD-NAME: x\n",
        expect![[
            r#"app/deploy.yaml: service.environment: "BAD-NAME" is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*) at line 4 column 5"#
        ]],
    );
    check_err(
        "app: api\ninstaller: conda\n",
        expect![
            "app/deploy.yaml: installer: unknown variant `conda`, expected one of `auto`, `uv`, `pip` at line 2 column 12"
        ],
    );
    check_err(
        "app: [\n",
        expect!["app/deploy.yaml: app: invalid type: sequence, expected a string at line 1 column 6"],
    );
    check_err(
        "app: api\nhypercorn:\n  bind: [\"unix:/run/a.sock\"]\n",
        expect![
            "app/deploy.yaml: health.url: no TCP address in hypercorn.bind to derive it from; set health.url"
        ],
    );
    check_err(
        "app: api\nhypercorn:\n  bind: [\"localhost:8000\"]\n",
        expect![
            "app/deploy.yaml: hypercorn.bind[0]: localhost:8000: socket activation needs an IP address, not a host name (systemd's ListenStream= does not resolve names); write 127.0.0.1:8000, or set service.socket_activation: false at line 3 column 11"
        ],
    );
    check_err(
        "app: api\nhypercorn:\n  bind: [\"fd://3\"]\n",
        expect![
            "app/deploy.yaml: hypercorn.bind[0]: fd://3: with service.socket_activation the binds are handed over as fd://; list addresses instead at line 3 column 11"
        ],
    );
    check_err(
        "app: api\nservice:\n  hardening:\n    ExecStartPre: /bin/sh\n",
        expect![[
            r#"app/deploy.yaml: service.hardening: "ExecStartPre" is not a sandboxing directive deploy.yaml can set; known: AmbientCapabilities, CapabilityBoundingSet, DevicePolicy, InaccessiblePaths, IPAddressAllow, IPAddressDeny, LockPersonality, MemoryDenyWriteExecute, NoNewPrivileges, PrivateDevices, PrivateIPC, PrivateMounts, PrivateNetwork, PrivateTmp, PrivateUsers, ProcSubset, ProtectClock, ProtectControlGroups, ProtectHome, ProtectHostname, ProtectKernelLogs, ProtectKernelModules, ProtectKernelTunables, ProtectProc, ProtectSystem, ReadOnlyPaths, ReadWritePaths, RemoveIPC, RestrictAddressFamilies, RestrictNamespaces, RestrictRealtime, RestrictSUIDSGID, SystemCallArchitectures, SystemCallErrorNumber, SystemCallFilter, UMask at line 4 column 5"#
        ]],
    );
    check_err(
        "app: api\nservice:\n  hardening:\n    ReadWritePaths: \"/srv/%n\"\n",
        expect![[
            r#"app/deploy.yaml: service.hardening: ReadWritePaths: "/srv/%n" is not a valid value: expected absolute paths separated by spaces, each optionally prefixed with - or + at line 4 column 5"#
        ]],
    );
    check_err(
        "app: api\nservice:\n  hardening:\n    MemoryDenyWriteExecute: perhaps\n",
        expect![[
            r#"app/deploy.yaml: service.hardening: MemoryDenyWriteExecute: "perhaps" is not a valid value: expected yes or no at line 4 column 5"#
        ]],
    );
}

#[test]
fn python_version_and_platform_are_checked_while_parsing() {
    // Unquoted, 3.10 stays "3.10" (the scalar's text), never the float 3.1.
    let config = DeployConfig::parse(Path::new("deploy.yaml"), "app: api\npython_version: 3.10\n").unwrap();
    assert_eq!(config.python_version.abi(), "cp310");
    check_err(
        "app: api\npython_version: \"2.7\"\n",
        expect![[
            r#"app/deploy.yaml: python_version: "2.7" is not a CPython version like "3.11" at line 2 column 17"#
        ]],
    );
    check_err(
        "app: api\nplatform: manylinux_2_17_x86_64\n",
        expect![[
            r#"app/deploy.yaml: platform: "manylinux_2_17_x86_64" is not a platform tag family like manylinux_2_17 or musllinux_1_2 (the arch comes from --target) at line 2 column 11"#
        ]],
    );
    check_err(
        "app: api\ndependencies: wheels\n",
        expect![[
            r#"app/deploy.yaml: dependencies: unknown variant `wheels`, expected `vendored` or `index` at line 2 column 15"#
        ]],
    );
}

#[test]
fn bad_values_fail_at_parse_time_with_line_and_column() {
    for (value, want) in [
        (
            ".inf",
            expect![
                "app/deploy.yaml: hypercorn.graceful_timeout: inf is not a finite number of seconds in 0..=3600 at line 3 column 21"
            ],
        ),
        (
            ".nan",
            expect![
                "app/deploy.yaml: hypercorn.graceful_timeout: NaN is not a finite number of seconds in 0..=3600 at line 3 column 21"
            ],
        ),
        (
            "-1",
            expect![
                "app/deploy.yaml: hypercorn.graceful_timeout: -1 is not a finite number of seconds in 0..=3600 at line 3 column 21"
            ],
        ),
        (
            "-0.5",
            expect![
                "app/deploy.yaml: hypercorn.graceful_timeout: -0.5 is not a finite number of seconds in 0..=3600 at line 3 column 21"
            ],
        ),
        (
            "1e400",
            expect![[
                r#"app/deploy.yaml: hypercorn.graceful_timeout: invalid type: string "1e400", expected a number of seconds at line 3 column 21"#
            ]],
        ),
    ] {
        check_err(&format!("app: api\nhypercorn:\n  graceful_timeout: {value}\n"), want);
    }
    check_err(
        "app: api\nhypercorn:\n  keep_alive_timeout: .nan\n",
        expect![
            "app/deploy.yaml: hypercorn.keep_alive_timeout: NaN is not a finite number of seconds in 0..=3600 at line 3 column 23"
        ],
    );
    check_err(
        "app: api\nhealth:\n  deadline: 0\n",
        expect!["app/deploy.yaml: health.deadline: 0 is below 1 at line 3 column 13"],
    );
    check_err(
        "app: api\nhealth:\n  url: http://[::1]x/healthz\n",
        expect![[
            r#"app/deploy.yaml: health.url: "http://[::1]x/healthz" is not an http://HOST[:PORT]/PATH URL: [IPV6] may be followed only by :PORT at line 3 column 8"#
        ]],
    );
    check_err(
        "app: api\nhealth:\n  try_timeout: 0\n",
        expect!["app/deploy.yaml: health.try_timeout: 0 is below 1 at line 3 column 16"],
    );
    check_err(
        "app: api\npost_install:\n  - name: migrate\n    run: []\n",
        expect![
            "app/deploy.yaml: post_install[0].run: the command is empty: give the program and its arguments, like [python, manage.py, migrate] at line 4 column 10"
        ],
    );
    check_err(
        "app: api\npost_install:\n  - name: migrate\n    run: [true]\n    timeout: 0\n",
        expect![
            "app/deploy.yaml: post_install[0].timeout: timeout 0 is outside 1..=3600 seconds (CodeDeploy's limit for a hook) at line 5 column 14"
        ],
    );
    check_err(
        "app: api\npost_install:\n  - name: migrate\n    run: [true]\n    timeout: 86400\n",
        expect![
            "app/deploy.yaml: post_install[0].timeout: timeout 86400 is outside 1..=3600 seconds (CodeDeploy's limit for a hook) at line 5 column 14"
        ],
    );
}

#[test]
fn fractional_and_whole_seconds_still_parse() {
    let text =
        "app: api\nhypercorn:\n  graceful_timeout: 3600\n  keep_alive_timeout: 0.5\n  shutdown_timeout: 0\n";
    let config = DeployConfig::parse(Path::new("deploy.yaml"), text).unwrap();
    assert_eq!(config.hypercorn.graceful_timeout.get(), 3600.0);
    assert_eq!(config.hypercorn.keep_alive_timeout.map(|s| s.get()), Some(0.5));
}

/// release.yaml is held to deploy.yaml's rules: an edit after bundling gets the same errors.
#[test]
fn release_yaml_gets_the_same_validation() {
    let config = DeployConfig::parse(
        Path::new("deploy.yaml"),
        "app: api\npost_install:\n  - name: migrate\n    run: [python, manage.py, migrate]\n",
    )
    .unwrap();
    let good = config.resolve(b"flask==3.0.0\n", "x86_64", None).to_yaml();
    let parse = |text: &str| Release::parse(Path::new("deploy/release.yaml"), text).map(|_| ());
    parse(&good).unwrap();
    let tampered = |from: &str, to: &str| {
        assert!(good.contains(from), "{from} not in {good}");
        parse(&good.replacen(from, to, 1)).unwrap_err().to_string()
    };
    expect!["deploy/release.yaml: post_install[0].run: the command is empty: give the program and its arguments, like [python, manage.py, migrate] at line 27 column 15"].assert_eq(&tampered(r#""run": ["#, r#""run": [], "was": ["#));
    expect!["deploy/release.yaml: health.deadline: 0 is below 1 at line 21 column 17"]
        .assert_eq(&tampered(r#""deadline": 60"#, r#""deadline": 0"#));
    expect!["deploy/release.yaml: keep_releases: 0 is below 2 at line 13 column 20"]
        .assert_eq(&tampered(r#""keep_releases": 5"#, r#""keep_releases": 0"#));
    expect!["deploy/release.yaml: post_install[0].timeout: timeout 0 is outside 1..=3600 seconds (CodeDeploy's limit for a hook) at line 32 column 18"].assert_eq(&tampered(r#""timeout": 300"#, r#""timeout": 0"#));
    expect![[r#"deploy/release.yaml: venv_key: "../../etc/v-304cc45b4b18f52a" is not a venv key (v- and 16 lowercase hex digits) at line 11 column 44"#]].assert_eq(&tampered(r#""venv_key": "v-"#, r#""venv_key": "../../etc/v-"#));
    expect!["deploy/release.yaml: shared_files: .env is where the release puts its own .env; the service's environment file is /var/lib/deploy-hook/<app>/service.env on the instance, root's, seeded from env_sample"].assert_eq(&tampered(r#""shared_files": []"#, r#""shared_files": [".env"]"#));
}

#[test]
fn release_yaml_errors_name_the_key() {
    let config = DeployConfig::parse(Path::new("deploy.yaml"), "app: api\n").unwrap();
    let good = config.resolve(b"", "x86_64", None).to_yaml();
    let err = |from: &str, to: &str| {
        assert!(good.contains(from), "{from} not in {good}");
        Release::parse(Path::new("deploy/release.yaml"), &good.replacen(from, to, 1)).unwrap_err().to_string()
    };
    expect![[r#"deploy/release.yaml: health.url: "ftp://x": only http:// health URLs are supported at line 19 column 20"#]]
        .assert_eq(&err(r#""url": "http://127.0.0.1:8000/healthz""#, r#""url": "ftp://x""#));
    expect!["deploy/release.yaml: surprise: unknown field `surprise`, expected one of `schema`, `app`, `user`, `group`, `app_root`, `unit`, `python`, `installer`, `arch`, `venv_key`, `dependencies`, `wheels`, `keep_releases`, `shared_files`, `shared_dirs`, `stop_on_application_stop`, `socket_activation`, `health`, `post_install`, `timeouts` at line 2 column 12"]
        .assert_eq(&err(r#""schema": 1,"#, r#""surprise": 1, "schema": 1,"#));
    expect![[r#"deploy/release.yaml: shared_dirs[1]: "a/../b" must be a relative path without '.', '..' or empty parts at line 15 column 32"#]].assert_eq(&err(r#""shared_dirs": []"#, r#""shared_dirs": ["ok", "a/../b"]"#));
    expect![[r#"deploy/release.yaml: timeouts.after_install: invalid type: string "soon", expected a whole number of seconds at line 28 column 27"#]].assert_eq(&err(r#""after_install": 1200"#, r#""after_install": "soon""#));
    expect![[r#"deploy/release.yaml: [0]: invalid type: string "schema", expected u32 at line 2 column 10"#]]
        .assert_eq(&err("{", "["));
    expect![[r#"deploy/release.yaml: app: "a\"pi" is not an app name (letters, digits, '-', '_', '.'; at most 64) at line 3 column 16"#]].assert_eq(&err(r#""app": "api""#, r#""app": "a\"pi""#));
}
