//! YAML 1.1 scalar typing as Ruby's Psych 4 (`Psych::ScalarScanner#tokenize`) does it, which is
//! what the CodeDeploy agent's `YAML.load` gives: `0644` is the octal Integer 420, `yes` and `on`
//! are booleans, `12:30` is the sexagesimal Integer 45000, `0.0` is a Float, `2024-01-01` a Date.

/// What a plain (unquoted, untagged) scalar becomes under Psych.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    /// `~`, `null`, `Null`, `NULL` or empty.
    Null,
    /// `yes`, `true`, `on` (any case) or their negations.
    Bool(bool),
    /// Decimal, `0`-octal, `0x` hex, `0b` binary, with `_` and `,` ignored, or sexagesimal.
    Int(i128),
    /// A decimal with a `.`, `.inf`, `.nan` or a sexagesimal float.
    Float(f64),
    /// Anything else: the text itself.
    Str,
    /// `:name`: a Symbol (Psych 4's `YAML.load` permits Symbol).
    Symbol,
    /// A class that `YAML.load` (Psych 4 safe load) refuses: `Date` or `Time`.
    Disallowed(&'static str),
}

fn all(s: &str, f: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(f)
}

fn strip_sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

/// Psych's "looks like a word" test: `/^[^\d.:-]?[[:alpha:]_\s!@#$%\^&*(){}<>|\/\\~;=]+/`.
fn looks_like_word(s: &str) -> bool {
    let word =
        |c: char| c.is_alphabetic() || c == '_' || c.is_whitespace() || "!@#$%^&*(){}<>|/\\~;=".contains(c);
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    if word(first) {
        return true;
    }
    // One optional leading character that is not a digit, '.', ':' or '-', then a word character.
    !(first.is_ascii_digit() || ".:-".contains(first)) && chars.next().is_some_and(word)
}

fn is_time(s: &str) -> bool {
    // /^-?\d{4}-\d{1,2}-\d{1,2}(?:[Tt]|\s+)\d{1,2}:\d\d:\d\d(?:\.\d*)?(?:\s*(?:Z|[-+]\d{1,2}:?(?:\d\d)?))?$/
    let b = s.strip_prefix('-').unwrap_or(s).as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize, min: usize, max: usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < max {
            *i += 1;
        }
        *i - start >= min
    };
    let lit = |i: &mut usize, c: u8| {
        if *i < b.len() && b[*i] == c {
            *i += 1;
            true
        } else {
            false
        }
    };
    if !(digits(&mut i, 4, 4) && lit(&mut i, b'-') && digits(&mut i, 1, 2) && lit(&mut i, b'-')) {
        return false;
    }
    if !digits(&mut i, 1, 2) {
        return false;
    }
    if i < b.len() && (b[i] == b'T' || b[i] == b't') {
        i += 1;
    } else {
        let start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    if !(digits(&mut i, 1, 2) && lit(&mut i, b':') && digits(&mut i, 2, 2) && lit(&mut i, b':')) {
        return false;
    }
    if !digits(&mut i, 2, 2) {
        return false;
    }
    if lit(&mut i, b'.') {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if i == b.len() {
        return true;
    }
    if lit(&mut i, b'Z') {
        return i == b.len();
    }
    if !(lit(&mut i, b'-') || lit(&mut i, b'+')) || !digits(&mut i, 1, 2) {
        return false;
    }
    lit(&mut i, b':');
    let rest = &b[i..];
    rest.is_empty() || (rest.len() == 2 && rest.iter().all(u8::is_ascii_digit))
}

fn is_date(s: &str) -> bool {
    // /^\d{4}-(?:1[012]|0\d|\d)-(?:[12]\d|3[01]|0\d|\d)$/
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return false };
    let num = |p: &str| !p.is_empty() && p.len() <= 2 && all(p, |b| b.is_ascii_digit());
    if y.len() != 4 || !all(y, |b| b.is_ascii_digit()) || !num(m) || !num(d) {
        return false;
    }
    let month_ok = m.len() == 1 || m.starts_with('0') || matches!(*m, "10" | "11" | "12");
    let day_ok = d.len() == 1
        || d.starts_with('0')
        || d.starts_with('1')
        || d.starts_with('2')
        || matches!(*d, "30" | "31");
    month_ok && day_ok
}

