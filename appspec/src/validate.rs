//! The agent's appspec.yml rules (aws-codedeploy-agent 1.8.1, `application_specification/*.rb`),
//! each with a rule id and the agent's own message, plus the traps it accepts silently.
//!
//! The agent stops at the first failure in the order version, os, hooks, files, permissions,
//! file_exists_behavior; we report every finding.

use crate::{
    LifecycleEvent, MAX_HOOK_TIMEOUT,
    diag::{Agent, Finding, Severity},
    yaml::{self, Node, Style, Value},
    yaml11,
};

/// The file name the agent reads.
pub const APPSPEC_FILE: &str = "appspec.yml";

/// One hook script, as the agent would run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The event name as written.
    pub event: String,
    /// `location.to_s.strip`.
    pub location: String,
    /// Where `location` is written.
    pub line: usize,
    /// Its column.
    pub col: usize,
    /// The timeout the agent applies (`to_i`, default 3600).
    pub timeout: i128,
}

/// One `files:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    /// `source.to_s`.
    pub source: String,
    /// `destination.to_s`.
    pub destination: String,
    /// Where the entry is written.
    pub line: usize,
    /// Its column.
    pub col: usize,
}

/// One `permissions:` entry, as the agent's `LinuxPermissionInfo` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// `object.to_s.strip`: an instance path.
    pub object: String,
    /// `pattern`, `**` when absent.
    pub pattern: String,
    /// `except`, empty when absent.
    pub except: Vec<String>,
    /// `type`, `[file, directory]` when absent.
    pub types: Vec<String>,
    /// True when `acls` holds a default (`d:`) entry.
    pub default_acl: bool,
    /// Where the entry is written.
    pub line: usize,
    /// Its column.
    pub col: usize,
}

/// What the other checks need from a readable appspec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// Scripts of events that the agent runs, in order.
    pub scripts: Vec<Script>,
    /// `files:` entries.
    pub files: Vec<FileMapping>,
    /// `permissions:` entries the agent reads without raising.
    pub permissions: Vec<Permission>,
    /// `file_exists_behavior` when valid; `None` means the deployment's setting, by default
    /// DISALLOW.
    pub file_exists_behavior: Option<String>,
}

/// The findings, and the parts later checks use (empty when the YAML does not load).
#[derive(Debug, Default)]
pub struct Validation {
    /// Every finding, sorted by position; `file` is [`APPSPEC_FILE`].
    pub findings: Vec<Finding>,
    /// Hooks and files as read.
    pub spec: Spec,
}

