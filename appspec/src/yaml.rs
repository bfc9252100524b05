//! A YAML view of appspec.yml as the agent's `YAML.load` (Ruby Psych 4, YAML 1.1) sees it, with
//! the position, style and raw text of every node: the first document only, a repeated key
//! reported and then dropped as Ruby's Hash drops it (the last value wins), aliases refused,
//! merge keys (`<<`) applied.

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::{
    diag::{Finding, Severity},
    yaml11::{self, Typed},
};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unquoted: typed by YAML 1.1 rules.
    Plain,
    /// `'...'`: always a string.
    SingleQuoted,
    /// `"..."`: always a string.
    DoubleQuoted,
    /// `|`: always a string.
    Literal,
    /// `>`: always a string.
    Folded,
}

/// A value as Ruby sees it after `YAML.load`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `nil`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An Integer.
    Int(i128),
    /// A Float.
    Float(f64),
    /// A String.
    Str(String),
    /// A Symbol (`:name`), never equal to a String.
    Symbol(String),
    /// A class the safe loader refuses (Date, Time, Symbol).
    Disallowed(&'static str),
    /// An Array.
    Seq(Vec<Node>),
    /// A Hash, in source order; after [`load`] a repeated key holds only its last value.
    Map(Vec<(Node, Node)>),
}

/// A node with its position and, for a scalar, how it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The typed value.
    pub value: Value,
    /// Where the node starts.
    pub pos: Pos,
    /// The style, for scalars.
    pub style: Option<Style>,
    /// The source text of a scalar, quotes included.
    pub raw: String,
}

impl Node {
    /// The value for `key` (a string key), the last one when the key repeats, like a Ruby Hash.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// True when the node is a mapping and holds `key` (Ruby `has_key?`).
    pub fn has_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// True for `nil`.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Ruby truthiness: everything but `nil` and `false`.
    pub fn is_truthy(&self) -> bool {
        !matches!(self.value, Value::Null | Value::Bool(false))
    }

    /// Ruby's `to_s` of the value (`inspect` for collections).
    pub fn ruby_to_s(&self) -> String {
        match &self.value {
            Value::Null => String::new(),
            Value::Str(s) | Value::Symbol(s) => s.clone(),
            _ => self.ruby_inspect(),
        }
    }

    /// Ruby's `inspect` of the value.
    pub fn ruby_inspect(&self) -> String {
        match &self.value {
            Value::Null => "nil".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => yaml11::ruby_float_to_s(*f),
            Value::Str(s) => format!("{s:?}"),
            Value::Symbol(s) => format!(":{s}"),
            Value::Disallowed(class) => format!("#<{class}>"),
            Value::Seq(items) => {
                format!("[{}]", items.iter().map(Node::ruby_inspect).collect::<Vec<_>>().join(", "))
            }
            Value::Map(pairs) => format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}=>{}", k.ruby_inspect(), v.ruby_inspect()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The Ruby class name of the value, for messages.
    pub fn ruby_class(&self) -> &'static str {
        match &self.value {
            Value::Null => "NilClass",
            Value::Bool(true) => "TrueClass",
            Value::Bool(false) => "FalseClass",
            Value::Int(_) => "Integer",
            Value::Float(_) => "Float",
            Value::Str(_) => "String",
            Value::Symbol(_) => "Symbol",
            Value::Disallowed(class) => class,
            Value::Seq(_) => "Array",
            Value::Map(_) => "Hash",
        }
    }
}

/// The first document of a YAML text, and what the YAML layer itself found wrong with it.
#[derive(Debug)]
pub struct Loaded {
    /// The root, or `None` when the document is empty (`YAML.load` gives `false`/`nil`).
    pub root: Option<Node>,
    /// Findings of the YAML layer. When one is an error the agent cannot load the file.
    pub findings: Vec<Finding>,
}

fn finding(rule: &'static str, severity: Severity, pos: Pos, message: String, fix: &str) -> Finding {
    Finding::file(String::new(), rule, severity, message, fix).at(pos.line, pos.col)
}

struct Builder<'a> {
    text: &'a str,
    /// Byte offset of every character index, plus the end.
    offsets: Vec<usize>,
    findings: Vec<Finding>,
    /// Lines covered by block scalars, where tabs are content.
    block_lines: Vec<(usize, usize)>,
}

