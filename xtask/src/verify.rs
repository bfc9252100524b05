//! `cargo xtask verify PATH`: checks a CodeDeploy EC2/on-prem revision the way the agent and the
//! instance will read it, and reports every finding with its file, position, rule and fix.
//!
//! 1. The archive ([`packaging::reader`]): integrity, paths, entry types, caps, layout.
//! 2. appspec.yml ([`appspec::validate`]): YAML 1.1 as Ruby reads it, then the agent's rules.
//! 3. Against the archive: hook scripts and binaries, `files:` sources.
//! 4. When the revision is ours (deploy/MANIFEST): manifest, release.yaml, unit, hypercorn.toml,
//!    requirements.
//! 5. With `--rehearse`, when 1-4 found no errors and the revision is ours: the whole lifecycle in
//!    a sandbox ([`crate::rehearse`]).

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, ExitCode},
};

use appspec::diag::{Finding, Severity};
use packaging::{
    Manifest, ManifestError, Release,
    bundle::Arch,
    inspect, install, layout,
    manifest::{self, ManifestEntry},
    reader::{self, Item, Kind, Limits, Revision},
};

use crate::{
    elf::{ElfInfo, machine_name},
    find_in_path, flags, rehearse,
};

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The instances' architecture; default: deploy/release.yaml's `arch`.
    pub arch: Option<Arch>,
    /// Caps on the input.
    pub limits: Limits,
    /// Run `systemd-analyze verify` on the unit when the tool exists.
    pub systemd_analyze: bool,
}

/// What `verify` found.
#[derive(Debug)]
pub struct Report {
    /// Every finding, in the order of the checks.
    pub findings: Vec<Finding>,
    /// The top-level directory the agent strips, if any.
    pub stripped: Option<String>,
    /// True when the revision carries deploy/MANIFEST.
    pub ours: bool,
    /// Number of files in the revision.
    pub files: usize,
    /// The unit's `systemd-analyze security --offline=true` exposure, when the tool exists.
    pub exposure: Option<f64>,
}

impl Report {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_error()).count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Warning).count()
    }

    /// Number of notes.
    pub fn notes(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Note).count()
    }

    /// Number of errors the deployment fails on (the rest are traps the agent accepts).
    pub fn failing_errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_error() && f.agent_fails()).count()
    }

    /// One finding per line, then a summary line.
    pub fn render_human(&self, input: &str) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            out.push_str(&finding.to_string());
            out.push('\n');
        }
        let verdict = if self.errors() == 0 { "ok" } else { "FAILED" };
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let errors = match (self.failing_errors(), self.errors() - self.failing_errors()) {
            (0, 0) => plural(0, "error"),
            (fails, 0) => format!("{} the deployment fails on", plural(fails, "error")),
            (0, traps) => format!("{} the agent accepts (traps)", plural(traps, "error")),
            (fails, traps) => format!(
                "{} ({fails} the deployment fails on, {traps} the agent accepts: traps)",
                plural(fails + traps, "error")
            ),
        };
        out.push_str(&format!(
            "verify {input}: {verdict}: {errors}, {}, {} ({}{}{})\n",
            plural(self.warnings(), "warning"),
            plural(self.notes(), "note"),
            plural(self.files, "file"),
            match (&self.stripped, self.ours) {
                (Some(dir), true) => format!(", ours, in {dir}/"),
                (Some(dir), false) => format!(", in {dir}/"),
                (None, true) => ", ours".to_owned(),
                (None, false) => String::new(),
            },
            // systemd-analyze security --offline=true: 0 is the best, 10 the worst.
            self.exposure.map(|e| format!(", unit exposure {e:.1}")).unwrap_or_default(),
        ));
        out
    }

    /// The findings as a JSON array.
    pub fn render_json(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "file": f.file,
                    "line": f.line,
                    "column": f.col,
                    "rule": f.rule,
                    "severity": f.severity.as_str(),
                    "agent": f.agent.as_str(),
                    "message": f.message,
                    "fix": f.fix,
                })
            })
            .collect();
        serde_json::to_string_pretty(&items).expect("findings serialize")
    }
}