impl Validation {
    /// True when some finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

const EVENTS_NEVER_RUN: [&str; 2] = ["Install", "DownloadBundle"];

struct Ctx {
    findings: Vec<Finding>,
    /// Positions of keys the agent ignores: their values get no finding of their own.
    ignored: Vec<yaml::Pos>,
}

impl Ctx {
    fn push(&mut self, node: &Node, rule: &'static str, severity: Severity, message: String, fix: &str) {
        self.findings
            .push(Finding::file(APPSPEC_FILE, rule, severity, message, fix).at(node.pos.line, node.pos.col));
    }
    fn error(&mut self, node: &Node, rule: &'static str, message: impl Into<String>, fix: &str) {
        self.push(node, rule, Severity::Error, message.into(), fix);
    }
    fn warn(&mut self, node: &Node, rule: &'static str, message: impl Into<String>, fix: &str) {
        self.push(node, rule, Severity::Warning, message.into(), fix);
    }
    /// An error the agent accepts silently: the deployment goes on, but not as written.
    fn trap(&mut self, node: &Node, rule: &'static str, message: impl Into<String>, fix: &str) {
        self.push(node, rule, Severity::Error, message.into(), fix);
        if let Some(last) = self.findings.last_mut() {
            last.agent = Agent::Accepts;
        }
    }
    /// A Ruby crash (NoMethodError, TypeError) the agent reports as the event's failure.
    fn crash(&mut self, node: &Node, rule: &'static str, message: String, fix: &str) {
        self.error(node, rule, message, fix);
    }
}

fn no_method(method: &str, node: &Node) -> String {
    format!("NoMethodError: undefined method `{method}' for {}:{}", node.ruby_inspect(), node.ruby_class())
}

/// Validates appspec.yml text as the Linux agent reads it.
pub fn validate(text: &str) -> Validation {
    let loaded = yaml::load(text);
    let mut ctx = Ctx { findings: Vec::new(), ignored: Vec::new() };
    for mut f in loaded.findings {
        f.file = APPSPEC_FILE.to_owned();
        ctx.findings.push(f);
    }
    let loads = !ctx.findings.iter().any(|f| f.is_error() && f.rule.starts_with("yaml."));
    let mut spec = Spec::default();
    let origin =
        Node { value: Value::Null, pos: yaml::Pos { line: 1, col: 1 }, style: None, raw: String::new() };
    match (&loaded.root, loads) {
        (_, false) => {}
        (None, true) => ctx.error(
            &origin,
            "appspec.empty",
            "The deployment failed because the application specification file was empty. Make sure your AppSpec file defines at minimum the 'version' and 'os' properties.",
            "write at least `version: 0.0` and `os: linux`",
        ),
        (Some(root), true) => match &root.value {
            Value::Map(_) => spec = check_root(root, &mut ctx),
            Value::Seq(_) => ctx.crash(
                root,
                "appspec.structure",
                "TypeError: no implicit conversion of String into Integer (the document is a list, not a mapping)".into(),
                "make the top level a mapping with version, os and hooks",
            ),
            _ => {
                // `"text"['version']` is nil: the version check fails.
                ctx.error(root, "appspec.version", version_message(""), "make the top level a mapping with `version: 0.0`");
            }
        },
    }
    let mut findings = ctx.findings;
    findings.sort_by_key(|f| (f.line, f.col));
    Validation { findings, spec }
}

fn version_message(shown: &str) -> String {
    format!(
        "The deployment failed because an invalid version value ({shown}) was entered in the application specification file. Make sure your AppSpec file specifies \"0.0\" as the version, and then try again."
    )
}

fn os_message(shown: &str) -> String {
    format!(
        "The deployment failed because the application specification file specifies an unsupported operating system ({shown}). Specify either \"linux\" or \"windows\" in the os section of the AppSpec file, and then try again."
    )
}

const TOP_KEYS: [&str; 6] = ["version", "os", "hooks", "files", "permissions", "file_exists_behavior"];
const SCRIPT_KEYS: [&str; 4] = ["location", "timeout", "runas", "sudo"];
const FILE_KEYS: [&str; 2] = ["source", "destination"];
const PERMISSION_KEYS: [&str; 9] =
    ["object", "pattern", "except", "owner", "group", "mode", "acls", "context", "type"];

/// Keys a misplaced indentation turns into top-level keys, and where they belong.
const NESTED_KEYS: [(&str, &str); 14] = [
    ("location", "hooks: <event>:"),
    ("timeout", "hooks: <event>:"),
    ("runas", "hooks: <event>:"),
    ("source", "files:"),
    ("destination", "files:"),
    ("object", "permissions:"),
    ("pattern", "permissions:"),
    ("except", "permissions:"),
    ("owner", "permissions:"),
    ("group", "permissions:"),
    ("mode", "permissions:"),
    ("acls", "permissions:"),
    ("context", "permissions:"),
    ("type", "permissions:"),
];

fn check_keys(map: &Node, known: &[&str], what: &str, ctx: &mut Ctx) {
    let Value::Map(pairs) = &map.value else { return };
    for (key, _) in pairs {
        let name = match &key.value {
            Value::Str(s) => s.clone(),
            _ => key.raw.clone(),
        };
        if known.contains(&name.as_str()) {
            continue;
        }
        ctx.ignored.push(key.pos);
        let close = known.iter().find(|k| k.eq_ignore_ascii_case(&name)).or_else(|| {
            known
                .iter()
                .filter(|k| {
                    k.len() > 3 && edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase()) <= 2
                })
                .min_by_key(|k| edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase()))
        });
        let nested = (what == "top-level")
            .then(|| {
                NESTED_KEYS
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, under)| *under)
                    .or_else(|| LifecycleEvent::from_name(&name).is_some().then_some("hooks:"))
            })
            .flatten();
        if let Some(right) = close {
            let how = if right.eq_ignore_ascii_case(&name) { "keys are case-sensitive and " } else { "" };
            ctx.trap(
                key,
                "appspec.unknown-key",
                format!("{what} key `{name}` is not `{right}`: {how}the agent silently ignores this one, so what it holds never applies (did you mean `{right}`?)"),
                &format!("rename it to `{right}`"),
            );
        } else if let Some(under) = nested {
            ctx.trap(
                key,
                "appspec.unknown-key",
                format!("`{name}` is a top-level key here, where the agent ignores it: it belongs under `{under}` (an indentation slip?)"),
                &format!("indent it under `{under}`"),
            );
        } else {
            let hint = if what == "top-level" && matches!(name.as_str(), "Resources" | "Hooks") {
                "this looks like an ECS or Lambda appspec; EC2/on-prem needs version, os and hooks"
            } else {
                "remove it or fix its spelling"
            };
            ctx.warn(
                key,
                "appspec.unknown-key",
                format!("{what} key `{name}` is not read by the agent and has no effect"),
                hint,
            );
        }
    }
}