enum Frame {
    Seq(Node, Vec<Node>),
    Map(Node, Vec<(Node, Node)>, Option<Node>),
}

impl Builder<'_> {
    fn slice(&self, start: usize, end: usize) -> String {
        let start = self.offsets.get(start).copied().unwrap_or(self.text.len());
        let end = self.offsets.get(end).copied().unwrap_or(self.text.len()).max(start);
        self.text[start..end].to_owned()
    }

    fn scalar(
        &mut self,
        value: &str,
        style: ScalarStyle,
        tag: Option<String>,
        pos: Pos,
        raw: String,
    ) -> Node {
        let style = match style {
            ScalarStyle::Plain => Style::Plain,
            ScalarStyle::SingleQuoted => Style::SingleQuoted,
            ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
            ScalarStyle::Literal => Style::Literal,
            ScalarStyle::Folded => Style::Folded,
        };
        let typed = match (&tag, style) {
            (Some(tag), _) if tag.ends_with(":str") || tag == "!str" => Value::Str(value.to_owned()),
            (Some(tag), _) => {
                self.findings.push(finding(
                    "yaml.tag",
                    Severity::Warning,
                    pos,
                    format!("the tag {tag} is not modelled here; the agent's safe loader may refuse it"),
                    "remove the tag and write the value plainly",
                ));
                typed_plain(value)
            }
            (None, Style::Plain) => typed_plain(value),
            (None, _) => Value::Str(value.to_owned()),
        };
        if style == Style::Plain && tag.is_none() && raw.starts_with(['@', '`']) {
            self.findings.push(finding(
                "yaml.syntax",
                Severity::Error,
                pos,
                format!(
                    "Psych::SyntaxError: found character that cannot start any token at line {} column {}",
                    pos.line, pos.col
                ),
                "quote the value: `@` and `` ` `` are reserved in YAML",
            ));
        }
        if let Value::Disallowed(class) = typed {
            self.findings.push(finding(
                "yaml.disallowed-class",
                Severity::Error,
                pos,
                format!("Psych::DisallowedClass: Tried to load unspecified class: {class} (from {raw})"),
                "quote the value so it is a string",
            ));
        }
        Node { value: typed, pos, style: Some(style), raw }
    }
}

fn typed_plain(value: &str) -> Value {
    match yaml11::resolve_plain(value) {
        Typed::Null => Value::Null,
        Typed::Bool(b) => Value::Bool(b),
        Typed::Int(n) => Value::Int(n),
        Typed::Float(f) => Value::Float(f),
        Typed::Str => Value::Str(value.to_owned()),
        Typed::Symbol => {
            let name = &value[1..];
            let quoted = name.len() >= 2
                && (name.starts_with('"') || name.starts_with('\''))
                && name.ends_with(&name[..1]);
            Value::Symbol(if quoted { name[1..name.len() - 1].to_owned() } else { name.to_owned() })
        }
        Typed::Disallowed(class) => Value::Disallowed(class),
    }
}

/// Ruby `eql?` on keys: same class and value (so `1` and `1.0` differ, as in a Hash).
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits() || x == y,
        (Value::Seq(_) | Value::Map(_), _) | (_, Value::Seq(_) | Value::Map(_)) => false,
        _ => a == b,
    }
}

fn pos_of(marker: &saphyr_parser::Marker) -> Pos {
    Pos { line: marker.line(), col: marker.col() + 1 }
}

