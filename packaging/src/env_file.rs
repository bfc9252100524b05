//! The one parser of an EnvironmentFile (`KEY=VALUE` lines): the hook's import check,
//! post-install commands and process manager read the service's environment file with it, and
//! so does the test sandbox when it starts a service as its unit would.

/// `KEY=VALUE` lines of an EnvironmentFile: comments and blanks skipped, one level of quotes
/// removed, keys that are not shell-style names dropped.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let k = k.trim();
            let name_ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_what_systemd_reads() {
        let vars = super::parse("# c\n; c\n\nA=1\n B = \"two words\" \nC='x'\nbad-key=1\nnoequals\n");
        assert_eq!(
            vars,
            [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x".into())]
        );
    }
}