fn check_root(root: &Node, ctx: &mut Ctx) -> Spec {
    check_keys(root, &TOP_KEYS, "top-level", ctx);
    let key_node = |key: &str| root.get(key);

    // version: `[0.0].include?(version)`, Ruby `==`.
    match key_node("version") {
        None => ctx.error(root, "appspec.version", version_message(""), "add `version: 0.0` (unquoted)"),
        Some(v) => {
            let ok = match v.value {
                Value::Float(f) => f == 0.0,
                Value::Int(n) => n == 0,
                _ => false,
            };
            if !ok {
                let fix = if v.as_str() == Some("0.0") {
                    "write `version: 0.0` without quotes: a quoted \"0.0\" is a string, and the agent wants the number"
                } else {
                    "write `version: 0.0`"
                };
                ctx.error(v, "appspec.version", version_message(&v.ruby_to_s()), fix);
            } else if v.raw.rsplit(' ').next() != Some("0.0") {
                ctx.warn(
                    v,
                    "appspec.version",
                    format!("version `{}` passes only because Ruby compares it equal to 0.0", v.raw),
                    "write `version: 0.0`",
                );
            }
        }
    }

    // os: `['linux'].include?(os)` on the Linux agent.
    let os = key_node("os");
    let os_linux = os.and_then(Node::as_str) == Some("linux");
    match os {
        None => ctx.error(root, "appspec.os", os_message(""), "add `os: linux`"),
        Some(node) if !os_linux => {
            let fix = if node.as_str().is_some_and(|s| s.eq_ignore_ascii_case("linux")) {
                "write `os: linux` in lower case"
            } else {
                "write `os: linux`: this agent runs on Linux"
            };
            ctx.error(node, "appspec.os", os_message(&node.ruby_to_s()), fix);
        }
        Some(_) => {}
    }

    let mut spec = Spec::default();
    if let Some(hooks) = key_node("hooks").filter(|h| h.is_truthy()) {
        check_hooks(hooks, ctx, &mut spec);
    }
    if let Some(files) = key_node("files").filter(|h| h.is_truthy()) {
        check_files(files, ctx, &mut spec);
    }
    if let Some(permissions) = key_node("permissions").filter(|h| h.is_truthy()) {
        check_permissions(permissions, os.and_then(Node::as_str), ctx, &mut spec);
    }
    if let Some(feb) = key_node("file_exists_behavior").filter(|h| !h.is_null()) {
        let valid = ["DISALLOW", "OVERWRITE", "RETAIN"];
        if let Some(valid) = feb.as_str().filter(|s| valid.contains(s)) {
            spec.file_exists_behavior = Some(valid.to_owned());
        } else {
            ctx.error(
                feb,
                "appspec.file-exists-behavior",
                format!(
                    "The deployment failed because an invalid file_exists_behavior value ({}) was entered in the application specification file. Make sure your AppSpec file specifies one of DISALLOW,OVERWRITE,RETAIN as the file_exists_behavior, and then try again.",
                    feb.ruby_to_s()
                ),
                "use DISALLOW, OVERWRITE or RETAIN, in upper case",
            );
        }
    }
    check_bool_traps(root, ctx);
    spec
}

/// Plain `yes`/`no`/`on`/`off` read as booleans in YAML 1.1, where a string was likely meant.
fn check_bool_traps(node: &Node, ctx: &mut Ctx) {
    match &node.value {
        Value::Bool(b) if node.style == Some(Style::Plain) => {
            let raw = node.raw.to_ascii_lowercase();
            if raw != "true" && raw != "false" {
                ctx.warn(
                    node,
                    "yaml.bool",
                    format!(
                        "`{}` is the boolean {b} under the agent's YAML 1.1 loader, not a string",
                        node.raw
                    ),
                    &format!("quote it ('{}') if a string is meant, or write {b}", node.raw),
                );
            }
        }
        Value::Seq(items) => items.iter().for_each(|i| check_bool_traps(i, ctx)),
        Value::Map(pairs) => {
            for (k, v) in pairs {
                // One cause, one finding: an ignored key already has its own.
                if ctx.ignored.contains(&k.pos) {
                    continue;
                }
                check_bool_traps(k, ctx);
                check_bool_traps(v, ctx);
            }
        }
        _ => {}
    }
}

fn check_hooks(hooks: &Node, ctx: &mut Ctx, spec: &mut Spec) {
    let Value::Map(pairs) = &hooks.value else {
        ctx.crash(
            hooks,
            "appspec.hooks",
            no_method("each_pair", hooks),
            "make `hooks` a mapping of event names to lists of scripts",
        );
        return;
    };
    for (name_node, scripts) in pairs {
        let name = name_node.ruby_to_s();
        let runs = if LifecycleEvent::from_name(&name).is_some() && matches!(name_node.value, Value::Str(_)) {
            true
        } else if EVENTS_NEVER_RUN.contains(&name.as_str()) {
            ctx.ignored.push(name_node.pos);
            ctx.trap(
                name_node,
                "appspec.hook-name",
                format!("{name} is the agent's own step: a script listed under it passes validation but is never run"),
                "move the script to BeforeInstall or AfterInstall",
            );
            false
        } else {
            let suggestion = LifecycleEvent::ALL.iter().find(|e| {
                let (a, b) = (e.name().to_ascii_lowercase(), name.to_ascii_lowercase());
                a == b || edit_distance(&a, &b) <= 2
            });
            let fix = match suggestion {
                Some(e) => format!("rename it to {e}"),
                None => format!(
                    "use one of {}",
                    LifecycleEvent::ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
                ),
            };
            let guess = suggestion.map(|e| format!(" (did you mean `{e}`?)")).unwrap_or_default();
            ctx.ignored.push(name_node.pos);
            ctx.trap(
                name_node,
                "appspec.hook-name",
                format!(
                    "unknown lifecycle event {}: the agent silently never runs it{guess} (codedeploy-local: ArgumentError: appspec.yml file contains unknown lifecycle events: [{}])",
                    name_node.raw,
                    name_node.ruby_inspect()
                ),
                &fix,
            );
            false
        };
        if !scripts.is_truthy() {
            ctx.warn(
                scripts_or(name_node, scripts),
                "appspec.hook-empty",
                format!("{name} has no scripts; the agent skips it"),
                "list a script or remove the event",
            );
            continue;
        }
        let Value::Seq(items) = &scripts.value else {
            let method = if matches!(scripts.value, Value::Map(_)) { "has_key?" } else { "each" };
            let shown = if method == "has_key?" {
                // Hash#each yields [key, value] arrays.
                format!(
                    "NoMethodError: undefined method `has_key?' for an Array (the scripts of {name} are a mapping, not a list)"
                )
            } else {
                no_method(method, scripts)
            };
            ctx.crash(
                scripts,
                "appspec.hook-scripts",
                shown,
                "write the scripts as a list: `- location: bin/script`",
            );
            continue;
        };
        for script in items {
            check_script(&name, script, runs, ctx, spec);
        }
    }
}

