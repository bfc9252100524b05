//! Snapshots of every rendered artefact, and the quoting rules they rest on.

use std::path::Path;

use expect_test::expect;

use super::*;
use crate::config::DeployConfig;

const DEPLOY_YAML: &str = r#"
app: shop
user: shop
service:
  asgi_app: shop.web:app
  environment:
    PRICE_FMT: "100% $total"
hypercorn:
  bind: ["0.0.0.0:9000", "unix:/run/shop.sock"]
  workers: 3
  keep_alive_timeout: 7.5
"#;

fn example() -> (DeployConfig, Release) {
    let config = DeployConfig::parse(Path::new("deploy.yaml"), DEPLOY_YAML).unwrap();
    let release = config.resolve(b"hypercorn==0.18.0\n", "x86_64", Some("0.13.9"));
    (config, release)
}

#[test]
fn unit_file() {
    let (config, release) = example();
    expect![[r##"
        # Rendered by `cargo xtask bundle` from deploy.yaml; installed by deploy-hook.
        [Unit]
        Description=shop (hypercorn ASGI service)
        Wants=network-online.target
        After=network-online.target

        [Service]
        Type=exec
        User=shop
        Group=shop
        # Entered once at start: the process sees the physical release path, not `current`.
        WorkingDirectory=/home/shop/app/current
        EnvironmentFile=/home/shop/app/current/.env
        Environment="PYTHONUNBUFFERED=1"
        Environment="PYTHONDONTWRITEBYTECODE=1"
        Environment="PRICE_FMT=100%% $total"
        ExecStart="/home/shop/app/venvs/v-830ab5f0e560ae6a/bin/python" "-m" "hypercorn" "--config" "configs/hypercorn.toml" "shop.web:app"
        Restart=on-failure
        RestartSec=2
        TimeoutStopSec=15
        KillMode=mixed
        UMask=0027
        NoNewPrivileges=yes
        PrivateTmp=yes
        ProtectSystem=strict
        ProtectHome=read-only
        ReadWritePaths=-/home/shop/app/shared
        ProtectKernelTunables=yes
        ProtectKernelModules=yes
        ProtectControlGroups=yes
        RestrictSUIDSGID=yes
        LockPersonality=yes

        [Install]
        WantedBy=multi-user.target
    "##]]
    .assert_eq(&unit(&config, &release));
}

#[test]
fn hypercorn_file() {
    let (config, _) = example();
    expect![[r#"
        # Rendered by `cargo xtask bundle` from deploy.yaml.
        bind = ["0.0.0.0:9000", "unix:/run/shop.sock"]
        workers = 3
        graceful_timeout = 10.0
        keep_alive_timeout = 7.5
        accesslog = "-"
        errorlog = "-"
        loglevel = "INFO"
    "#]]
    .assert_eq(&hypercorn_toml(&config.hypercorn));
}

#[test]
fn release_file_round_trips() {
    let (_, release) = example();
    let text = release.to_yaml();
    expect![[r#"
        {
          "schema": 1,
          "app": "shop",
          "user": "shop",
          "group": "shop",
          "app_root": "/home/shop/app",
          "unit": "shop.service",
          "python": "/usr/bin/python3",
          "installer": "auto",
          "arch": "x86_64",
          "venv_key": "v-830ab5f0e560ae6a",
          "dependencies": "vendored",
          "wheels": {
            "python_version": "3.11",
            "abi": "cp311",
            "platform": "manylinux_2_17_x86_64",
            "uv_version": "0.13.9"
          },
          "keep_releases": 5,
          "shared_files": [],
          "shared_dirs": [],
          "stop_on_application_stop": false,
          "health": {
            "url": "http://127.0.0.1:9000/healthz",
            "try_timeout": 2,
            "deadline": 60,
            "interval": 1
          },
          "post_install": [],
          "timeouts": {
            "application_stop": 60,
            "before_install": 300,
            "after_install": 1200,
            "application_start": 300,
            "validate_service": 300
          }
        }
    "#]]
    .assert_eq(&text);
    assert_eq!(Release::parse(Path::new("release.yaml"), &text).unwrap(), release);
}

#[test]
fn exec_words_are_quoted_for_systemd() {
    let words = [
        "plain",
        "with space",
        "50%",
        "%h",
        "$HOME",
        "${X}",
        "q\"uote",
        "back\\slash",
        ";",
        "it's",
        "tab\there",
        "",
    ];
    let line = words.map(exec_word).join(" ");
    expect![[r#""plain" "with space" "50%%" "%%h" "$$HOME" "$${X}" "q\"uote" "back\\slash" ";" "it's" "tab\there" """#]]
        .assert_eq(&line);
    assert_eq!(env_assignment("A", "x y=$z %i \"q\""), r#""A=x y=$z %%i \"q\"""#);
}

#[test]
fn hypercorn_toml_parses_back() {
    let (config, _) = example();
    let parsed: toml::Table = toml::from_str(&hypercorn_toml(&config.hypercorn)).unwrap();
    assert_eq!(parsed["workers"].as_integer(), Some(3));
}
