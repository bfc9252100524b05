//! The agent's Install step, modelled against a revision read in memory: the copy and mkdir
//! instructions it builds from `files:` and the permission commands it builds from
//! `permissions:`, with every condition under which that step raises (aws-codedeploy-agent 1.8.1,
//! `installer.rb`, `install_instruction.rb`, `application_specification/linux_permission_info.rb`;
//! docs/codedeploy-agent.md lists them with their source lines).
//!
//! What exists on the instance is unknown here, so the model is a first deployment to an empty
//! destination (every missing ancestor is created), and instance paths are expanded against `/`,
//! the agent's working directory under systemd. Conditions that depend on the instance are
//! warnings that say so.

use std::collections::{BTreeMap, BTreeSet};

use appspec::{
    diag::{Finding, Severity},
    validate::{APPSPEC_FILE, FileMapping, Permission, Spec},
};

use crate::reader::{Item, Kind, Revision};

/// Symlinks the kernel follows in one path lookup (MAXSYMLINKS); past them `File.directory?`
/// is false (ELOOP) and the agent copies the link itself.
const MAX_SYMLINKS: usize = 40;

/// Instructions planned before the model gives up: symlinks to directories above them multiply
/// the tree the agent copies.
const MAX_INSTRUCTIONS: usize = 1_000_000;

/// Directories stock Linux images ship with files in: a DISALLOW copy into them fails when the
/// file is there already.
const PREPOPULATED: [&str; 10] = [
    "/",
    "/etc",
    "/etc/nginx",
    "/etc/nginx/conf.d",
    "/etc/httpd/conf.d",
    "/usr/bin",
    "/usr/local/bin",
    "/usr/share/nginx/html",
    "/var/www/html",
    "/etc/systemd/system",
];

/// What a `files:` source is, as `File.directory?` (which follows symlinks) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    /// The revision root (`source: /`, `.`, `./`, `a/..`).
    Root,
    /// An item, by its real path after symlinks.
    Item(String, &'a Item),
    /// Nothing there: the copy fails with ENOENT.
    Missing,
}

/// Resolves a `files:` source as `File.join(deployment_archive, source)` does, then the kernel.
pub fn resolve_source<'a>(revision: &'a Revision, source: &str) -> Source<'a> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Source::Missing;
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Source::Root;
    }
    match revision.resolve(&parts.join("/")) {
        Some((real, item)) => Source::Item(real, item),
        None => Source::Missing,
    }
}

/// Ruby's `File.expand_path` of an instance path with `/` as the working directory.
pub fn expand(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), name.trim_start_matches('/'))
}

/// The instructions the agent's `CommandBuilder` collects, and what raised while building them.
#[derive(Debug, Default)]
pub struct Plan {
    /// Copy targets (expanded) and the source shown for each.
    pub copies: BTreeMap<String, String>,
    /// Directories the agent creates.
    pub mkdirs: BTreeSet<String>,
    /// Objects permissions were set on.
    pub permission_targets: BTreeSet<String>,
    /// Every finding of the step.
    pub findings: Vec<Finding>,
}

struct Builder<'a> {
    revision: &'a Revision,
    plan: Plan,
    /// The entry being planned, for positions.
    at: (usize, usize),
    /// One raise per entry: the agent stops at the first.
    raised: bool,
    /// Copies and mkdirs planned so far.
    instructions: usize,
    /// The symlink loop reported, once.
    looped: bool,
}