fn scripts_or<'a>(name: &'a Node, scripts: &'a Node) -> &'a Node {
    if scripts.raw.is_empty() { name } else { scripts }
}

fn check_script(event: &str, script: &Node, runs: bool, ctx: &mut Ctx, spec: &mut Spec) {
    if !matches!(script.value, Value::Map(_)) {
        ctx.crash(
            script,
            "appspec.hook-scripts",
            no_method("has_key?", script),
            "each script is a mapping with a `location` key",
        );
        return;
    }
    check_keys(script, &SCRIPT_KEYS, "script", ctx);
    let no_location = "The deployment failed because the application specification file specifies a script with no location value. Specify the location in the hooks section of the AppSpec file, and then try again.";
    let location = match script.get("location") {
        Some(l) if !l.is_null() => l,
        _ => {
            ctx.error(script, "appspec.location", no_location, "add `location: path/inside/the/revision`");
            return;
        }
    };
    let text = location.ruby_to_s().trim().to_owned();
    if text.is_empty() {
        ctx.error(location, "appspec.location", no_location, "give the script's path inside the revision");
        return;
    }
    if text.contains(char::is_whitespace) {
        ctx.error(
            location,
            "appspec.location",
            format!("location {text:?} contains whitespace: the agent runs it without a shell, split on spaces, and fails with \"Script does not exist at specified location\""),
            "arguments are not supported; use a path without spaces and read settings from a file",
        );
    } else if escapes(&text) {
        ctx.error(
            location,
            "appspec.location",
            format!("location {text:?} points outside the revision"),
            "use a path inside the revision, without `..`",
        );
    }

    let timeout = match script.get("timeout") {
        None => 3600,
        Some(t) => check_timeout(t, ctx),
    };

    if let Some(runas) = script.get("runas").filter(|r| !r.is_null()) {
        let user = runas.ruby_to_s().trim().to_owned();
        if !matches!(runas.value, Value::Str(_)) {
            ctx.error(
                runas,
                "appspec.runas",
                format!(
                    "runas is the {} {}: the agent runs `su {user} -c ...`",
                    runas.ruby_class(),
                    runas.ruby_to_s()
                ),
                "quote the user name",
            );
        } else if user.is_empty() || user.contains(char::is_whitespace) {
            ctx.error(
                runas,
                "appspec.runas",
                format!("runas {user:?} is not a user name: the agent runs `su {user} -c ...`"),
                "give one user name",
            );
        }
    }
    if let Some(sudo) = script.get("sudo") {
        ctx.warn(
            sudo,
            "appspec.sudo",
            "`sudo` is undocumented: the agent prefixes the command with `sudo` when it is truthy",
            "remove it; the agent runs hooks as root already",
        );
    }
    if runs {
        spec.scripts.push(Script {
            event: event.to_owned(),
            location: text,
            line: location.pos.line,
            col: location.pos.col,
            timeout,
        });
    }
}

