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
        # The socket holds the listening ports across restarts: connections wait, none is refused.
        Requires=shop.socket
        After=shop.socket

        [Service]
        Type=exec
        User=shop
        Group=shop
        # Entered once at start: the process sees the physical release path, not `current`.
        WorkingDirectory=/home/shop/app/current
        EnvironmentFile=/var/lib/deploy-hook/shop/service.env
        Environment="PYTHONUNBUFFERED=1"
        Environment="PYTHONDONTWRITEBYTECODE=1"
        Environment="PRICE_FMT=100%% $total"
        ExecStart="/home/shop/app/venvs/v-830ab5f0e560ae6a/bin/python" "configs/serve.py" "--config" "configs/hypercorn.toml" "shop.web:app"
        Restart=on-failure
        RestartSec=2
        TimeoutStopSec=15
        # SIGTERM to hypercorn's main process only: it tells its workers to finish in-flight requests
        # within graceful_timeout; whatever is left gets SIGKILL after TimeoutStopSec.
        KillMode=mixed
        UMask=0027
        ProtectSystem=strict
        ProtectHome=read-only
        ReadWritePaths=-/home/shop/app/shared
        # Sandboxing: defaults for a Python ASGI service, then deploy.yaml's service.hardening.
        NoNewPrivileges=yes
        CapabilityBoundingSet=
        AmbientCapabilities=
        PrivateTmp=yes
        PrivateDevices=yes
        DevicePolicy=closed
        PrivateMounts=yes
        ProtectKernelTunables=yes
        ProtectKernelModules=yes
        ProtectKernelLogs=yes
        ProtectControlGroups=yes
        ProtectClock=yes
        ProtectHostname=yes
        ProtectProc=invisible
        ProcSubset=pid
        RestrictNamespaces=yes
        RestrictRealtime=yes
        RestrictSUIDSGID=yes
        RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
        LockPersonality=yes
        RemoveIPC=yes
        SystemCallArchitectures=native
        SystemCallFilter=@system-service
        SystemCallFilter=~@privileged @resources
        SystemCallErrorNumber=EPERM

        [Install]
        WantedBy=multi-user.target
    "##]]
    .assert_eq(&unit(&config, &release));
}

#[test]
fn the_unit_reader_reads_back_what_is_rendered() {
    let (config, release) = example();
    let text = unit(&config, &release);
    let exec = crate::unit_file::exec_start(&text).unwrap();
    assert_eq!(exec[0], format!("{}/bin/python", release.venv_dir()));
    assert_eq!(exec[1..], ["configs/serve.py", "--config", "configs/hypercorn.toml", "shop.web:app"]);
    let env: Vec<String> = crate::unit_file::section(&text, "Service")
        .filter(|e| e.key == "Environment")
        .flat_map(|e| crate::unit_file::words(&e.value, false))
        .collect();
    assert!(env.contains(&"PRICE_FMT=100% $total".to_owned()), "{env:?}");
}

#[test]
fn socket_file() {
    let (config, release) = example();
    expect![[r#"
        # Rendered by `cargo xtask bundle` from deploy.yaml; installed by deploy-hook.
        [Unit]
        Description=shop (hypercorn ASGI service) (listening sockets)

        [Socket]
        ListenStream=0.0.0.0:9000
        ListenStream=/run/shop.sock
        Accept=no
        Service=shop.service
        # hypercorn sets TCP_NODELAY only on sockets it creates itself.
        NoDelay=yes
        SocketUser=shop
        SocketGroup=shop
        SocketMode=0660
        DirectoryMode=0755
        RemoveOnStop=yes

        [Install]
        WantedBy=sockets.target
    "#]]
    .assert_eq(&socket_unit(&config, &release).unwrap());
    expect![[r#"
        # Rendered by `cargo xtask bundle` from deploy.yaml.
        bind = ["fd://3", "fd://4"]
        workers = 3
        graceful_timeout = 10.0
        keep_alive_timeout = 7.5
        accesslog = "-"
        errorlog = "-"
        loglevel = "INFO"
    "#]]
    .assert_eq(&hypercorn_toml(&served_hypercorn(&config)));
}

#[test]
fn hardening_overrides_replace_add_and_reach_the_socket() {
    let text = "app: api\nservice:\n  hardening:\n    MemoryDenyWriteExecute: true\n    SystemCallFilter: [\"@system-service\", \"@resources\"]\n    ReadWritePaths: /var/lib/api\n    PrivateDevices: no\n    IPAddressDeny: any\n    IPAddressAllow: localhost\nhypercorn:\n  bind: [\"[::1]:8080\"]\n";
    let config = DeployConfig::parse(Path::new("deploy.yaml"), text).unwrap();
    let release = config.resolve(b"", "x86_64", None);
    let lines: Vec<String> =
        sandbox(&config, &release).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    expect![[r#"
        NoNewPrivileges=yes
        CapabilityBoundingSet=
        AmbientCapabilities=
        PrivateTmp=yes
        PrivateDevices=no
        DevicePolicy=closed
        PrivateMounts=yes
        ProtectKernelTunables=yes
        ProtectKernelModules=yes
        ProtectKernelLogs=yes
        ProtectControlGroups=yes
        ProtectClock=yes
        ProtectHostname=yes
        ProtectProc=invisible
        ProcSubset=pid
        RestrictNamespaces=yes
        RestrictRealtime=yes
        RestrictSUIDSGID=yes
        RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
        LockPersonality=yes
        RemoveIPC=yes
        SystemCallArchitectures=native
        SystemCallFilter=@system-service @resources
        SystemCallErrorNumber=EPERM
        MemoryDenyWriteExecute=yes
        ReadWritePaths=/var/lib/api
        IPAddressDeny=any
        IPAddressAllow=localhost"#]]
    .assert_eq(&lines.join("\n"));
    let socket = socket_unit(&config, &release).unwrap();
    assert!(socket.contains("ListenStream=[::1]:8080\n"), "{socket}");
    assert!(socket.contains("IPAddressAllow=localhost\nIPAddressDeny=any\n"), "{socket}");
}

#[test]
fn without_socket_activation_hypercorn_binds_itself() {
    let text = "app: api\nservice:\n  socket_activation: false\nhypercorn:\n  bind: [\"0.0.0.0:80\", \"unix:/run/api/api.sock\"]\n";
    let config = DeployConfig::parse(Path::new("deploy.yaml"), text).unwrap();
    let release = config.resolve(b"", "x86_64", None);
    assert_eq!(socket_unit(&config, &release), None);
    let unit = unit(&config, &release);
    assert!(!unit.contains(".socket"), "{unit}");
    assert!(unit.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"), "{unit}");
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE\n"), "{unit}");
    assert!(unit.contains("ReadWritePaths=-/run/api\n"), "{unit}");
    let toml = hypercorn_toml(&served_hypercorn(&config));
    assert!(toml.contains(r#"bind = ["0.0.0.0:80", "unix:/run/api/api.sock"]"#), "{toml}");
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
          "socket_activation": true,
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