/// `/^[-+]?[0-9][0-9_]*(:[0-5]?[0-9]){1,2}$/` and, with `fraction`, the same followed by
/// `\.[0-9_]*`. Returns the sign and the parts, the fraction kept on the last one.
fn sexagesimal_parts(s: &str, fraction: bool) -> Option<(bool, Vec<String>)> {
    let (neg, body) = strip_sign(s);
    let (body, frac) = if fraction {
        let (b, f) = body.rsplit_once('.')?;
        if !all(f, |c| c.is_ascii_digit() || c == b'_') {
            return None;
        }
        (b, Some(f))
    } else {
        (body, None)
    };
    let parts: Vec<&str> = body.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let head = parts[0];
    if !head.as_bytes().first().is_some_and(u8::is_ascii_digit)
        || !all(head, |c| c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    for part in &parts[1..] {
        let ok = match part.as_bytes() {
            [d] => d.is_ascii_digit(),
            [a, b] => (b'0'..=b'5').contains(a) && b.is_ascii_digit(),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    let mut parts: Vec<String> = parts.into_iter().map(str::to_owned).collect();
    if let (Some(f), Some(last)) = (frac, parts.last_mut()) {
        last.push('.');
        last.push_str(f);
    }
    Some((neg, parts))
}

/// Ruby's `String#to_i`/`to_f` on a digit run with `_` (leading digits only).
fn ruby_to_i(s: &str) -> i128 {
    let mut n: i128 = 0;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => n = n.saturating_mul(10).saturating_add(i128::from(b - b'0')),
            b'_' => {}
            _ => break,
        }
    }
    n
}

fn parse_radix(digits: &str, radix: u32) -> Option<i128> {
    let cleaned: String = digits.chars().filter(|c| *c != '_' && *c != ',').collect();
    if cleaned.is_empty() {
        return None;
    }
    i128::from_str_radix(&cleaned, radix).ok()
}

/// Psych's integer test (the legacy form of Psych 4: `_` and `,` allowed) and Ruby's `Integer()`.
fn parse_int(s: &str) -> Option<i128> {
    let (neg, body) = strip_sign(s);
    let sign = |n: i128| if neg { -n } else { n };
    let b = body.as_bytes();
    if let Some(rest) = body.strip_prefix("0b") {
        return (!rest.is_empty() && all(rest, |c| matches!(c, b'0' | b'1' | b'_' | b',')))
            .then(|| parse_radix(rest, 2))
            .flatten()
            .map(sign);
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return (!rest.is_empty() && all(rest, |c| c.is_ascii_hexdigit() || c == b'_' || c == b','))
            .then(|| parse_radix(rest, 16))
            .flatten()
            .map(sign);
    }
    if b.len() > 1 && b[0] == b'0' {
        return all(&body[1..], |c| matches!(c, b'0'..=b'7' | b'_' | b','))
            .then(|| parse_radix(&body[1..], 8).or(Some(0)))
            .flatten()
            .map(sign);
    }
    if body == "0" {
        return Some(0);
    }
    // [1-9](?:[0-9]|,[0-9]|_[0-9])*
    let first_ok = b.first().is_some_and(|c| (b'1'..=b'9').contains(c));
    let mut ok = first_ok;
    let mut i = 1;
    while ok && i < b.len() {
        if b[i].is_ascii_digit() {
            i += 1;
        } else if (b[i] == b',' || b[i] == b'_') && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            i += 2;
        } else {
            ok = false;
        }
    }
    ok.then(|| parse_radix(body, 10)).flatten().map(sign)
}