impl flags::Verify {
    /// Runs the command; the exit code is 0 (no errors), 1 (errors) or 2 (could not run).
    pub(crate) fn run(self) -> ExitCode {
        if self.rehearse_janitor {
            return rehearse::janitor(&self.path);
        }
        let options = Options {
            arch: self.arch.map(|a| match a {
                flags::Arch::X86_64 => Arch::X86_64,
                flags::Arch::Aarch64 => Arch::Aarch64,
            }),
            limits: Limits { max_expanded: self.max_expanded, ..Limits::default() },
            systemd_analyze: true,
        };
        let report = match verify(&self.path, &options) {
            Ok(report) => report,
            Err(err) => {
                eprintln!("error: cannot verify {}: {err}", self.path.display());
                return ExitCode::from(2);
            }
        };
        let input = self.path.display().to_string();
        if !self.rehearse {
            if self.json {
                println!("{}", report.render_json());
            } else {
                print!("{}", report.render_human(&input));
            }
            return if report.errors() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) };
        }
        self.rehearse(report, &input)
    }

    /// `--rehearse`: the static report, then, when it has no errors and the revision is ours,
    /// the lifecycle in a sandbox. With `--json` the output is one object, `findings` (the
    /// static ones and the rehearsal's) and `rehearsal`, and progress lines go to stderr.
    fn rehearse(&self, mut report: Report, input: &str) -> ExitCode {
        let skip = |report: &Report, reason: String, code: u8| {
            if self.json {
                println!("{}", render_json_with(report, skipped_json(&reason)));
            } else {
                print!("{}", report.render_human(input));
                println!("rehearse {input}: skipped: {reason}");
            }
            ExitCode::from(code)
        };
        if report.errors() > 0 {
            let n = report.errors();
            return skip(
                &report,
                format!("the static checks found {n} error{}", if n == 1 { "" } else { "s" }),
                1,
            );
        }
        if !report.ours {
            eprintln!(
                "error: cannot rehearse {input}: the rehearsal needs one of our revisions (deploy/MANIFEST and deploy/release.yaml, as `cargo xtask bundle` writes them)"
            );
            return skip(&report, "not one of our revisions".into(), 2);
        }
        if !self.json {
            print!("{}", report.render_human(input));
        }
        let json = self.json;
        let mut say = |line: &str| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        let rehearsal = match rehearse::rehearse(&self.path, report.stripped.as_deref(), &mut say) {
            Ok(rehearsal) => rehearsal,
            Err(err) => {
                eprintln!("error: cannot rehearse {input}: {err:#}");
                if json {
                    println!("{}", render_json_with(&report, skipped_json(&format!("{err:#}"))));
                }
                return ExitCode::from(2);
            }
        };
        report.findings.extend(rehearsal.findings.iter().cloned());
        if json {
            println!("{}", render_json_with(&report, rehearsal.to_json()));
        } else {
            for finding in &rehearsal.findings {
                println!("{finding}");
            }
            let events = rehearsal.steps.iter().filter(|s| s.ok).count();
            let hooks: f64 = rehearsal.steps.iter().map(|s| s.seconds).sum();
            let verdict = match rehearsal.steps.iter().find(|s| !s.ok) {
                Some(failed) => format!("FAILED at {}", failed.event),
                None if rehearsal.ok() => "ok".to_owned(),
                None => "FAILED in the cleanup".to_owned(),
            };
            println!(
                "rehearse {input}: {verdict}: {events} of {} events passed in {hooks:.2}s, {:.2}s in all",
                appspec::LifecycleEvent::IN_PLACE.len(),
                rehearsal.seconds
            );
        }
        if report.errors() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
    }
}

fn skipped_json(reason: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "skipped": reason, "seconds": 0.0, "sandbox": null, "steps": [] })
}