/// Reads the first document of `text` as Psych would, collecting YAML-level findings.
pub fn load(text: &str) -> Loaded {
    let mut findings = Vec::new();
    let body = match text.strip_prefix('\u{feff}') {
        Some(rest) => {
            findings.push(finding(
                "yaml.bom",
                Severity::Error,
                Pos { line: 1, col: 1 },
                "the file starts with a UTF-8 byte order mark: the agent's YAML.load then returns only the first key and the appspec is rejected".into(),
                "save the file as UTF-8 without a BOM",
            ));
            rest
        }
        None => text,
    };
    let mut offsets: Vec<usize> = body.char_indices().map(|(i, _)| i).collect();
    offsets.push(body.len());
    let mut b = Builder { text: body, offsets, findings, block_lines: Vec::new() };
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut docs = 0;
    let mut parser = Parser::new_from_str(body);
    let mut syntax_error = false;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(it) => it,
            Err(err) => {
                let pos = pos_of(err.marker());
                b.findings.push(finding(
                    "yaml.syntax",
                    Severity::Error,
                    pos,
                    format!("Psych::SyntaxError: {} at line {} column {}", err.info(), pos.line, pos.col),
                    "fix the YAML syntax (a YAML linter shows the same spot)",
                ));
                syntax_error = true;
                break;
            }
        };
        let pos = pos_of(&span.start);
        let node = match event {
            Event::StreamStart | Event::Nothing => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    b.findings.push(finding(
                        "yaml.multiple-documents",
                        Severity::Warning,
                        pos,
                        "a second YAML document: the agent reads only the first and ignores the rest".into(),
                        "remove the `---` and everything after it, or merge it into the first document",
                    ));
                    break;
                }
                continue;
            }
            Event::DocumentEnd => continue,
            Event::Alias(_) => {
                let raw = b.slice(span.start.index(), span.end.index());
                b.findings.push(finding(
                    "yaml.alias",
                    Severity::Error,
                    pos,
                    format!(
                        "Psych::BadAlias: Unknown alias: {} (Ruby 3.1+ YAML.load refuses aliases)",
                        raw.trim_start_matches('*')
                    ),
                    "write the value out instead of using an anchor and alias",
                ));
                Node { value: Value::Null, pos, style: None, raw }
            }
            Event::Scalar(value, style, _, tag) => {
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
                    b.block_lines.push((span.start.line(), span.end.line()));
                }
                let raw = b.slice(span.start.index(), span.end.index());
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                b.scalar(&value, style, tag, pos, raw)
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(
                    Node { value: Value::Null, pos, style: None, raw: String::new() },
                    Vec::new(),
                ));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(
                    Node { value: Value::Null, pos, style: None, raw: String::new() },
                    Vec::new(),
                    None,
                ));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(mut node, items)) => {
                    node.value = Value::Seq(items);
                    node
                }
                _ => unreachable!("the parser balances sequences"),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(mut node, pairs, _)) => {
                    node.value = Value::Map(merge_keys(pairs, &mut b.findings));
                    node
                }
                _ => unreachable!("the parser balances mappings"),
            },
        };
        match stack.last_mut() {
            None => {
                if root.is_none() {
                    root = Some(node);
                }
            }
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, pairs, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => pairs.push((key, node)),
            },
        }
    }
    if !syntax_error {
        check_tabs(&mut b);
    }
    let mut findings = b.findings;
    if let Some(root) = &root {
        check_duplicates(root, &mut findings);
    }
    let root = root.map(keep_last);
    findings.sort_by_key(|f| (f.line, f.col));
    Loaded { root: root.filter(|r| !matches!(r.value, Value::Null | Value::Bool(false))), findings }
}

/// Psych applies `<<: {mapping}` (or a list of mappings) by merging it into the hash in place.
fn merge_keys(pairs: Vec<(Node, Node)>, findings: &mut Vec<Finding>) -> Vec<(Node, Node)> {
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let is_merge = key.style == Some(Style::Plain) && key.raw == "<<";
        match (&value.value, is_merge) {
            (Value::Map(inner), true) => out.extend(inner.iter().cloned()),
            (Value::Seq(items), true) if items.iter().all(|i| matches!(i.value, Value::Map(_))) => {
                for item in items {
                    if let Value::Map(inner) = &item.value {
                        out.extend(inner.iter().cloned());
                    }
                }
            }
            (_, true) => {
                findings.push(finding(
                    "yaml.merge-key",
                    Severity::Warning,
                    key.pos,
                    "a `<<` merge key whose value is not a mapping".into(),
                    "remove the `<<` key",
                ));
                out.push((key, value));
            }
            _ => out.push((key, value)),
        }
    }
    out
}

fn check_duplicates(node: &Node, findings: &mut Vec<Finding>) {
    match &node.value {
        Value::Seq(items) => items.iter().for_each(|i| check_duplicates(i, findings)),
        Value::Map(pairs) => {
            for (i, (key, value)) in pairs.iter().enumerate() {
                if let Some((later, _)) = pairs[i + 1..].iter().find(|(k, _)| same_key(&k.value, &key.value))
                {
                    findings.push(finding(
                        "yaml.duplicate-key",
                        Severity::Warning,
                        key.pos,
                        format!(
                            "the key {} appears again at line {}; the agent silently keeps only the last one",
                            key.raw, later.pos.line
                        ),
                        "remove one of the two keys",
                    ));
                }
                check_duplicates(value, findings);
            }
        }
        _ => {}
    }
}