fn check_timeout(t: &Node, ctx: &mut Ctx) -> i128 {
    let invalid = "The deployment failed because an invalid timeout value was provided for a script in the application specification file. Make corrections in the hooks section of the AppSpec file, and then try again.";
    // `opts[:timeout] || 3600`, then `to_i`.
    let value = match &t.value {
        Value::Null | Value::Bool(false) => {
            if matches!(t.value, Value::Bool(false)) {
                ctx.warn(
                    t,
                    "appspec.timeout",
                    "timeout false means the default of 3600 seconds to the agent",
                    "write a number of seconds",
                );
            }
            return 3600;
        }
        Value::Int(n) => *n,
        Value::Float(f) if !f.is_finite() => {
            let shown = yaml11::ruby_float_to_s(*f);
            ctx.crash(
                t,
                "appspec.timeout",
                format!("FloatDomainError: {shown}"),
                "write a whole number of seconds, 1 to 3600",
            );
            return 0;
        }
        Value::Float(f) => {
            let n = f.trunc() as i128;
            ctx.warn(
                t,
                "appspec.timeout",
                format!("timeout {} is read as {n} seconds (to_i)", t.raw),
                &format!("write `timeout: {}`", n.max(1)),
            );
            n
        }
        Value::Str(s) => {
            let n = yaml11::ruby_str_to_i(s);
            if n > 0 && s.trim() != n.to_string() {
                ctx.warn(
                    t,
                    "appspec.timeout",
                    format!("timeout {} is read as {n} seconds (String#to_i)", t.raw),
                    &format!("write `timeout: {n}`"),
                );
            }
            n
        }
        _ => {
            ctx.crash(
                t,
                "appspec.timeout",
                no_method("to_i", t),
                "write a whole number of seconds, 1 to 3600",
            );
            return 0;
        }
    };
    if value <= 0 {
        ctx.error(t, "appspec.timeout", invalid, "write a whole number of seconds, 1 to 3600");
    } else if value > i128::from(MAX_HOOK_TIMEOUT) {
        ctx.trap(
            t,
            "appspec.timeout",
            format!("timeout {value} is over {MAX_HOOK_TIMEOUT} seconds, the documented maximum for a hook; the agent accepts it but the deployment can be failed by the service"),
            "keep each script under 3600 seconds and split long work across events",
        );
    }
    value
}