/// `{"findings": [...], "rehearsal": {...}}`: the JSON of `verify --rehearse --json`.
fn render_json_with(report: &Report, rehearsal: serde_json::Value) -> String {
    let findings: serde_json::Value = serde_json::from_str(&report.render_json()).expect("findings are JSON");
    serde_json::to_string_pretty(&serde_json::json!({ "findings": findings, "rehearsal": rehearsal }))
        .expect("the report serializes")
}

/// Verifies the revision at `path`. An error means the input could not be read at all.
pub fn verify(path: &Path, options: &Options) -> Result<Report, reader::ReadError> {
    let revision = reader::read(path, &options.limits)?;
    let mut findings = revision.findings.clone();
    let ours = revision.items.contains_key(layout::MANIFEST);

    // Ours first for release.yaml, whose arch the hook check needs.
    let mut release = None;
    if ours {
        release = check_release(&revision, &mut findings);
    }
    let arch = options.arch.or_else(|| release.as_ref().and_then(|r: &Release| Arch::from_name(&r.arch)));

    if let Some(Item { kind: Kind::File { .. } | Kind::Symlink { .. }, .. }) =
        revision.resolve(layout::APPSPEC).map(|(_, item)| item)
    {
        match revision.data(layout::APPSPEC).map(std::str::from_utf8) {
            None => findings.push(Finding::file(
                layout::APPSPEC,
                "appspec.unreadable",
                Severity::Error,
                "appspec.yml is too large to read",
                "keep appspec.yml small",
            )),
            Some(Err(_)) => findings.push(Finding::file(
                layout::APPSPEC,
                "appspec.encoding",
                Severity::Error,
                "appspec.yml is not valid UTF-8",
                "save it as UTF-8",
            )),
            Some(Ok(text)) => {
                let validation = appspec::validate::validate(text);
                findings.extend(validation.findings.iter().cloned());
                check_hooks(&revision, &validation.spec, arch, &mut findings);
                check_file_sources(&revision, &validation.spec, &mut findings);
                if let (true, Some(release), false) = (ours, &release, validation.has_errors()) {
                    check_our_appspec(&validation.spec, release, &mut findings);
                }
            }
        }
    }

    let mut exposure = None;
    if ours {
        check_manifest(&revision, &mut findings);
        if let Some(release) = &release {
            exposure = check_ours(&revision, release, options, &mut findings);
        }
    }
    let files = revision.items.values().filter(|i| !matches!(i.kind, Kind::Dir)).count();
    Ok(Report { findings, stripped: revision.stripped.clone(), ours, files, exposure })
}

fn at(
    file: &str,
    line: usize,
    col: usize,
    rule: &'static str,
    severity: Severity,
    message: String,
    fix: &str,
) -> Finding {
    Finding::file(file, rule, severity, message, fix).at(line, col)
}

fn check_hooks(
    revision: &Revision,
    spec: &appspec::validate::Spec,
    arch: Option<Arch>,
    findings: &mut Vec<Finding>,
) {
    let mut seen = BTreeSet::new();
    for script in &spec.scripts {
        let location = script.location.trim_start_matches('/');
        if script.location.contains(char::is_whitespace) || !seen.insert(location.to_owned()) {
            continue;
        }
        let (line, col) = (script.line, script.col);
        let Some((real, item)) = revision.resolve(location) else {
            findings.push(at(
                layout::APPSPEC,
                line,
                col,
                "hook.missing",
                Severity::Error,
                format!(
                    "Script does not exist at specified location: <deployment-archive>/{location} ({} fails)",
                    script.event
                ),
                "ship the script at that path, or fix `location`",
            ));
            continue;
        };
        let Kind::File { data, .. } = &item.kind else {
            findings.push(at(
                layout::APPSPEC,
                line,
                col,
                "hook.not-file",
                Severity::Error,
                format!("{location} is a directory, not a script"),
                "point `location` at a file",
            ));
            continue;
        };
        if item.mode & 0o111 == 0 {
            findings.push(Finding::file(
                &real,
                "hook.not-executable",
                Severity::Warning,
                format!("Script at specified location: {location} is not executable.  Trying to make it executable. (the agent's warning; it fails if the chmod does)"),
                "ship it with mode 0755",
            ));
        }
        let Some(data) = data else {
            findings.push(Finding::file(
                &real,
                "hook.unreadable",
                Severity::Warning,
                "too large to inspect".to_owned(),
                "ship a smaller hook",
            ));
            continue;
        };
        if data.starts_with(b"\x7fELF") {
            check_elf(&real, data, arch, findings);
        } else {
            check_script(&real, data, findings);
        }
    }
}