impl Builder<'_> {
    fn raise(&mut self, rule: &'static str, message: String, fix: &str) {
        if self.raised {
            return;
        }
        self.raised = true;
        self.plan.findings.push(
            Finding::file(APPSPEC_FILE, rule, Severity::Error, format!("{message} (fails at Install)"), fix)
                .at(self.at.0, self.at.1),
        );
    }

    /// `CommandBuilder#copy`.
    fn copy(&mut self, source: &str, destination: &str) {
        self.instructions += 1;
        let destination = expand(destination);
        if let Some(first) = self.plan.copies.get(&destination) {
            let message = format!(
                "The deployment failed because the application specification file specifies two source files named {source} and {first} for the same destination ({destination}). Remove one of the source file paths from the AppSpec file, and then try again."
            );
            self.raise(
                "install.duplicate-destination",
                message,
                "map each destination file from one source only",
            );
            return;
        }
        if self.plan.mkdirs.contains(&destination) {
            let message = format!(
                "The deployment failed because the application specification file calls for installing the file {source}, but a file with that name already exists at the location ({destination}). Update your AppSpec file or directory structure, and then try again."
            );
            self.raise(
                "install.file-over-directory",
                message,
                "do not install a file where another entry creates a directory",
            );
            return;
        }
        self.plan.copies.insert(destination, source.to_owned());
    }

    /// `CommandBuilder#mkdir`.
    fn mkdir(&mut self, destination: &str) {
        let destination = expand(destination);
        if let Some(from) = self.plan.copies.get(&destination) {
            let message = format!(
                "The deployment failed because the application specification file includes an mkdir command more than once for the same destination path ({destination}) from ({from}). Update the files section of the AppSpec file, and then try again."
            );
            self.raise(
                "install.directory-over-file",
                message,
                "do not create a directory where another entry installs a file",
            );
            return;
        }
        self.plan.mkdirs.insert(destination);
    }

    /// `Installer#fill_in_missing_ancestors`, on an empty destination.
    fn ancestors(&mut self, destination: &str) {
        let mut missing = Vec::new();
        let mut dir = parent(&expand(destination)).to_owned();
        while dir != "/" {
            missing.push(dir.clone());
            dir = parent(&dir).to_owned();
        }
        for dir in missing.iter().rev() {
            self.mkdir(dir);
        }
    }

    /// `Installer#generate_directory_copy`: `real` is the directory's path in the revision
    /// (empty for the root), `shown` the source path as the agent names it.
    fn copy_dir(&mut self, real: &str, shown: &str, destination: &str, hops: usize) {
        self.instructions += 1;
        if self.instructions > MAX_INSTRUCTIONS {
            self.raise(
                "install.too-large",
                format!("the Install step would copy more than {MAX_INSTRUCTIONS} files and directories: the agent follows symlinks to directories, and links to a directory above them copy the tree over and over"),
                "remove the symlinks to directories above them, or install less",
            );
            return;
        }
        self.mkdir(destination);
        let revision = self.revision;
        let prefix = if real.is_empty() { String::new() } else { format!("{real}/") };
        let children: Vec<(&String, &Item)> = revision
            .items
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .collect();
        for (path, item) in children {
            if self.raised {
                return;
            }
            let name = &path[prefix.len()..];
            let child_shown = join(shown, name);
            let child_dest = join(destination, name);
            match &item.kind {
                Kind::Dir => self.copy_dir(path, &child_shown, &child_dest, hops),
                Kind::Symlink { target } => {
                    let linked = format!("{}/{target}", parent(&format!("/{path}")));
                    let dir = match resolve_source(revision, &linked) {
                        Source::Root => Some(String::new()),
                        Source::Item(real, Item { kind: Kind::Dir, .. }) => Some(real),
                        _ => None,
                    };
                    match dir {
                        Some(dir) if hops < MAX_SYMLINKS => {
                            if (dir.is_empty() || path.starts_with(&format!("{dir}/"))) && !self.looped {
                                self.looped = true;
                                let finding = Finding::file(
                                    APPSPEC_FILE,
                                    "install.symlink-loop",
                                    Severity::Error,
                                    format!("{child_shown} links to a directory above it: the agent follows it and copies the tree into itself {MAX_SYMLINKS} levels deep"),
                                    "do not ship a symlink to a directory that holds it, or keep it out of files:",
                                )
                                .at(self.at.0, self.at.1)
                                .accepted();
                                self.plan.findings.push(finding);
                            }
                            self.copy_dir(&dir, &child_shown, &child_dest, hops + 1)
                        }
                        _ => self.copy(&child_shown, &child_dest),
                    }
                }
                Kind::File { .. } => self.copy(&child_shown, &child_dest),
            }
        }
    }

    fn files(&mut self, mapping: &FileMapping) {
        self.at = (mapping.line, mapping.col);
        self.raised = false;
        let shown = join("<deployment-archive>", &mapping.source);
        match resolve_source(self.revision, &mapping.source) {
            Source::Root => {
                self.ancestors(&mapping.destination);
                self.copy_dir("", "<deployment-archive>", &mapping.destination, 0);
            }
            Source::Item(real, Item { kind: Kind::Dir, .. }) => {
                self.ancestors(&mapping.destination);
                self.copy_dir(&real, &shown, &mapping.destination, 0);
            }
            _ => {
                let base = mapping.source.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                let target = join(&mapping.destination, base);
                let dest_name = expand(&mapping.destination).rsplit('/').next().unwrap_or("").to_owned();
                if !base.is_empty() && dest_name == base {
                    // `destination` is always a directory: no renaming, and no file of that name.
                    let finding = Finding::file(
                        APPSPEC_FILE,
                        "install.destination-is-directory",
                        Severity::Error,
                        format!(
                            "destination {} is a directory to the agent: the file is installed as {}, not as {}, and if a file {} exists there the copy fails",
                            mapping.destination,
                            expand(&target),
                            expand(&mapping.destination),
                            expand(&mapping.destination)
                        ),
                        "give the directory as destination (the file keeps its name)",
                    )
                    .at(mapping.line, mapping.col)
                    .accepted();
                    self.plan.findings.push(finding);
                }
                self.ancestors(&target);
                self.copy(&shown, &target);
            }
        }
    }

    fn permission(&mut self, permission: &Permission) {
        self.at = (permission.line, permission.col);
        self.raised = false;
        let object = expand(&permission.object);
        let files = permission.types.iter().any(|t| t == "file");
        if self.plan.copies.contains_key(&object) {
            if !files {
                return;
            }
            if permission.pattern != "**" {
                self.raise(
                    "install.permission-pattern",
                    format!(
                        "The deployment failed because the application specification file includes an object ({}) with an invalid pattern ({}), such as a pattern for a file applied to a directory. Correct the permissions section of the AppSpec file, and then try again.",
                        permission.object, permission.pattern
                    ),
                    "remove `pattern` from a permission whose object is a file",
                );
                return;
            }
            if !permission.except.is_empty() {
                self.raise(
                    "install.permission-except",
                    format!(
                        "The deployment failed because the except parameter for a pattern in the permissions section ({}) for the object named {} contains an invalid format. Update the AppSpec file, and then try again.",
                        ruby_array(&permission.except),
                        permission.object
                    ),
                    "remove `except` from a permission whose object is a file",
                );
                return;
            }
            if permission.default_acl {
                self.raise_default_acl();
                return;
            }
            self.set_permissions(&object);
            return;
        }
        // The object is a directory the agent creates, or one that holds what it installs (so it
        // exists on the instance); anything else matches nothing.
        let base = if object == "/" { "/".to_owned() } else { format!("{object}/") };
        let below = |path: &String| path.starts_with(&base);
        if !self.plan.mkdirs.contains(&object)
            && !self.plan.copies.keys().any(below)
            && !self.plan.mkdirs.iter().any(below)
        {
            return;
        }
        let mut matches = Vec::new();
        if files {
            for path in self.plan.copies.keys().filter(|p| below(p)) {
                if matches_pattern(&base, path, permission) {
                    if permission.default_acl {
                        self.raise_default_acl();
                        return;
                    }
                    matches.push(path.clone());
                }
            }
        }
        if permission.types.iter().any(|t| t == "directory") {
            for path in self.plan.mkdirs.iter().filter(|p| below(p)) {
                if matches_pattern(&base, path, permission) {
                    matches.push(path.clone());
                }
            }
        }
        for path in matches {
            self.set_permissions(&path);
            if self.raised {
                return;
            }
        }
    }

    fn raise_default_acl(&mut self) {
        self.raise(
            "install.default-acl-on-file",
            "The deployment failed because the -d parameter has been specified to apply an acl setting to a file. This parameter is supported for directories only. Update the AppSpec file, and then try again.".to_owned(),
            "give default (d:) acl entries only to directories: set `type: [directory]`",
        );
    }

    /// `CommandBuilder#set_permissions`.
    fn set_permissions(&mut self, object: &str) {
        if !self.plan.permission_targets.insert(object.to_owned()) {
            self.raise(
                "install.permission-twice",
                format!(
                    "The deployment failed because the permissions setting for ({object}) is specified more than once in the application specification file. Update the files section of the AppSpec file, and then try again."
                ),
                "give each installed path permissions from one entry only (narrow `pattern`, add `except`, or split by `type`)",
            );
        }
    }
}

