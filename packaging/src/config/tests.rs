//! deploy.yaml errors: each names the file, the key, the line and the column.

use std::path::Path;

use expect_test::{Expect, expect};

use super::DeployConfig;

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