/// `/^(?:[-+]?([0-9][0-9_,]*)?\.[0-9]*([eE][-+][0-9]+)?)$/`, then Ruby's `Float()`.
fn parse_float(s: &str) -> Option<Result<f64, ()>> {
    let (neg, body) = strip_sign(s);
    let (int_part, rest) = body.split_once('.')?;
    let int_ok = int_part.is_empty()
        || (int_part.as_bytes()[0].is_ascii_digit()
            && all(int_part, |c| c.is_ascii_digit() || c == b'_' || c == b','));
    if !int_ok {
        return None;
    }
    let (frac, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if !all(frac, |c| c.is_ascii_digit()) {
        return None;
    }
    if let Some(exp) = exp {
        let (_, digits) = strip_sign(exp);
        if !(exp.starts_with(['+', '-']) && !digits.is_empty() && all(digits, |c| c.is_ascii_digit())) {
            return None;
        }
    }
    if int_part.is_empty() && frac.is_empty() {
        // A lone "." (or "-."): Psych keeps the string.
        return Some(Err(()));
    }
    let int_clean: String = int_part.chars().filter(|c| *c != '_' && *c != ',').collect();
    let text = format!(
        "{}{}.{}{}",
        if neg { "-" } else { "" },
        if int_clean.is_empty() { "0" } else { &int_clean },
        if frac.is_empty() { "0" } else { frac },
        exp.map(|e| format!("e{e}")).unwrap_or_default()
    );
    Some(text.parse::<f64>().map_err(|_| ()))
}

/// Types a plain scalar the way Psych 4's `ScalarScanner#tokenize` does.
pub fn resolve_plain(s: &str) -> Typed {
    if s.is_empty() {
        return Typed::Null;
    }
    if looks_like_word(s) || s.contains('\n') {
        if s.chars().count() > 5 {
            return Typed::Str;
        }
        let lower = s.to_ascii_lowercase();
        if !lower.starts_with(['y', 't', 'o', 'n', 'f', '~']) {
            return Typed::Str;
        }
        return match lower.as_str() {
            "~" | "null" => Typed::Null,
            "yes" | "true" | "on" => Typed::Bool(true),
            "no" | "false" | "off" => Typed::Bool(false),
            _ => Typed::Str,
        };
    }
    if is_time(s) {
        return Typed::Disallowed("Time");
    }
    if is_date(s) {
        return Typed::Disallowed("Date");
    }
    let lower = s.to_ascii_lowercase();
    if lower == ".inf" || lower == "+.inf" {
        return Typed::Float(f64::INFINITY);
    }
    if lower == "-.inf" {
        return Typed::Float(f64::NEG_INFINITY);
    }
    if lower == ".nan" {
        return Typed::Float(f64::NAN);
    }
    if s.starts_with(':') && s.len() > 1 {
        return Typed::Symbol;
    }
    if let Some((neg, parts)) = sexagesimal_parts(s, false) {
        // Ruby's `to_i` per part: the sign stays on the first part only, so -1:30 is -1800.
        // Ruby's Integer has no limit; a head too long for i128 saturates, which keeps it far
        // outside every range a rule accepts.
        let mut total: i128 = 0;
        for (e, part) in parts.iter().enumerate() {
            let n = ruby_to_i(part);
            let n = if e == 0 && neg { -n } else { n };
            total = total.saturating_add(n.saturating_mul(60i128.pow((e as i32 - 2).unsigned_abs())));
        }
        return Typed::Int(total);
    }
    if let Some((neg, parts)) = sexagesimal_parts(s, true) {
        let mut total = 0.0;
        for (e, part) in parts.iter().enumerate() {
            let digits: String = part.chars().filter(|c| *c != '_').collect();
            let value: f64 = digits.parse().unwrap_or(0.0);
            let value = if e == 0 && neg { -value } else { value };
            total += value * 60f64.powi((e as i32 - 2).abs());
        }
        return Typed::Float(total);
    }
    if let Some(float) = parse_float(s) {
        return match float {
            Ok(f) => Typed::Float(f),
            Err(()) => Typed::Str,
        };
    }
    match parse_int(s) {
        Some(n) => Typed::Int(n),
        None => Typed::Str,
    }
}

/// Ruby's `Float#to_s`: `420.0`, `0.5`, `1.0e+20`.
pub fn ruby_float_to_s(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let mantissa = if mantissa.contains('.') { mantissa.to_owned() } else { format!("{mantissa}.0") };
        let exp: i32 = exp.parse().expect("exponent");
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    if f.fract() == 0.0 {
        return format!("{f:.1}");
    }
    format!("{f}")
}

/// Ruby's `String#to_i`: optional whitespace and sign, then digits (with single `_`), else 0.
pub fn ruby_str_to_i(s: &str) -> i128 {
    let t = s.trim_start();
    let (neg, body) = strip_sign(t);
    let n = if body.starts_with('_') { 0 } else { ruby_to_i(body) };
    if neg { -n } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psych_typing() {
        let cases: &[(&str, Typed)] = &[
            ("", Typed::Null),
            ("~", Typed::Null),
            ("null", Typed::Null),
            ("NULL", Typed::Null),
            ("yes", Typed::Bool(true)),
            ("Yes", Typed::Bool(true)),
            ("ON", Typed::Bool(true)),
            ("off", Typed::Bool(false)),
            ("n", Typed::Str),
            ("y", Typed::Str),
            ("linux", Typed::Str),
            ("0.0", Typed::Float(0.0)),
            (".0", Typed::Float(0.0)),
            ("0.", Typed::Float(0.0)),
            ("-0.0", Typed::Float(0.0)),
            ("1.5e+3", Typed::Float(1500.0)),
            ("1e3", Typed::Str),
            ("0644", Typed::Int(420)),
            ("0755", Typed::Int(493)),
            ("0888", Typed::Str),
            ("644", Typed::Int(644)),
            ("0", Typed::Int(0)),
            ("0x1f", Typed::Int(31)),
            ("0b101", Typed::Int(5)),
            ("1_000", Typed::Int(1000)),
            ("1,000", Typed::Int(1000)),
            ("-12", Typed::Int(-12)),
            ("12:30", Typed::Int(45000)),
            ("1:02:03", Typed::Int(3723)),
            ("2024-01-31", Typed::Disallowed("Date")),
            ("2024-01-31 10:00:00", Typed::Disallowed("Time")),
            (":sym", Typed::Symbol),
            ("-1:30", Typed::Int(-1800)),
            (".", Typed::Str),
            ("300s", Typed::Str),
            ("u+x", Typed::Str),
            ("7777", Typed::Int(7777)),
            // Past i128 (Ruby would make a Bignum): saturated, never an overflow.
            ("99999999999999999999999999999999999999999:00", Typed::Int(i128::MAX)),
            ("-99999999999999999999999999999999999999999:00:00", Typed::Int(i128::MIN)),
        ];
        for (text, want) in cases {
            let got = resolve_plain(text);
            match (&got, want) {
                (Typed::Float(a), Typed::Float(b)) => assert!(a == b, "{text}: {got:?}"),
                _ => assert_eq!(&got, want, "{text}"),
            }
        }
    }

    #[test]
    fn ruby_conversions() {
        assert_eq!(ruby_float_to_s(420.0), "420.0");
        assert_eq!(ruby_float_to_s(0.5), "0.5");
        assert_eq!(ruby_float_to_s(1e20), "1.0e+20");
        assert_eq!(ruby_str_to_i("300s"), 300);
        assert_eq!(ruby_str_to_i(" 900"), 900);
        assert_eq!(ruby_str_to_i("foo"), 0);
        assert_eq!(ruby_str_to_i("-5"), -5);
    }
}
