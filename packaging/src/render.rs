//! Rendering the systemd unit and hypercorn.toml from a resolved configuration.
//!
//! The unit names no path that the running service would resolve lazily through `current`:
//! ExecStart runs the content-addressed venv's interpreter by its real path, and the working
//! directory is entered through `current` once, at start, where `getcwd()` becomes the physical
//! release path (ANCHORS.md §7.2, §7.3).

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

/// The systemd unit for the service.
pub fn unit(config: &DeployConfig, release: &Release) -> String {
    let root = release.app_root.as_str();
    let python = format!("{}/bin/python", release.venv_dir());
    let exec = [
        python.as_str(),
        "-m",
        "hypercorn",
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
    line("");
    line("[Service]");
    line("Type=exec");
    line(&format!("User={}", release.user));
    line(&format!("Group={}", release.group));
    line("# Entered once at start: the process sees the physical release path, not `current`.");
    line(&format!("WorkingDirectory={}", plain(&format!("{root}/current"))));
    line(&format!("EnvironmentFile={}", plain(&format!("{root}/current/.env"))));
    for assignment in &env {
        line(&format!("Environment={assignment}"));
    }
    line(&format!("ExecStart={exec}"));
    line(&format!("Restart={}", config.service.restart.as_str()));
    line(&format!("RestartSec={}", config.service.restart_sec));
    line(&format!("TimeoutStopSec={stop_timeout}"));
    line("KillMode=mixed");
    line("UMask=0027");
    line("NoNewPrivileges=yes");
    line("PrivateTmp=yes");
    line("ProtectSystem=strict");
    line("ProtectHome=read-only");
    line(&format!("ReadWritePaths=-{}", plain(&format!("{root}/shared"))));
    line("ProtectKernelTunables=yes");
    line("ProtectKernelModules=yes");
    line("ProtectControlGroups=yes");
    line("RestrictSUIDSGID=yes");
    line("LockPersonality=yes");
    line("");
    line("[Install]");
    line("WantedBy=multi-user.target");
    out
}

/// hypercorn.toml, with only keys hypercorn's `Config` knows.
pub fn hypercorn_toml(config: &HypercornConfig) -> String {
    let body = toml::to_string(config).expect("the hypercorn config serializes to TOML");
    format!("# Rendered by `cargo xtask bundle` from deploy.yaml.\n{body}")
}

#[cfg(test)]
mod tests;