/// The Hash the agent builds: a repeated key keeps its first place and its last value, and the
/// discarded value is gone, so no later check looks at it.
fn keep_last(node: Node) -> Node {
    let Node { value, pos, style, raw } = node;
    let value = match value {
        Value::Seq(items) => Value::Seq(items.into_iter().map(keep_last).collect()),
        Value::Map(pairs) => {
            let mut out: Vec<(Node, Node)> = Vec::with_capacity(pairs.len());
            for (key, value) in pairs {
                let value = keep_last(value);
                match out.iter_mut().find(|(k, _)| same_key(&k.value, &key.value)) {
                    Some(slot) => *slot = (key, value),
                    None => out.push((key, value)),
                }
            }
            Value::Map(out)
        }
        other => other,
    };
    Node { value, pos, style, raw }
}

/// libyaml refuses tabs in indentation ("found character that cannot start any token").
fn check_tabs(b: &mut Builder<'_>) {
    for (idx, line) in b.text.lines().enumerate() {
        let line_no = idx + 1;
        if b.block_lines.iter().any(|(start, end)| (*start..=*end).contains(&line_no)) {
            continue;
        }
        let indent: String = line.chars().take_while(|c| *c == ' ' || *c == '\t').collect();
        if let Some(col) = indent.find('\t') {
            let rest = &line[indent.len()..];
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            {
                b.findings.push(finding(
                    "yaml.tab",
                    Severity::Error,
                    Pos { line: line_no, col: col + 1 },
                    "a tab in the indentation: the agent's YAML parser (libyaml) fails with \"found character that cannot start any token\"".into(),
                    "indent with spaces only",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_styles_and_yaml11_types() {
        let loaded = load("version: 0.0\nos: linux\nmode: 0644\nq: '0644'\nb: yes\n");
        assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
        let root = loaded.root.unwrap();
        assert_eq!(root.get("version").unwrap().value, Value::Float(0.0));
        let mode = root.get("mode").unwrap();
        assert_eq!(mode.value, Value::Int(420));
        assert_eq!(mode.pos, Pos { line: 3, col: 7 });
        assert_eq!(mode.raw, "0644");
        let quoted = root.get("q").unwrap();
        assert_eq!(quoted.value, Value::Str("0644".into()));
        assert_eq!(quoted.style, Some(Style::SingleQuoted));
        assert_eq!(quoted.raw, "'0644'");
        assert_eq!(root.get("b").unwrap().value, Value::Bool(true));
    }

    #[test]
    fn duplicates_last_wins_and_first_document_only() {
        let loaded = load("a: 1\na: 2\n---\nb: 3\n");
        let root = loaded.root.as_ref().unwrap();
        assert_eq!(root.get("a").unwrap().value, Value::Int(2));
        assert!(matches!(&root.value, Value::Map(pairs) if pairs.len() == 1), "{root:?}");
        let rules: Vec<_> = loaded.findings.iter().map(|f| f.rule).collect();
        assert_eq!(rules, ["yaml.duplicate-key", "yaml.multiple-documents"]);
    }

    #[test]
    fn refuses_what_psych_refuses() {
        let rules = |text: &str| load(text).findings.iter().map(|f| f.rule).collect::<Vec<_>>();
        assert_eq!(rules("a: &x 1\nb: *x\n"), ["yaml.alias"]);
        assert!(rules("a:\n\tb: 1\n").iter().any(|r| *r == "yaml.tab" || *r == "yaml.syntax"));
        assert_eq!(rules("\u{feff}a: 1\n"), ["yaml.bom"]);
        assert_eq!(rules("a: 2024-01-01\n"), ["yaml.disallowed-class"]);
        assert!(load("# only a comment\n").root.is_none());
    }

    #[test]
    fn merge_keys_apply() {
        let loaded = load("a:\n  <<: {x: 1}\n  y: 2\n");
        let a = loaded.root.as_ref().unwrap().get("a").unwrap();
        assert_eq!(a.get("x").unwrap().value, Value::Int(1));
    }
}