fn escapes(path: &str) -> bool {
    let mut depth: i32 = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn check_files(files: &Node, ctx: &mut Ctx, spec: &mut Spec) {
    let Value::Seq(items) = &files.value else {
        if matches!(&files.value, Value::Map(pairs) if pairs.is_empty()) {
            // `{}.each` yields nothing.
            return;
        }
        let message = if matches!(files.value, Value::Map(_)) {
            "TypeError: no implicit conversion of String into Integer (`files` is a mapping, not a list)"
                .to_owned()
        } else {
            no_method("each", files)
        };
        ctx.crash(
            files,
            "appspec.files",
            message,
            "write `files:` as a list of `- source: ... destination: ...`",
        );
        return;
    };
    for entry in items {
        let (source, destination) = match &entry.value {
            Value::Map(_) => {
                check_keys(entry, &FILE_KEYS, "files entry", ctx);
                (entry.get("source"), entry.get("destination"))
            }
            // `"text"['source']` is nil (a substring search); `[...]['source']` is a TypeError.
            Value::Str(_) | Value::Symbol(_) => (None, None),
            _ => {
                ctx.crash(
                    entry,
                    "appspec.files",
                    format!(
                        "TypeError: no implicit conversion of String into Integer ({})",
                        entry.ruby_inspect()
                    ),
                    "each entry is a mapping with source and destination",
                );
                continue;
            }
        };
        let source = source.filter(|s| !s.is_null());
        let destination = destination.filter(|d| !d.is_null());
        match (source, destination) {
            (None, _) => ctx.error(
                entry,
                "appspec.files-source",
                "The deployment failed because the application specification file specifies a destination file, but no source file. Update the files section of the AppSpec file, and then try again.",
                "add `source:` (a path inside the revision, `/` for all of it)",
            ),
            (Some(source), None) => ctx.error(
                entry,
                "appspec.files-destination",
                format!("The deployment failed because the application specification file specifies only a source file ({}). Add the name of the destination file to the files section of the AppSpec file, and then try again.", source.ruby_to_s()),
                "add `destination:` (a directory on the instance)",
            ),
            (Some(source), Some(destination)) => {
                let dest = destination.ruby_to_s();
                if spec.files.is_empty() {
                    // Once per appspec: true of every entry, and of almost every revision.
                    ctx.push(
                        entry,
                        "appspec.files-replaced",
                        Severity::Note,
                        "what files: installs is deleted at the start of the next deployment's Install step (of the same deployment group), and with DISALLOW (the default) the Install fails on a file already at a destination that the previous deployment did not install".to_owned(),
                        "treat files: destinations as owned by CodeDeploy; copy in an AfterInstall hook what must outlive the next deployment",
                    );
                }
                if escapes(&source.ruby_to_s()) {
                    ctx.error(source, "appspec.files-source", format!("source {} points outside the revision", source.raw), "use a path inside the revision");
                }
                spec.files.push(FileMapping {
                    source: source.ruby_to_s(),
                    destination: dest,
                    line: source.pos.line,
                    col: source.pos.col,
                });
            }
        }
    }
}

fn check_permissions(permissions: &Node, os: Option<&str>, ctx: &mut Ctx, spec: &mut Spec) {
    let Value::Seq(items) = &permissions.value else {
        if matches!(&permissions.value, Value::Map(pairs) if pairs.is_empty()) {
            return;
        }
        ctx.crash(
            permissions,
            "appspec.permissions",
            no_method("has_key?", permissions),
            "write `permissions:` as a list of mappings with `object`",
        );
        return;
    };
    for permission in items {
        if !matches!(permission.value, Value::Map(_)) {
            ctx.crash(
                permission,
                "appspec.permissions",
                no_method("has_key?", permission),
                "each permission is a mapping with `object`",
            );
            continue;
        }
        check_keys(permission, &PERMISSION_KEYS, "permission", ctx);
        let no_object = "The deployment failed because a permission listed in the application specification file has no object value. Update the permissions section of the AppSpec file, and then try again.";
        let object = match permission.get("object").filter(|o| !o.is_null()) {
            None => {
                ctx.error(
                    permission,
                    "appspec.permission-object",
                    no_object,
                    "add `object:` (an installed path)",
                );
                None
            }
            Some(object) if object.ruby_to_s().trim().is_empty() => {
                ctx.error(object, "appspec.permission-object", no_object, "give the installed path");
                None
            }
            Some(object) => Some(object.ruby_to_s().trim().to_owned()),
        };
        let before = ctx.findings.iter().filter(|f| f.agent_fails()).count();
        if os == Some("windows") {
            ctx.error(permission, "appspec.permission-windows", "The deployment failed because the application specification file specifiles file permissions, but the deployment is targeting one or more Windows Server instances. Permissions are supported only for Amazon Linux, Ubuntu Server, and Red Hat Enterprise Linux (RHEL) instances. Update the permissions section of the AppSpec file, and then try again.", "remove permissions, or target Linux");
            continue;
        }
        if let Some(pattern) = permission.get("pattern").filter(|p| !p.is_null())
            && pattern.ruby_to_s().contains('/')
        {
            ctx.warn(pattern, "appspec.permission-pattern", format!("pattern {} contains `/`: a pattern matches only direct children of object, so it never matches", pattern.raw), "use `**` or a simple name glob");
        }
        if let Some(except) = permission.get("except").filter(|e| !e.is_null())
            && !matches!(except.value, Value::Seq(_) | Value::Map(_))
        {
            ctx.crash(
                except,
                "appspec.permission-except",
                no_method("each", except),
                "write `except:` as a list of globs",
            );
        }
        if let Some(types) = permission.get("type").filter(|t| !t.is_null()) {
            let unsupported = |shown: String| {
                format!(
                    "The deployment failed because the application specification filespecifies a permission for an object type not supported for permissions ({shown}). Update the permissions section of the AppSpec file, and then try again."
                )
            };
            match &types.value {
                Value::Seq(list) => {
                    for t in list {
                        if !matches!(t.as_str(), Some("file" | "directory")) {
                            ctx.error(
                                t,
                                "appspec.permission-type",
                                unsupported(t.ruby_to_s()),
                                "use `file` or `directory`",
                            );
                        }
                    }
                }
                // `Hash#each` yields `[key, value]` pairs, never "file" or "directory".
                Value::Map(pairs) => {
                    for (k, v) in pairs {
                        let shown = format!("[{}, {}]", k.ruby_inspect(), v.ruby_inspect());
                        ctx.error(
                            k,
                            "appspec.permission-type",
                            unsupported(shown),
                            "write `type:` as a list: `type: [file]`",
                        );
                    }
                }
                _ => ctx.crash(
                    types,
                    "appspec.permission-type",
                    no_method("each", types),
                    "write `type:` as a list: `type: [file]`",
                ),
            }
        }
        for key in ["owner", "group"] {
            if let Some(who) = permission.get(key).filter(|w| !w.is_null())
                && !matches!(who.value, Value::Str(_))
            {
                let method = if key == "owner" { "getpwnam" } else { "getgrnam" };
                ctx.error(
                    who,
                    "appspec.permission-owner",
                    format!(
                        "{key} is the {} {}: Etc.{method} fails at install with TypeError",
                        who.ruby_class(),
                        who.ruby_to_s()
                    ),
                    "quote the name",
                );
            }
        }
        if let Some(mode) = permission.get("mode").filter(|m| !m.is_null()) {
            check_mode(mode, ctx);
        }
        if let Some(acls) = permission.get("acls").filter(|a| !a.is_null()) {
            check_acls(acls, ctx);
        }
        if let Some(context) = permission.get("context").filter(|c| !c.is_null()) {
            check_context(context, ctx);
        }
        // The Install step's model needs the entries the agent reads without raising.
        if let Some(object) = object
            && ctx.findings.iter().filter(|f| f.agent_fails()).count() == before
        {
            let strings = |key: &str| -> Option<Vec<String>> {
                match permission.get(key).map(|n| &n.value) {
                    Some(Value::Seq(items)) => Some(items.iter().map(Node::ruby_to_s).collect()),
                    _ => None,
                }
            };
            let pattern = permission.get("pattern").filter(|p| !p.is_null());
            spec.permissions.push(Permission {
                object,
                pattern: pattern.map_or_else(|| "**".to_owned(), Node::ruby_to_s),
                except: strings("except").unwrap_or_default(),
                types: strings("type").unwrap_or_else(|| vec!["file".into(), "directory".into()]),
                default_acl: strings("acls").is_some_and(|aces| aces.iter().any(|a| ace_is_default(a))),
                line: permission.pos.line,
                col: permission.pos.col,
            });
        }
    }
}

/// `AceInfo#default`: the entry starts with `d:` or `default:` (validated by [`check_ace`]).
fn ace_is_default(ace: &str) -> bool {
    let parts: Vec<&str> = ace.split(':').collect();
    parts.len() >= 3 && matches!(parts[0], "d" | "default")
}

fn check_mode(node: &Node, ctx: &mut Ctx) {
    let mut mode = node.ruby_to_s();
    while mode.chars().count() < 3 {
        mode.insert(0, '0');
    }
    let leading_zero_int = node.style == Some(Style::Plain)
        && matches!(node.value, Value::Int(_))
        && node.raw.trim_start_matches(['+', '-']).starts_with('0')
        && node.raw.trim_start_matches(['+', '-']).len() > 1;
    if mode.chars().count() > 4 {
        ctx.error(node, "appspec.mode", format!("The deployment failed because the length of a permissions mode ({mode}) in the application specification file is invalid. Permissions modes must be between one and four characters long. Update the permissions section of the AppSpec file, and then try again."), "write the mode as three or four octal digits in quotes, like \"0644\"");
        return;
    }
    if let Some(bad) = mode.chars().find(|c| !('0'..='7').contains(c)) {
        let fix = if leading_zero_int {
            format!(
                "quote it: mode: \"{}\" (YAML 1.1 read {} as the octal number {mode})",
                node.raw, node.raw
            )
        } else {
            "use octal digits 0-7 only, quoted, like \"0644\"".to_owned()
        };
        ctx.error(node, "appspec.mode", format!("The deployment failed because the permissions mode ({mode}) in the application specification file contains an invalid character ({bad}). Update the permissions section of the AppSpec file, and then try again."), &fix);
        return;
    }
    if leading_zero_int {
        ctx.trap(node, "appspec.mode-octal", format!("unquoted mode {} is the octal number {} under YAML 1.1: the agent applies mode {mode}, not {}", node.raw, node.ruby_to_s(), node.raw.trim_start_matches('0')), &format!("quote it: mode: \"{}\"", node.raw));
    } else if !matches!(node.value, Value::Int(_) | Value::Str(_)) {
        ctx.warn(
            node,
            "appspec.mode",
            format!("mode is the {} {}; the agent uses its text {mode}", node.ruby_class(), node.raw),
            "write the mode as a quoted string like \"0644\"",
        );
    }
}

fn check_acls(acls: &Node, ctx: &mut Ctx) {
    ctx.warn(acls, "appspec.acls-local", "codedeploy-local crashes on any acls entry (NameError: uninitialized constant AclInfo); only the daemon handles them", "test this revision with the daemon, not codedeploy-local");
    let Value::Seq(items) = &acls.value else {
        ctx.crash(acls, "appspec.acls", no_method("each", acls), "write `acls:` as a list of strings");
        return;
    };
    for ace in items {
        let Value::Str(text) = &ace.value else {
            ctx.crash(ace, "appspec.acls", no_method("split", ace), "quote the acl entry");
            continue;
        };
        if let Err(message) = check_ace(text) {
            ctx.error(ace, "appspec.acls", message, "write entries like `u:alice:rwx` or `d:g:staff:r-x`");
        }
    }
}

/// `AceInfo#initialize`.
fn check_ace(ace: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "The deployment failed because of a problem with the acls permission settings in the application specification file. Invalid acl entry ({ace})."
        )
    };
    let parts: Vec<&str> = ace.split(':').rev().collect();
    if !(2..=4).contains(&parts.len()) {
        return Err(invalid());
    }
    let mut default = false;
    let mut kind: Option<&str> = None;
    let mut name = "";
    if parts.len() == 4 {
        if !matches!(parts[3], "d" | "default") {
            return Err(invalid());
        }
        default = true;
    }
    if parts.len() >= 3 {
        kind = match parts[2] {
            "d" | "default" => {
                if default {
                    return Err(invalid());
                }
                default = true;
                None
            }
            "m" | "mask" => Some("mask"),
            "o" | "other" => Some("other"),
            "g" | "group" => Some("group"),
            "u" | "user" => Some("user"),
            _ => return Err(invalid()),
        };
    }
    match parts[1] {
        "m" | "mask" => match kind {
            None => kind = Some("mask"),
            Some(_) => name = "mask",
        },
        "o" | "other" => match kind {
            None => kind = Some("other"),
            Some(_) => name = "other",
        },
        other => {
            kind.get_or_insert("user");
            name = other;
        }
    }
    let kind = kind.unwrap_or("user");
    if matches!(kind, "mask" | "other") && !name.is_empty() {
        return Err(invalid());
    }
    if !default && kind != "mask" && name.is_empty() {
        return Err(format!(
            "The deployment failed because of a problem with the acls permission settings in the application specification file. Use mode to set the base acl entry ({ace}). Update the permissions section of the AppSpec file, and then try again."
        ));
    }
    let perms = parts[0];
    if perms.len() == 1 && perms.as_bytes()[0].is_ascii_digit() && perms.as_bytes()[0] <= b'7' {
        return Ok(());
    }
    if let Some(bad) = perms.chars().find(|c| !matches!(c, 'r' | 'w' | 'x' | '-')) {
        return Err(format!(
            "The deployment failed because the access control list (ACL) named {ace} in the application specification file contains an invalid character ({bad}). Correct the ACL in the hooks section of the AppSpec file, and then try again."
        ));
    }
    Ok(())
}

