//! Checks of the files our bundles carry, read back from any revision: hypercorn.toml (known keys
//! only), requirement lines (well formed, pinned), the systemd unit (what the hook relies on) and
//! the vendored wheels (tags fit the bundle's arch and Python, every requirement has its wheel
//! and hash, no wheel unlisted).

use appspec::diag::{Finding, Severity};

use crate::{config::Release, unit_file};

/// Every attribute of hypercorn 0.18's `Config`: `Config.from_toml` sets whatever it is given
/// and silently ignores what it does not know, so anything else is a typo.
pub const HYPERCORN_KEYS: &[&str] = &[
    "access_log_format",
    "accesslog",
    "alpn_protocols",
    "alt_svc_headers",
    "application_path",
    "backlog",
    "bind",
    "ca_certs",
    "certfile",
    "ciphers",
    "debug",
    "dogstatsd_tags",
    "errorlog",
    "graceful_timeout",
    "group",
    "h11_max_incomplete_size",
    "h11_pass_raw_headers",
    "h2_max_concurrent_streams",
    "h2_max_header_list_size",
    "h2_max_inbound_frame_size",
    "include_date_header",
    "include_server_header",
    "insecure_bind",
    "keep_alive_max_requests",
    "keep_alive_timeout",
    "keyfile",
    "keyfile_password",
    "logconfig",
    "logconfig_dict",
    "logger_class",
    "loglevel",
    "max_app_queue_size",
    "max_requests",
    "max_requests_jitter",
    "pid_path",
    "quic_bind",
    "read_timeout",
    "root_path",
    "server_names",
    "shutdown_timeout",
    "ssl_handshake_timeout",
    "startup_timeout",
    "statsd_host",
    "statsd_prefix",
    "umask",
    "use_reloader",
    "user",
    "verify_flags",
    "verify_mode",
    "websocket_max_message_size",
    "websocket_ping_interval",
    "worker_class",
    "workers",
    "wsgi_max_body_size",
];

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// hypercorn.toml: valid TOML whose top-level keys hypercorn knows.
pub fn hypercorn_toml(file: &str, text: &str) -> Vec<Finding> {
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            let mut f = Finding::file(
                file,
                "hypercorn.syntax",
                Severity::Error,
                format!("not valid TOML: {}", e.message()),
                "fix the TOML syntax",
            );
            if let Some(span) = e.span() {
                let (line, col) = line_col(text, span.start);
                f = f.at(line, col);
            }
            return vec![f];
        }
    };
    let mut out = Vec::new();
    for key in table.keys() {
        if HYPERCORN_KEYS.contains(&key.as_str()) {
            continue;
        }
        let mut f = Finding::file(
            file,
            "hypercorn.unknown-key",
            Severity::Error,
            format!("hypercorn has no setting `{key}` and silently ignores it"),
            "remove it or fix its spelling (see hypercorn's Config attributes)",
        );
        if let Some(offset) = find_key(text, key) {
            let (line, col) = line_col(text, offset);
            f = f.at(line, col);
        }
        out.push(f);
    }
    out
}

fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with(key) && trimmed[key.len()..].trim_start().starts_with('=') {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// Requirement lines (pip's format): well formed, and pinned with `==`/`===` (a warning when not).
pub fn requirements(file: &str, text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start_line = 0;
    for (idx, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start_line = idx + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        // A comment starts at `#` at the line start or after whitespace.
        let content = match line.find(" #").or_else(|| line.starts_with('#').then_some(0)) {
            Some(i) => &line[..i],
            None => line.as_str(),
        };
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        let at = |rule: &'static str, severity: Severity, message: String, fix: &str| {
            Finding::file(file, rule, severity, message, fix).at(start_line, 1)
        };
        if content.starts_with('-') {
            let option = content.split([' ', '=']).next().unwrap_or(content);
            let known = [
                "-r",
                "--requirement",
                "-c",
                "--constraint",
                "-i",
                "--index-url",
                "--extra-index-url",
                "--no-index",
                "-f",
                "--find-links",
                "--hash",
                "--only-binary",
                "--no-binary",
                "--prefer-binary",
                "--require-hashes",
                "--pre",
                "--trusted-host",
            ];
            if option == "-e" || option == "--editable" {
                out.push(at(
                    "requirements.unpinned",
                    Severity::Warning,
                    format!("`{content}` is an editable install, not a pinned release"),
                    "pin a released version with ==",
                ));
            } else if !known.contains(&option) {
                out.push(at(
                    "requirements.syntax",
                    Severity::Error,
                    format!("unknown option `{option}`"),
                    "remove the line or use a pip option",
                ));
            }
            continue;
        }
        // Drop the environment marker and per-requirement options.
        let spec = content.split(';').next().unwrap_or("").trim();
        let spec = spec.split(" --").next().unwrap_or("").trim();
        if spec.contains(" @ ") || spec.contains("://") {
            out.push(at(
                "requirements.unpinned",
                Severity::Warning,
                format!("`{spec}` installs from a URL, not a pinned release"),
                "pin a released version with ==",
            ));
            continue;
        }
        let name_end =
            spec.find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).unwrap_or(spec.len());
        let (name, mut rest) = spec.split_at(name_end);
        if !is_name(name) {
            out.push(at(
                "requirements.syntax",
                Severity::Error,
                format!("`{content}` does not start with a package name"),
                "write NAME==VERSION",
            ));
            continue;
        }
        rest = rest.trim_start();
        if let Some(extras) = rest.strip_prefix('[') {
            let Some((inner, after)) = extras.split_once(']') else {
                out.push(at(
                    "requirements.syntax",
                    Severity::Error,
                    format!("`{content}`: unclosed extras"),
                    "close the `[`",
                ));
                continue;
            };
            if !inner.split(',').all(|e| is_name(e.trim())) {
                out.push(at(
                    "requirements.syntax",
                    Severity::Error,
                    format!("`{content}`: bad extras"),
                    "write extras as [a,b]",
                ));
                continue;
            }
            rest = after.trim_start();
        }
        if rest.is_empty() {
            out.push(at(
                "requirements.unpinned",
                Severity::Warning,
                format!("{name} has no version: each install may pick a different one"),
                &format!("pin it: {name}==VERSION"),
            ));
            continue;
        }
        let clauses: Vec<&str> = rest.split(',').map(str::trim).collect();
        let mut pinned = false;
        let mut bad = false;
        for clause in &clauses {
            let op_len = clause.find(|c: char| !"<>=!~".contains(c)).unwrap_or(clause.len());
            let (op, version) = clause.split_at(op_len);
            let version = version.trim();
            let version_ok = !version.is_empty()
                && version.chars().all(|c| c.is_ascii_alphanumeric() || "._-+*!".contains(c));
            if !matches!(op, "==" | "===" | ">=" | "<=" | ">" | "<" | "!=" | "~=") || !version_ok {
                bad = true;
            } else if (op == "==" && !version.contains('*')) || op == "===" {
                pinned = true;
            }
        }
        if bad {
            out.push(at(
                "requirements.syntax",
                Severity::Error,
                format!("`{content}` is not a valid version specifier"),
                &format!("write {name}==VERSION"),
            ));
        } else if !pinned || clauses.len() > 1 {
            out.push(at(
                "requirements.unpinned",
                Severity::Warning,
                format!("`{spec}` is not pinned to one version"),
                &format!("pin it: {name}==VERSION"),
            ));
        }
    }
    out
}

/// One requirement of a hash-pinned file: where it is, `name==version`, its hashes.
struct Pinned {
    line: usize,
    name: String,
    version: String,
    hashes: Vec<String>,
}

fn pinned_lines(text: &str) -> Vec<Pinned> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (idx, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start = idx + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        let content = line.split(" #").next().unwrap_or("").trim();
        if content.is_empty() || content.starts_with('#') || content.starts_with('-') {
            continue;
        }
        let mut words = content.split_whitespace();
        let spec = words.next().unwrap_or("");
        let Some((name, version)) = spec.split_once("==") else { continue };
        let hashes = words.filter_map(|w| w.strip_prefix("--hash=sha256:")).map(str::to_owned).collect();
        out.push(Pinned {
            line: start,
            name: crate::wheel::normalize_name(name.split('[').next().unwrap_or(name)),
            version: version.to_owned(),
            hashes,
        });
    }
    out
}