fn check_elf(file: &str, data: &[u8], arch: Option<Arch>, findings: &mut Vec<Finding>) {
    let elf = match ElfInfo::parse(data) {
        Ok(elf) => elf,
        Err(e) => {
            findings.push(Finding::file(
                file,
                "hook.elf",
                Severity::Error,
                format!("not a readable ELF file: {e}"),
                "rebuild the hook",
            ));
            return;
        }
    };
    if let Some(interp) = &elf.interpreter {
        findings.push(Finding::file(
            file,
            "hook.elf-dynamic",
            Severity::Error,
            format!("dynamically linked (program interpreter {interp}): it fails on instances without that loader and libc"),
            "build it static, for a musl target (cargo xtask bundle does)",
        ));
    }
    if !elf.libraries.is_empty() {
        findings.push(Finding::file(
            file,
            "hook.elf-dynamic",
            Severity::Error,
            format!("needs shared libraries: {}", elf.libraries.join(", ")),
            "build it static, for a musl target (cargo xtask bundle does)",
        ));
    }
    let machine = elf.machine;
    match arch {
        Some(arch) if arch.elf_machine() != machine => findings.push(Finding::file(
            file,
            "hook.elf-arch",
            Severity::Error,
            format!(
                "an {} binary, but the instances are {}: it fails with \"Exec format error\"",
                machine_name(machine),
                arch.name()
            ),
            format!("build the hook for {} (cargo xtask bundle --target {})", arch.name(), arch.name()),
        )),
        Some(_) => {}
        None => findings.push(Finding::file(
            file,
            "hook.elf-arch",
            Severity::Warning,
            format!(
                "an {} binary; the instances' architecture is unknown, so it was not compared",
                machine_name(machine)
            ),
            "pass --arch x86_64 or --arch aarch64",
        )),
    }
}

fn check_script(file: &str, data: &[u8], findings: &mut Vec<Finding>) {
    if !data.starts_with(b"#!") {
        findings.push(Finding::file(
            file,
            "hook.shebang",
            Severity::Warning,
            "no `#!` line: the agent's exec fails with ENOEXEC and Ruby runs it with /bin/sh".to_owned(),
            "start the script with a shebang such as #!/bin/bash",
        ));
    }
    if let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let line = data[..pos].iter().filter(|b| **b == b'\n').count() + 1;
        let col = pos - data[..pos].iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
        findings.push(at(
            file,
            line,
            col,
            "hook.crlf",
            Severity::Error,
            "CRLF line endings: the kernel reads the interpreter as `…\\r` (\"bad interpreter\") and the shell sees `\\r` in every command".to_owned(),
            "convert the script to LF line endings (dos2unix)",
        ));
    }
}

fn check_file_sources(revision: &Revision, spec: &appspec::validate::Spec, findings: &mut Vec<Finding>) {
    for mapping in &spec.files {
        if install::resolve_source(revision, &mapping.source) == install::Source::Missing {
            let source = mapping.source.trim_start_matches('/');
            findings.push(at(
                layout::APPSPEC,
                mapping.line,
                mapping.col,
                "files.source-missing",
                Severity::Error,
                format!("Errno::ENOENT: No such file or directory @ rb_sysopen - <deployment-archive>/{source} (fails at Install)"),
                "ship the source, or fix `source`",
            ));
        }
    }
    findings.extend(install::plan(revision, spec).findings);
}

/// `(line, col)` out of serde_yaml's "at line L column C".
fn yaml_position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.rfind("at line ")? + 8..];
    let (line, rest) = rest.split_once(" column ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, col.parse().ok()?))
}

