//! Findings: what a check found, where, under which rule, and how to fix it.

use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The deployment fails, or does something it should not.
    Error,
    /// The agent accepts it, but it is likely a mistake or will hurt later.
    Warning,
    /// Worth knowing, not a mistake: behaviour of the agent a reader may not expect.
    Note,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// What the CodeDeploy agent does with the thing a finding is about: the line between a
/// deployment that certainly fails and a trap the agent accepts silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Agent {
    /// The deployment fails (at validation, at Install, or in a hook).
    Fails,
    /// The agent accepts it, but it does not do what it says (or may hurt later).
    Accepts,
}

impl Agent {
    /// `fails` or `accepts`.
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Fails => "fails",
            Agent::Accepts => "accepts",
        }
    }
}

/// One finding of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file, relative to the revision root (or the input itself for archive findings).
    pub file: String,
    /// 1-based line, where one applies.
    pub line: Option<usize>,
    /// 1-based column, where one applies.
    pub col: Option<usize>,
    /// A stable rule id such as `appspec.version` or `archive.path-traversal`.
    pub rule: &'static str,
    /// Error, warning or note.
    pub severity: Severity,
    /// Whether the deployment fails on it or the agent accepts it; by default errors fail and
    /// the rest are accepted, [`Finding::accepted`] and [`Finding::fails`] say otherwise.
    pub agent: Agent,
    /// What is wrong; the agent's own message where it has one.
    pub message: String,
    /// A one-line fix.
    pub fix: String,
}

impl Finding {
    /// A finding about a whole file (no line).
    pub fn file(
        file: impl Into<String>,
        rule: &'static str,
        severity: Severity,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            file: file.into(),
            line: None,
            col: None,
            rule,
            severity,
            agent: if severity == Severity::Error { Agent::Fails } else { Agent::Accepts },
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// The same finding at a line and column.
    pub fn at(mut self, line: usize, col: usize) -> Finding {
        self.line = Some(line);
        self.col = Some(col);
        self
    }

    /// The same finding, marked as one the agent accepts (a trap, not a failure).
    pub fn accepted(mut self) -> Finding {
        self.agent = Agent::Accepts;
        self
    }

    /// The same finding, marked as one the deployment fails on.
    pub fn fails(mut self) -> Finding {
        self.agent = Agent::Fails;
        self
    }

    /// True when the deployment fails on it.
    pub fn agent_fails(&self) -> bool {
        self.agent == Agent::Fails
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `file:line:col: severity[rule]: message (fix: ...)`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.col {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}[{}]: {}", self.severity.as_str(), self.rule, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}