/// The vendored wheels of a revision against its release.yaml and requirements: each wheel's
/// tags fit the bundle's arch and Python, every requirement has a wheel and a hash that
/// matches it, and no wheel is unlisted. `wheels` are `(file name, sha256)`; `arch` is the
/// instances' (release.yaml's unless told otherwise).
pub fn wheels(
    release: &Release,
    arch: &str,
    requirements: &str,
    wheels: &[(String, String)],
) -> Vec<Finding> {
    use crate::{config::Dependencies, layout, wheel::WheelName};
    let req_file = layout::REQUIREMENTS;
    let mut out = Vec::new();
    let Some(target) = (match release.dependencies {
        Dependencies::Index => {
            if !wheels.is_empty() {
                out.push(Finding::file(
                    layout::WHEELS,
                    "wheels.unused",
                    Severity::Warning,
                    format!("{} wheels ship, but release.yaml says dependencies: index", wheels.len()),
                    "remove them, or set dependencies: vendored and bundle again",
                ));
            }
            return out;
        }
        Dependencies::Vendored => release.wheels.as_ref(),
    }) else {
        out.push(Finding::file(
            crate::layout::RELEASE_YAML,
            "wheels.target",
            Severity::Error,
            "dependencies: vendored, but release.yaml does not say what the wheels are for",
            "bundle again with cargo xtask bundle",
        ));
        return out;
    };
    let Some(interp) =
        crate::wheel::target_interpreter(target.python_version.as_str(), &target.abi, &target.platform)
    else {
        out.push(Finding::file(
            crate::layout::RELEASE_YAML,
            "wheels.target",
            Severity::Error,
            format!("the wheels' platform {:?} is not a manylinux or musllinux tag", target.platform),
            "bundle again with cargo xtask bundle",
        ));
        return out;
    };
    if interp.arch != arch {
        out.push(Finding::file(
            layout::WHEELS,
            "wheels.target",
            Severity::Error,
            format!(
                "the wheels are for {}, but the instances are {arch}: pip and uv refuse them",
                target.platform
            ),
            format!("bundle again: cargo xtask bundle --target {arch}"),
        ));
    }
    let pins = pinned_lines(requirements);
    let mut listed = std::collections::BTreeSet::new();
    for (name, sha) in wheels {
        let file = format!("{}/{name}", layout::WHEELS);
        let wheel = match WheelName::parse(name) {
            Ok(wheel) => wheel,
            Err(why) => {
                out.push(Finding::file(
                    &file,
                    "wheels.name",
                    Severity::Error,
                    why,
                    "remove it; bundle again",
                ));
                continue;
            }
        };
        if let Err(why) = wheel.fits(&interp) {
            out.push(Finding::file(
                &file,
                "wheels.tags",
                Severity::Error,
                format!("does not install on the bundle's target, CPython {} ({}) {}: {why}", target.python_version, target.abi, target.platform),
                "bundle again for the instances' arch (--target) and Python (deploy.yaml python_version, platform)",
            ));
        }
        match pins.iter().find(|p| p.name == wheel.name && p.version == wheel.version) {
            Some(pin) => {
                listed.insert(pin.line);
                if !pin.hashes.iter().any(|h| h == sha) {
                    out.push(
                        Finding::file(
                            req_file,
                            "wheels.hash",
                            Severity::Error,
                            format!("no --hash of {name} matches its sha256 {sha}: pip and uv refuse it"),
                            "bundle again; never edit the wheels or the requirements by hand",
                        )
                        .at(pin.line, 1),
                    );
                }
            }
            None => out.push(Finding::file(
                &file,
                "wheels.unlisted",
                Severity::Error,
                format!("{}=={} is not in {req_file}", wheel.name, wheel.version),
                "remove the wheel, or bundle again",
            )),
        }
    }
    for pin in &pins {
        if pin.hashes.is_empty() {
            out.push(
                Finding::file(
                    req_file,
                    "wheels.unhashed",
                    Severity::Error,
                    format!(
                        "{}=={} has no --hash: the hook installs with --require-hashes",
                        pin.name, pin.version
                    ),
                    "bundle again with cargo xtask bundle",
                )
                .at(pin.line, 1),
            );
        }
        if !listed.contains(&pin.line) {
            out.push(
                Finding::file(
                    req_file,
                    "wheels.missing",
                    Severity::Error,
                    format!(
                        "{}=={} has no wheel in {}: the install without an index fails",
                        pin.name,
                        pin.version,
                        layout::WHEELS
                    ),
                    "bundle again with cargo xtask bundle",
                )
                .at(pin.line, 1),
            );
        }
    }
    out
}