fn text_of<'a>(revision: &'a Revision, path: &str, findings: &mut Vec<Finding>) -> Option<&'a str> {
    let Some(data) = revision.data(path) else {
        findings.push(Finding::file(
            path,
            "ours.missing",
            Severity::Error,
            format!("{path} is missing or unreadable"),
            "rebuild the bundle with `cargo xtask bundle`",
        ));
        return None;
    };
    match std::str::from_utf8(data) {
        Ok(text) => Some(text),
        Err(_) => {
            findings.push(Finding::file(
                path,
                "ours.encoding",
                Severity::Error,
                "not valid UTF-8".to_owned(),
                "rebuild the bundle",
            ));
            None
        }
    }
}

fn check_release(revision: &Revision, findings: &mut Vec<Finding>) -> Option<Release> {
    let text = text_of(revision, layout::RELEASE_YAML, findings)?;
    match Release::parse(Path::new(layout::RELEASE_YAML), text) {
        Ok(release) => {
            if Arch::from_name(&release.arch).is_none() {
                findings.push(Finding::file(
                    layout::RELEASE_YAML,
                    "release.arch",
                    Severity::Error,
                    format!("arch {:?} is not x86_64 or aarch64", release.arch),
                    "set arch: x86_64 or arch: aarch64",
                ));
            }
            Some(release)
        }
        Err(e) => {
            let message = e.to_string();
            let message =
                message.strip_prefix(&format!("{}: ", layout::RELEASE_YAML)).unwrap_or(&message).to_owned();
            let mut f = Finding::file(
                layout::RELEASE_YAML,
                "release.syntax",
                Severity::Error,
                message.clone(),
                "rebuild the bundle with `cargo xtask bundle`",
            );
            if let Some((line, col)) = yaml_position(&message) {
                f = f.at(line, col);
            }
            findings.push(f);
            None
        }
    }
}

fn check_manifest(revision: &Revision, findings: &mut Vec<Finding>) {
    let Some(text) = text_of(revision, layout::MANIFEST, findings) else { return };
    let manifest = match Manifest::parse(text) {
        Ok(m) => m,
        Err(ManifestError::Syntax { line, message }) => {
            findings.push(at(
                layout::MANIFEST,
                line,
                1,
                "manifest.syntax",
                Severity::Error,
                message,
                "rebuild the bundle with `cargo xtask bundle`",
            ));
            return;
        }
        Err(e) => {
            findings.push(Finding::file(
                layout::MANIFEST,
                "manifest.syntax",
                Severity::Error,
                e.to_string(),
                "rebuild the bundle",
            ));
            return;
        }
    };
    let fix = "rebuild the bundle; a file changed after `cargo xtask bundle` wrote it";
    for (idx, entry) in manifest.entries.iter().enumerate() {
        let line = idx + 2;
        let mismatch = |message: String| {
            at(
                layout::MANIFEST,
                line,
                1,
                "manifest.mismatch",
                Severity::Error,
                format!("{}: {message}", entry.path),
                fix,
            )
        };
        let Some(item) = revision.items.get(&entry.path) else {
            findings.push(mismatch("listed in the manifest but missing".into()));
            continue;
        };
        if let Some(message) = compare(entry, item) {
            findings.push(mismatch(message));
        }
    }
    let listed: BTreeSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    for (path, item) in &revision.items {
        if !matches!(item.kind, Kind::Dir) && path != layout::MANIFEST && !listed.contains(path.as_str()) {
            findings.push(Finding::file(
                path,
                "manifest.unlisted",
                Severity::Error,
                "the file is not in deploy/MANIFEST".to_owned(),
                fix,
            ));
        }
    }
}