fn check_context(context: &Node, ctx: &mut Ctx) {
    ctx.warn(context, "appspec.context-local", "codedeploy-local crashes on any context entry (NameError: uninitialized constant ContextInfo); only the daemon handles them", "test this revision with the daemon, not codedeploy-local");
    let invalid_type = format!(
        "The deployment failed because the application specification file specifies an invalid context type ({}). Update the permissions section of the AppSpec file, and then try again.",
        context.ruby_inspect()
    );
    let fix = "write `context:` as a mapping with `type`";
    match &context.value {
        Value::Map(_) => {
            if context.get("type").is_none_or(Node::is_null) {
                ctx.error(
                    context,
                    "appspec.context",
                    invalid_type,
                    "add `type:` (an SELinux type such as httpd_sys_content_t)",
                );
            }
        }
        // `"text"['type']` is nil: the agent's own message.
        Value::Str(_) | Value::Symbol(_) => {
            ctx.error(context, "appspec.context", invalid_type, fix);
            return;
        }
        Value::Int(_) | Value::Seq(_) => {
            ctx.crash(
                context,
                "appspec.context",
                "TypeError: no implicit conversion of String into Integer".into(),
                fix,
            );
            return;
        }
        _ => {
            ctx.crash(context, "appspec.context", no_method("[]", context), fix);
            return;
        }
    }
    if let Some(range) = context.get("range").filter(|r| !r.is_null()) {
        let text = range.ruby_to_s();
        if let Err(message) = check_range(&text) {
            ctx.error(range, "appspec.context", message, "write a range like s0-s2:c0.c3,c7");
        }
    }
}