/// The unit holds what deploy-hook relies on: a `[Service]` whose ExecStart runs the release's
/// venv, as the release's user and group, from `<app_root>/current`.
pub fn unit(file: &str, text: &str, release: &Release) -> Vec<Finding> {
    let entries = unit_file::entries(text);
    let get = |section: &str, key: &str| {
        entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
            .map(|e| (e.line, e.value.as_str()))
    };
    let mut out = Vec::new();
    let mut need = |key: &str, want: Option<&str>, fix: String| match (get("Service", key), want) {
        (None, _) => out.push(Finding::file(
            file,
            "unit.content",
            Severity::Error,
            format!("[Service] has no {key}="),
            &fix,
        )),
        (Some((line, value)), Some(want)) if value != want => out.push(
            Finding::file(
                file,
                "unit.content",
                Severity::Error,
                format!("{key}={value} but release.yaml says {want}"),
                &fix,
            )
            .at(line, 1),
        ),
        _ => {}
    };
    need("User", Some(release.user.as_str()), format!("set User={}", release.user));
    need("Group", Some(release.group.as_str()), format!("set Group={}", release.group));
    let current = format!("{}/current", release.app_root);
    need("WorkingDirectory", Some(current.as_str()), format!("set WorkingDirectory={current}"));
    need("ExecStart", None, "add ExecStart= running hypercorn from the release's venv".into());
    if let Some((line, exec)) = get("Service", "ExecStart") {
        let words = unit_file::words(exec, true);
        let runs = |what: &str| words.iter().any(|word| word.contains(what));
        let venv = release.venv_dir();
        if !runs(&venv) {
            out.push(
                Finding::file(
                    file,
                    "unit.content",
                    Severity::Error,
                    format!("ExecStart does not run the release's venv {venv}: the hook builds that one"),
                    "rebuild the bundle with `cargo xtask bundle`",
                )
                .at(line, 1),
            );
        }
        if !runs("hypercorn") {
            out.push(
                Finding::file(
                    file,
                    "unit.content",
                    Severity::Warning,
                    "ExecStart does not run hypercorn".to_owned(),
                    "run `python -m hypercorn`",
                )
                .at(line, 1),
            );
        }
    }
    if get("Install", "WantedBy").is_none() {
        out.push(Finding::file(
            file,
            "unit.content",
            Severity::Warning,
            "[Install] has no WantedBy=: `systemctl enable` does nothing".to_owned(),
            "add WantedBy=multi-user.target",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(found: Vec<Finding>) -> Vec<(&'static str, Option<usize>)> {
        found.into_iter().map(|f| (f.rule, f.line)).collect()
    }

    #[test]
    fn requirement_lines() {
        let text = "# comment\nh11==0.16.0\nhypercorn[trio]==0.18.0 ; python_version >= \"3.11\"\nflask>=2\nrequests\n-r other.txt\n==1.0\nfoo==\nbar==1.* \n";
        assert_eq!(
            rules(requirements("r", text)),
            [
                ("requirements.unpinned", Some(4)),
                ("requirements.unpinned", Some(5)),
                ("requirements.syntax", Some(7)),
                ("requirements.syntax", Some(8)),
                ("requirements.unpinned", Some(9)),
            ]
        );
    }

    #[test]
    fn hypercorn_keys() {
        assert!(hypercorn_toml("h", "bind = [\"127.0.0.1:8000\"]\nworkers = 2\n").is_empty());
        assert_eq!(
            rules(hypercorn_toml("h", "bind = \"x\"\nworker = 2\n")),
            [("hypercorn.unknown-key", Some(2))]
        );
        assert_eq!(rules(hypercorn_toml("h", "bind = [\n")), [("hypercorn.syntax", Some(1))]);
    }
}