fn compare(entry: &ManifestEntry, item: &Item) -> Option<String> {
    let (mode, size, sha) = match &item.kind {
        Kind::Dir => return Some("a directory, the manifest lists a file".into()),
        Kind::Symlink { target } => {
            (manifest::SYMLINK, target.len() as u64, manifest::sha256_hex(target.as_bytes()))
        }
        Kind::File { size, sha256, .. } => (0o100000 | item.mode, *size, sha256.clone()),
    };
    let kind = |m: u32| (m & 0o170000, m & 0o100 != 0);
    if kind(mode) != kind(entry.mode) {
        return Some(format!("mode {mode:06o}, the manifest says {:06o}", entry.mode));
    }
    if size != entry.size {
        return Some(format!("size {size}, the manifest says {}", entry.size));
    }
    if sha != entry.sha256 {
        return Some(format!("sha256 {sha}, the manifest says {}", entry.sha256));
    }
    None
}

/// In our bundles every in-place event runs deploy-hook, and nothing is installed by `files:`
/// into the app root, where the next deployment's Install step would delete it.
fn check_our_appspec(spec: &appspec::validate::Spec, release: &Release, findings: &mut Vec<Finding>) {
    for event in appspec::LifecycleEvent::IN_PLACE {
        let runs_hook = spec
            .scripts
            .iter()
            .any(|s| s.event == event.name() && s.location.trim_start_matches('/') == layout::HOOK);
        if !runs_hook {
            findings.push(Finding::file(
                layout::APPSPEC,
                "ours.hooks",
                Severity::Warning,
                format!("{event} does not run {}: that step of the deployment is skipped", layout::HOOK),
                "rebuild the bundle with `cargo xtask bundle`",
            ));
        }
    }
    let root = format!("{}/", release.app_root);
    for mapping in &spec.files {
        let destination = format!("{}/", mapping.destination.trim_end_matches('/'));
        if destination.starts_with(&root) || root.starts_with(&destination) {
            findings.push(at(
                layout::APPSPEC,
                mapping.line,
                mapping.col,
                "ours.files",
                Severity::Error,
                format!(
                    "files: installs into {}, which holds the releases: the next deployment's Install step deletes what this one installed there",
                    mapping.destination
                ),
                "remove the files: entry; deploy-hook builds the release from the archive",
            )
            .accepted());
        }
    }
}