/// `RangeInfo#initialize`.
fn check_range(range: &str) -> Result<(), String> {
    fn parts(input: &str, on: char) -> Result<Vec<&str>, String> {
        let parts: Vec<&str> = input.splitn(2, on).collect();
        let want = if input.contains(on) { 2 } else { 1 };
        if parts.len() != want || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("invalid range part {input}"));
        }
        Ok(parts)
    }
    fn number(text: &str, prefix: char, what: &str) -> Result<u64, String> {
        let bad = || format!("invalid {what} {text}");
        if text.chars().count() < 2 || !text.starts_with(prefix) {
            return Err(bad());
        }
        let digits = text.replacen(prefix, "", 1);
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse().map_err(|_| bad())
    }
    let top = parts(range, ':')?;
    let sens = parts(top[0], '-')?;
    let low = number(sens[0], 's', "sensitivity")?;
    if sens.len() == 2 && number(sens[1], 's', "sensitivity")? < low {
        return Err(format!(
            "The deployment failed because of a problem with the SELinux range specified ({range}) for the context parameter in the permissions section of the application specification file. Make corrections in the permissions section of the AppSpec file, and then try again."
        ));
    }
    if top.len() == 2 {
        let mut categories = Vec::new();
        for part in top[1].split(',') {
            let category = |c: &str| -> Result<u64, String> {
                let n = number(c, 'c', "category")?;
                if n > 1023 { Err(format!("invalid category {c}")) } else { Ok(n) }
            };
            if part.contains('.') {
                let ends = parts(part, '.')?;
                let (lo, hi) = (category(ends[0])?, category(ends[1])?);
                if hi < lo {
                    return Err(format!("invalid category range {}.{}", ends[0], ends[1]));
                }
                categories.extend(lo..=hi);
            } else {
                categories.push(category(part)?);
            }
        }
        let n = categories.len();
        categories.sort_unstable();
        categories.dedup();
        if categories.len() != n {
            return Err("duplicate categories".into());
        }
    }
    Ok(())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&'static str> {
        validate(text).findings.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn our_rendered_appspec_is_clean() {
        let text = "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n  - location: bin/deploy-hook\n    timeout: 900\n";
        let v = validate(text);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.spec.scripts.len(), 1);
        assert_eq!(v.spec.scripts[0].timeout, 900);
    }

    #[test]
    fn agent_messages_are_quoted() {
        let v = validate("version: '0.0'\nos: linux\n");
        assert_eq!(v.findings[0].message, version_message("0.0"));
        assert_eq!((v.findings[0].line, v.findings[0].col), (Some(1), Some(10)));
        assert_eq!(rules("version: 0.0\nos: Linux\n"), ["appspec.os"]);
    }

    #[test]
    fn acl_and_range_rules() {
        assert!(check_ace("u:alice:rwx").is_ok());
        assert!(check_ace("d:g:staff:r-x").is_ok());
        assert!(check_ace("m::rw").is_ok());
        assert!(check_ace("u::rwx").unwrap_err().contains("Use mode"));
        assert!(check_ace("x:alice:rwx").unwrap_err().contains("Invalid acl entry"));
        assert!(check_ace("u:alice:rwz").unwrap_err().contains("invalid character (z)"));
        assert!(check_range("s0-s2:c0.c3,c7").is_ok());
        assert!(check_range("s2-s0").is_err());
        assert_eq!(check_range("s0:c1,c1").unwrap_err(), "duplicate categories");
        assert_eq!(check_range("s0:c1024").unwrap_err(), "invalid category c1024");
    }
}
