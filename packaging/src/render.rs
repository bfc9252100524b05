//! Rendering the systemd unit and hypercorn.toml from a resolved configuration.
//!
//! The unit names no path that the running service would resolve lazily through `current`:
//! ExecStart runs the content-addressed venv's interpreter by its real path, and the working
//! directory is entered through `current` once, at start, where `getcwd()` becomes the physical
//! release path, so a running service never sees a half-switched release.

use std::fmt::Write;

use crate::config::{DeployConfig, HypercornConfig, Release};

/// Quotes one word of `ExecStart=` by systemd.syntax and systemd.service rules: always quoted,
/// `\` `"` doubled or escaped, `%` and `$` doubled so neither specifiers nor variables expand.
pub fn exec_word(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => write!(out, "\\x{:02x}", c as u32).expect("String write"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Quotes one `Environment=` assignment: the whole `NAME=value` in quotes, `%` doubled, `$` kept
/// (systemd.exec does not expand it there). Control characters were refused by the config.
pub fn env_assignment(name: &str, value: &str) -> String {
    let mut out = String::from("\"");
    for c in name.chars().chain(std::iter::once('=')).chain(value.chars()) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Escapes a plain value (Description=, paths): `%` doubled, a trailing `\` refused earlier.
fn plain(value: &str) -> String {
    value.replace('%', "%%")
}

/// The launcher the unit's ExecStart runs (`configs/serve.py`): hypercorn, made to stop
/// accepting before it closes idle connections, so a restart on a held socket drops none.
pub const SERVE_PY: &str = include_str!("render/serve.py");

/// The systemd unit for the service.
pub fn unit(config: &DeployConfig, release: &Release) -> String {
    let root = release.app_root.as_str();
    let python = format!("{}/bin/python", release.venv_dir());
    let exec = [
        python.as_str(),
        crate::layout::SERVE_PY,
        "--config",
        "configs/hypercorn.toml",
        config.service.asgi_app.as_str(),
    ]
    .map(exec_word)
    .join(" ");
    // Give hypercorn its graceful timeout plus a margin before systemd sends SIGKILL.
    let stop_timeout = config.hypercorn.graceful_timeout.get().ceil() as u64 + 5;
    let mut env =
        vec![env_assignment("PYTHONUNBUFFERED", "1"), env_assignment("PYTHONDONTWRITEBYTECODE", "1")];
    env.extend(config.service.environment.iter().map(|(k, v)| env_assignment(k.as_str(), v.as_str())));

    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("# Rendered by `cargo xtask bundle` from deploy.yaml; installed by deploy-hook.");
    line("[Unit]");
    line(&format!("Description={}", plain(&config.description())));
    line("Wants=network-online.target");
    line("After=network-online.target");
    if let Some(socket) = release.socket_unit() {
        line("# The socket holds the listening ports across restarts: connections wait, none is refused.");
        line(&format!("Requires={socket}"));
        line(&format!("After={socket}"));
    }
    line("");
    line("[Service]");
    line("Type=exec");
    line(&format!("User={}", release.user));
    line(&format!("Group={}", release.group));
    line("# Entered once at start: the process sees the physical release path, not `current`.");
    line(&format!("WorkingDirectory={}", plain(&format!("{root}/current"))));
    // Root-owned, outside the app root: systemd reads it as root before dropping privileges.
    let env_file =
        format!("{}/{}", crate::layout::state_dir(release.app.as_str()), crate::layout::STATE_ENV_FILE);
    line(&format!("EnvironmentFile={}", plain(&env_file)));
    for assignment in &env {
        line(&format!("Environment={assignment}"));
    }
    line(&format!("ExecStart={exec}"));
    line(&format!("Restart={}", config.service.restart.as_str()));
    line(&format!("RestartSec={}", config.service.restart_sec));
    line(&format!("TimeoutStopSec={stop_timeout}"));
    line("# SIGTERM to hypercorn's main process only: it tells its workers to finish in-flight requests");
    line("# within graceful_timeout; whatever is left gets SIGKILL after TimeoutStopSec.");
    line("KillMode=mixed");
    line("UMask=0027");
    line("ProtectSystem=strict");
    line("ProtectHome=read-only");
    line(&format!("ReadWritePaths=-{}", plain(&format!("{root}/shared"))));
    line("# Sandboxing: defaults for a Python ASGI service, then deploy.yaml's service.hardening.");
    for (directive, value) in sandbox(config, release) {
        line(&format!("{directive}={}", plain(&value)));
    }
    line("");
    line("[Install]");
    line("WantedBy=multi-user.target");
    out
}

/// The sandboxing directives of the unit, in order: the defaults (see README, "Hardening"), each
/// replaced by deploy.yaml's `service.hardening` value when it names the directive; path lists
/// there are added to the defaults, other directives it names and the defaults lack are appended.
pub fn sandbox(config: &DeployConfig, release: &Release) -> Vec<(String, String)> {
    let binds: Vec<&str> = config.hypercorn.bind.iter().map(|b| b.as_str()).collect();
    let mut families = vec!["AF_UNIX"];
    if binds.iter().any(|b| !b.starts_with("unix:") && !b.starts_with("fd://")) {
        // Outgoing connections (databases, APIs) resolve to either family, whatever the binds.
        families.extend(["AF_INET", "AF_INET6"]);
    }
    let mut defaults: Vec<(&str, String)> = vec![
        ("NoNewPrivileges", "yes".into()),
        ("CapabilityBoundingSet", String::new()),
        ("AmbientCapabilities", String::new()),
        ("PrivateTmp", "yes".into()),
        ("PrivateDevices", "yes".into()),
        ("DevicePolicy", "closed".into()),
        ("PrivateMounts", "yes".into()),
        ("ProtectKernelTunables", "yes".into()),
        ("ProtectKernelModules", "yes".into()),
        ("ProtectKernelLogs", "yes".into()),
        ("ProtectControlGroups", "yes".into()),
        ("ProtectClock", "yes".into()),
        ("ProtectHostname", "yes".into()),
        ("ProtectProc", "invisible".into()),
        ("ProcSubset", "pid".into()),
        ("RestrictNamespaces", "yes".into()),
        ("RestrictRealtime", "yes".into()),
        ("RestrictSUIDSGID", "yes".into()),
        ("RestrictAddressFamilies", families.join(" ")),
        ("LockPersonality", "yes".into()),
        ("RemoveIPC", "yes".into()),
        ("SystemCallArchitectures", "native".into()),
        ("SystemCallFilter", "@system-service".into()),
        ("SystemCallFilter", "~@privileged @resources".into()),
        ("SystemCallErrorNumber", "EPERM".into()),
    ];
    if !release.socket_activation {
        // hypercorn binds itself: a port below 1024 needs the one capability, a unix socket
        // needs its directory writable.
        let low_port = binds
            .iter()
            .filter_map(|b| crate::config::listen_stream(b).ok())
            .any(|l| l.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() < 1024));
        if low_port {
            for (name, value) in &mut defaults {
                if *name == "CapabilityBoundingSet" || *name == "AmbientCapabilities" {
                    *value = "CAP_NET_BIND_SERVICE".into();
                }
            }
        }
        for bind in &binds {
            if let Some((dir, _)) = bind.strip_prefix("unix:").and_then(|p| p.rsplit_once('/'))
                && !dir.is_empty()
            {
                defaults.push(("ReadWritePaths", format!("-{dir}")));
            }
        }
    }
    let overrides = &config.service.hardening.0;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut replaced = std::collections::BTreeSet::new();
    for (name, value) in defaults {
        match overrides.iter().find(|s| s.directive.as_str() == name) {
            Some(_) if name == "ReadWritePaths" => out.push((name.into(), value)),
            Some(setting) => {
                if replaced.insert(name) {
                    out.push((name.into(), setting.value.clone()));
                }
            }
            None => out.push((name.into(), value)),
        }
    }
    for setting in overrides {
        let name = setting.directive.as_str();
        if !replaced.contains(name) {
            out.push((name.into(), setting.value.clone()));
        }
    }
    out
}

/// `<unit stem>.socket`: one `ListenStream=` per hypercorn bind, in bind order (the service
/// gets them as fd 3, 4, ... in that order), unix sockets owned by the app user and group, mode
/// 0660, removed when the socket stops.
pub fn socket_unit(config: &DeployConfig, release: &Release) -> Option<String> {
    let _ = release.socket_unit()?;
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("# Rendered by `cargo xtask bundle` from deploy.yaml; installed by deploy-hook.");
    line("[Unit]");
    line(&format!("Description={}", plain(&format!("{} (listening sockets)", config.description()))));
    line("");
    line("[Socket]");
    let mut unix = false;
    for bind in &config.hypercorn.bind {
        let listen = crate::config::listen_stream(bind.as_str()).expect("checked while parsing");
        unix |= listen.starts_with('/');
        line(&format!("ListenStream={}", plain(&listen)));
    }
    line("Accept=no");
    line(&format!("Service={}", release.unit));
    line("# hypercorn sets TCP_NODELAY only on sockets it creates itself.");
    line("NoDelay=yes");
    if let Some(backlog) = config.hypercorn.backlog {
        line(&format!("Backlog={backlog}"));
    }
    if unix {
        line(&format!("SocketUser={}", release.user));
        line(&format!("SocketGroup={}", release.group));
        line("SocketMode=0660");
        line("DirectoryMode=0755");
        line("RemoveOnStop=yes");
    }
    for name in ["IPAddressAllow", "IPAddressDeny"] {
        if let Some(value) = config.service.hardening.get(name) {
            line(&format!("{name}={value}"));
        }
    }
    line("");
    line("[Install]");
    line("WantedBy=sockets.target");
    Some(out)
}

/// hypercorn's configuration as the service runs it: with socket activation each bind becomes
/// the inherited descriptor `fd://3`, `fd://4`, ... in the socket unit's order.
pub fn served_hypercorn(config: &DeployConfig) -> HypercornConfig {
    let mut hypercorn = config.hypercorn.clone();
    if config.service.socket_activation {
        hypercorn.bind = (0..hypercorn.bind.len())
            .map(|i| crate::config::Text::new(&format!("fd://{}", 3 + i)).expect("no control character"))
            .collect();
    }
    hypercorn
}

/// hypercorn.toml, with only keys hypercorn's `Config` knows.
pub fn hypercorn_toml(config: &HypercornConfig) -> String {
    let body = toml::to_string(config).expect("the hypercorn config serializes to TOML");
    format!("# Rendered by `cargo xtask bundle` from deploy.yaml.\n{body}")
}

#[cfg(test)]
mod tests;