fn ruby_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `LinuxPermissionInfo#matches_pattern? && !matches_except?`.
fn matches_pattern(base: &str, path: &str, permission: &Permission) -> bool {
    let Some(rel) = path.strip_prefix(base) else { return false };
    let pattern = permission.pattern == "**" || simple_glob(rel, &permission.pattern);
    pattern && !permission.except.iter().any(|e| simple_glob(rel, e))
}

/// `matches_simple_glob`: `*` matches any run of characters; a name with `/` never matches.
fn simple_glob(name: &str, pattern: &str) -> bool {
    if name.contains('/') {
        return false;
    }
    let (name, pattern): (Vec<char>, Vec<char>) = (name.chars().collect(), pattern.chars().collect());
    let (mut n, mut p, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            n += 1;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Plans the Install step of `spec` against `revision` and reports every condition under which
/// the agent raises there.
pub fn plan(revision: &Revision, spec: &Spec) -> Plan {
    let mut b = Builder {
        revision,
        plan: Plan::default(),
        at: (1, 1),
        raised: false,
        instructions: 0,
        looped: false,
    };
    for mapping in &spec.files {
        b.files(mapping);
    }
    for permission in &spec.permissions {
        b.permission(permission);
    }
    let disallow = spec.file_exists_behavior.as_deref().is_none_or(|f| f == "DISALLOW");
    if disallow {
        for mapping in &spec.files {
            let dest = expand(&mapping.destination);
            let Some(target) = b.plan.copies.keys().find(|c| {
                let dir = parent(c);
                PREPOPULATED.contains(&dir) && (dir == dest || c.starts_with(&format!("{dest}/")))
            }) else {
                continue;
            };
            b.plan.findings.push(
                Finding::file(
                    APPSPEC_FILE,
                    "install.file-exists",
                    Severity::Warning,
                    format!(
                        "files: installs {target} into {}, a directory that holds files on stock images: with file_exists_behavior DISALLOW (the default) the agent fails with \"The deployment failed because a specified file already exists at this location: <path>\" when the instance has that file and the previous deployment of the group did not install it; this depends on the instance",
                        parent(target)
                    ),
                    "install into a directory of your own, or set `file_exists_behavior: OVERWRITE` if replacing it is intended",
                )
                .at(mapping.line, mapping.col)
                .fails(),
            );
        }
    }
    b.plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_ruby_expands_them() {
        assert_eq!(expand("/var/www/"), "/var/www");
        assert_eq!(expand("app/../srv"), "/srv");
        assert_eq!(expand("/"), "/");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(join("/var/www/", "/a"), "/var/www/a");
    }

    #[test]
    fn the_agents_simple_glob() {
        assert!(simple_glob("app.conf", "*.conf"));
        assert!(simple_glob("a", "*"));
        assert!(simple_glob("abcabd", "*abd"));
        assert!(!simple_glob("a/b.conf", "*.conf"));
        assert!(!simple_glob("app.txt", "*.conf"));
        assert!(simple_glob("x", "x**"));
    }
}
