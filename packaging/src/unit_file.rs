//! The one reader of systemd unit files (the service unit and its socket unit as `render`
//! writes them): `[Section]` headers, comments, continuation lines, and values split into words
//! by systemd.syntax. The hook's process manager and socket holder, `asgi_module`, `cargo xtask
//! verify`'s unit checks and the tests read units through it, so ExecStart has one meaning.

/// One `Key=value` assignment of a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The 1-based line it starts on.
    pub line: usize,
    /// The section it is in, without brackets (`Service`).
    pub section: String,
    /// The key, trimmed.
    pub key: String,
    /// The value, trimmed, continuation lines joined with a space.
    pub value: String,
}

/// Every assignment of a unit file in order: blank lines and `#`/`;` comments skipped, lines
/// ending in `\` joined with the next.
pub fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(usize, String)> = None;
    for (idx, line) in text.lines().enumerate() {
        let (start, mut joined) = match pending.take() {
            Some((start, prev)) => (start, prev),
            None => {
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                    continue;
                }
                if trimmed.starts_with('[') && trimmed.ends_with(']') {
                    section = trimmed[1..trimmed.len() - 1].to_owned();
                    continue;
                }
                (idx + 1, String::new())
            }
        };
        if let Some(cont) = line.strip_suffix('\\') {
            joined.push_str(cont);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(line);
        if let Some((key, value)) = joined.split_once('=') {
            out.push(Entry {
                line: start,
                section: section.clone(),
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            });
        }
    }
    out
}

/// The assignments of `section`, in order.
pub fn section<'a>(text: &str, section: &'a str) -> impl Iterator<Item = Entry> + use<'a> {
    entries(text).into_iter().filter(move |e| e.section == section)
}

/// The words of the last `[Service]` `ExecStart=`, unquoted: the program first.
pub fn exec_start(text: &str) -> Option<Vec<String>> {
    section(text, "Service").filter(|e| e.key == "ExecStart").last().map(|e| words(&e.value, true))
}

/// Splits a unit value into words by systemd.syntax: double or single quotes, C escapes, and
/// (for command lines) `%%` and `$$`.
pub fn words(value: &str, command_line: bool) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let quote = (first == '"' || first == '\'').then(|| chars.next().unwrap());
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                c if Some(c) == quote => break,
                c if quote.is_none() && c.is_whitespace() => break,
                '\\' => match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some('s') => word.push(' '),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        if let Ok(b) = u8::from_str_radix(&hex, 16) {
                            word.push(b as char);
                        }
                    }
                    Some(other) => word.push(other),
                    None => {}
                },
                '%' if chars.peek() == Some(&'%') => {
                    chars.next();
                    word.push('%');
                }
                '$' if command_line && chars.peek() == Some(&'$') => {
                    chars.next();
                    word.push('$');
                }
                c => word.push(c),
            }
        }
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquotes_what_the_renderer_quotes() {
        let words = words(r#""plain" "with space" "50%%" "$$HOME" "q\"uote" "back\\slash" "" bare"#, true);
        assert_eq!(words, ["plain", "with space", "50%", "$HOME", "q\"uote", "back\\slash", "", "bare"]);
    }

    #[test]
    fn sections_comments_and_continuations() {
        let text = "# c\n[Unit]\nDescription=x\n\n[Service]\n; c\nUser = snake\nExecStart=/bin/a \\\n  \"b c\"\nExecStart=\"/v/bin/python\" \"-m\" \"hypercorn\" app:app\n[Install]\nExecStart=/not/this\n";
        let all = entries(text);
        assert_eq!(
            all.iter().map(|e| (e.line, e.section.as_str(), e.key.as_str())).collect::<Vec<_>>(),
            [
                (3, "Unit", "Description"),
                (7, "Service", "User"),
                (8, "Service", "ExecStart"),
                (10, "Service", "ExecStart"),
                (12, "Install", "ExecStart")
            ]
        );
        assert_eq!(all[1].value, "snake");
        assert_eq!(words(&all[2].value, true), ["/bin/a", "b c"]);
        assert_eq!(exec_start(text).unwrap(), ["/v/bin/python", "-m", "hypercorn", "app:app"]);
        assert_eq!(exec_start("[Unit]\nExecStart=/x\n"), None);
    }
}