fn check_ours(
    revision: &Revision,
    release: &Release,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> Option<f64> {
    let unit_path = layout::unit(release.unit.as_str());
    let mut exposure = None;
    if let Some(text) = text_of(revision, &unit_path, findings) {
        findings.extend(inspect::unit(&unit_path, text, release));
        if options.systemd_analyze {
            // The socket unit the service requires sits next to it, as on the instance.
            let socket = release.socket_unit().and_then(|name| {
                let text = text_of(revision, &layout::unit(&name), findings)?;
                Some((name, text.to_owned()))
            });
            findings.extend(systemd_analyze(&unit_path, release.unit.as_str(), text, socket));
            exposure = crate::exposure::of_unit(release.unit.as_str(), text);
            if let Some(e) = exposure.filter(|e| *e > 3.0) {
                findings.push(Finding::file(
                    &unit_path,
                    "unit.exposure",
                    Severity::Warning,
                    format!("systemd-analyze security rates the unit's exposure {e:.1}, above 3.0"),
                    "keep the rendered sandboxing; relax only what the app needs in service.hardening",
                ));
            }
        }
    }
    if let Some(text) = text_of(revision, layout::HYPERCORN_TOML, findings) {
        findings.extend(inspect::hypercorn_toml(layout::HYPERCORN_TOML, text));
    }
    if let Some(text) = text_of(revision, layout::REQUIREMENTS, findings) {
        findings.extend(inspect::requirements(layout::REQUIREMENTS, text));
        check_vendored(revision, release, text, options, findings);
    }
    exposure
}

/// The vendored wheels (tags, hashes, listing) and `bin/uv` (a static ELF of the bundle's arch).
fn check_vendored(
    revision: &Revision,
    release: &Release,
    requirements: &str,
    options: &Options,
    findings: &mut Vec<Finding>,
) {
    let prefix = format!("{}/", layout::WHEELS);
    let wheels: Vec<(String, String)> = revision
        .items
        .keys()
        .filter_map(|path| path.strip_prefix(&prefix).map(|name| (path, name)))
        .filter_map(|(path, name)| {
            revision.data(path).map(|data| (name.to_owned(), packaging::manifest::sha256_hex(data)))
        })
        .collect();
    let arch = options.arch.or_else(|| Arch::from_name(&release.arch));
    let arch_name = arch.map_or_else(|| release.arch.clone(), |a| a.name().to_owned());
    findings.extend(inspect::wheels(release, &arch_name, requirements, &wheels));
    if release.wheels.is_none() {
        return;
    }
    let Some(data) = revision.data(layout::UV) else {
        findings.push(Finding::file(
            layout::UV,
            "uv.missing",
            Severity::Error,
            "dependencies: vendored, but the revision has no bin/uv",
            "bundle again with cargo xtask bundle",
        ));
        return;
    };
    // The MANIFEST names uv's version (hashed into the revision id); release.yaml records the
    // wheel it came from: both must agree.
    let recorded = revision
        .data(layout::MANIFEST)
        .and_then(|text| std::str::from_utf8(text).ok())
        .and_then(|text| Manifest::parse(text).ok())
        .and_then(|manifest| manifest.uv_version);
    let declared = release.wheels.as_ref().map(|w| w.uv_version.as_str());
    if recorded.as_deref() != declared {
        findings.push(Finding::file(
            layout::MANIFEST,
            "uv.version",
            Severity::Error,
            format!(
                "the MANIFEST records uv {} but release.yaml says uv_version {}",
                recorded.as_deref().unwrap_or("(none)"),
                declared.unwrap_or("(none)")
            ),
            "bundle again with cargo xtask bundle",
        ));
    }
    let mut found = Vec::new();
    check_elf(layout::UV, data, arch, &mut found);
    for mut finding in found {
        finding.rule = match finding.rule {
            "hook.elf" => "uv.elf",
            "hook.elf-dynamic" => "uv.elf-dynamic",
            "hook.elf-arch" => "uv.elf-arch",
            other => other,
        };
        finding.fix =
            "bundle again: cargo xtask bundle takes the static uv from uv's musllinux wheel for --target"
                .into();
        findings.push(finding);
    }
}

/// `systemd-analyze verify` on a copy of the unit, when the tool exists. Every line it prints is
/// a finding, except that ExecStart's interpreter does not exist here (the hook builds the venv on
/// the instance).
fn systemd_analyze(
    file: &str,
    unit_name: &str,
    text: &str,
    socket: Option<(String, String)>,
) -> Vec<Finding> {
    let Some(tool) = find_in_path("systemd-analyze") else { return Vec::new() };
    let Ok(dir) = tempfile::tempdir() else { return Vec::new() };
    let unit = dir.path().join(unit_name);
    if std::fs::write(&unit, text).is_err() {
        return Vec::new();
    }
    let mut units = vec![unit];
    if let Some((name, text)) = socket {
        units.push(dir.path().join(name));
        if std::fs::write(&units[1], text).is_err() {
            return Vec::new();
        }
    }
    let output = match Command::new(tool).arg("verify").arg("--man=no").args(&units).output() {
        Ok(output) => output,
        Err(_) => return Vec::new(),
    };
    let all =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    all.lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            !(line.contains("is not executable: No such file or directory") && line.contains("/venvs/"))
        })
        .map(|line| {
            let line = line.replace(&format!("{}/", dir.path().display()), "");
            // `NAME:LINE: message` points into the unit; other lines are about the whole unit.
            let at_line = line
                .strip_prefix(&format!("{unit_name}:"))
                .and_then(|rest| rest.split_once(": "))
                .and_then(|(n, message)| Some((n.parse::<usize>().ok()?, message.to_owned())));
            let finding = |message: &str| {
                Finding::file(
                    file,
                    "unit.systemd-analyze",
                    Severity::Error,
                    format!("systemd-analyze verify: {message}"),
                    "fix the unit so `systemd-analyze verify` prints nothing",
                )
            };
            match at_line {
                Some((n, message)) => finding(&message).at(n, 1),
                None => finding(&line),
            }
        })
        .collect()
}
