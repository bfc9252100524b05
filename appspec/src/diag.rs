//! Findings: what a check found, where, under which rule, and how to fix it.

use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The deployment fails, or does something it should not.
    Error,
    /// The agent accepts it, but it is likely a mistake or will hurt later.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
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
    /// Error or warning.
    pub severity: Severity,
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
