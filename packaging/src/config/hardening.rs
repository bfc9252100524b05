//! `service.hardening` in deploy.yaml: sandboxing directives of systemd.exec that relax or add
//! to the unit's defaults, each checked against the values systemd accepts for it.
//!
//! Only directives listed in [`DIRECTIVES`] are accepted, and each value is limited to a
//! character set that needs no quoting in a unit file (systemd.syntax): no `%` specifier, no
//! `$`, no quote, no backslash, no control character. What passes is written as is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a directive's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// yes / no (YAML booleans too).
    Bool,
    /// One of the listed words.
    OneOf(&'static [&'static str]),
    /// Absolute paths, each optionally prefixed with `-` (missing is fine) or `+`.
    Paths,
    /// `CAP_*` names, optionally the whole list inverted with a leading `~`.
    Capabilities,
    /// System call names and `@groups`, optionally inverted with a leading `~`.
    Syscalls,
    /// `AF_*` names or `none`, optionally inverted with a leading `~`.
    AddressFamilies,
    /// Namespace types, optionally inverted, or yes/no.
    Namespaces,
    /// Architectures: `native` or systemd's names.
    Architectures,
    /// IP prefixes or the symbolic names `any`, `localhost`, `link-local`, `multicast`.
    IpPrefixes,
    /// An errno name, like `EPERM`.
    Errno,
}

/// Every directive `service.hardening` accepts, with its kind.
const DIRECTIVES: &[(&str, Kind)] = &[
    ("AmbientCapabilities", Kind::Capabilities),
    ("CapabilityBoundingSet", Kind::Capabilities),
    ("DevicePolicy", Kind::OneOf(&["auto", "closed", "strict"])),
    ("InaccessiblePaths", Kind::Paths),
    ("IPAddressAllow", Kind::IpPrefixes),
    ("IPAddressDeny", Kind::IpPrefixes),
    ("LockPersonality", Kind::Bool),
    ("MemoryDenyWriteExecute", Kind::Bool),
    ("NoNewPrivileges", Kind::Bool),
    ("PrivateDevices", Kind::Bool),
    ("PrivateIPC", Kind::Bool),
    ("PrivateMounts", Kind::Bool),
    ("PrivateNetwork", Kind::Bool),
    ("PrivateTmp", Kind::Bool),
    ("PrivateUsers", Kind::Bool),
    ("ProcSubset", Kind::OneOf(&["all", "pid"])),
    ("ProtectClock", Kind::Bool),
    ("ProtectControlGroups", Kind::Bool),
    ("ProtectHome", Kind::OneOf(&["yes", "no", "read-only", "tmpfs"])),
    ("ProtectHostname", Kind::Bool),
    ("ProtectKernelLogs", Kind::Bool),
    ("ProtectKernelModules", Kind::Bool),
    ("ProtectKernelTunables", Kind::Bool),
    ("ProtectProc", Kind::OneOf(&["noaccess", "invisible", "ptraceable", "default"])),
    ("ProtectSystem", Kind::OneOf(&["yes", "no", "full", "strict"])),
    ("ReadOnlyPaths", Kind::Paths),
    ("ReadWritePaths", Kind::Paths),
    ("RemoveIPC", Kind::Bool),
    ("RestrictAddressFamilies", Kind::AddressFamilies),
    ("RestrictNamespaces", Kind::Namespaces),
    ("RestrictRealtime", Kind::Bool),
    ("RestrictSUIDSGID", Kind::Bool),
    ("SystemCallArchitectures", Kind::Architectures),
    ("SystemCallErrorNumber", Kind::Errno),
    ("SystemCallFilter", Kind::Syscalls),
    ("UMask", Kind::OneOf(&["0002", "0007", "0022", "0027", "0077"])),
];

/// The names `service.hardening` accepts, for error messages and docs.
pub fn known_directives() -> impl Iterator<Item = &'static str> {
    DIRECTIVES.iter().map(|(name, _)| *name)
}

fn kind_of(name: &str) -> Option<Kind> {
    DIRECTIVES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn words_of(value: &str) -> Vec<&str> {
    value.split_whitespace().collect()
}

/// Each word matches `ok` after an optional leading `~` on the first word only.
fn inverted_list(value: &str, ok: impl Fn(&str) -> bool) -> bool {
    let list = value.strip_prefix('~').unwrap_or(value);
    let words = words_of(list);
    !words.is_empty() && words.iter().all(|w| ok(w))
}

fn upper_name(word: &str, prefix: &str) -> bool {
    word.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

fn lower_name(word: &str) -> bool {
    !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check(kind: Kind, value: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Bool => ["yes", "no"].contains(&value),
        Kind::OneOf(words) => words.contains(&value),
        Kind::Paths => {
            let words = words_of(value);
            !words.is_empty()
                && words.iter().all(|w| {
                    let path = w.trim_start_matches(['-', '+']);
                    w.len() - path.len() <= 1 && super::absolute_path(path).is_ok()
                })
        }
        Kind::Capabilities => inverted_list(value, |w| upper_name(w, "CAP_")),
        Kind::Syscalls => inverted_list(value, |w| {
            let name = w.strip_prefix('@').unwrap_or(w);
            lower_name(name) && !name.starts_with('-')
        }),
        Kind::AddressFamilies => value == "none" || inverted_list(value, |w| upper_name(w, "AF_")),
        Kind::Namespaces => {
            const TYPES: [&str; 7] = ["cgroup", "ipc", "net", "mnt", "pid", "user", "uts"];
            ["yes", "no"].contains(&value) || inverted_list(value, |w| TYPES.contains(&w))
        }
        Kind::Architectures => inverted_list(value, lower_name),
        Kind::IpPrefixes => {
            inverted_list(value, |w| {
                ["any", "localhost", "link-local", "multicast"].contains(&w)
                    || (!w.is_empty()
                        && w.bytes().all(|b| b.is_ascii_hexdigit() || b".:/".contains(&b))
                        && w.split('/').next().is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()))
            }) && !value.starts_with('~')
        }
        Kind::Errno => upper_name(value, "E"),
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::Bool => "yes or no".to_owned(),
        Kind::OneOf(words) => format!("one of {}", words.join(", ")),
        Kind::Paths => "absolute paths separated by spaces, each optionally prefixed with - or +".into(),
        Kind::Capabilities => "CAP_* names separated by spaces, optionally after ~".into(),
        Kind::Syscalls => "system call names or @groups separated by spaces, optionally after ~".into(),
        Kind::AddressFamilies => "AF_* names separated by spaces (optionally after ~), or none".into(),
        Kind::Namespaces => {
            "yes, no, or namespace types (cgroup ipc net mnt pid user uts), optionally after ~".into()
        }
        Kind::Architectures => "native or systemd architecture names".into(),
        Kind::IpPrefixes => "IP addresses or prefixes, or any, localhost, link-local, multicast".into(),
        Kind::Errno => "an errno name like EPERM".into(),
    };
    Err(format!("{value:?} is not a valid value: expected {want}"))
}

/// A sandboxing directive name from [`DIRECTIVES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Directive(String);

impl Directive {
    /// The directive's name as systemd spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Directive {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if kind_of(&name).is_none() {
            return Err(serde::de::Error::custom(format!(
                "{name:?} is not a sandboxing directive deploy.yaml can set; known: {}",
                known_directives().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Directive(name))
    }
}

/// A directive and its checked value, as one `service.hardening` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The directive.
    pub directive: Directive,
    /// Its value, as the unit will hold it.
    pub value: String,
}

impl Setting {
    /// Checks `value` against what `directive` accepts.
    pub fn new(directive: &str, value: &str) -> Result<Setting, String> {
        let kind = kind_of(directive).ok_or_else(|| format!("{directive:?} is not a known directive"))?;
        check(kind, value).map_err(|why| format!("{directive}: {why}"))?;
        Ok(Setting { directive: Directive(directive.to_owned()), value: value.to_owned() })
    }
}

/// `service.hardening`: the entries in the order written, each checked while parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardening(pub Vec<Setting>);

impl Hardening {
    /// The value deploy.yaml gives `directive`, if any.
    pub fn get(&self, directive: &str) -> Option<&str> {
        self.0.iter().find(|s| s.directive.as_str() == directive).map(|s| s.value.as_str())
    }
}

/// A value written as a YAML string, boolean, number or list of strings.
struct Value(String);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a boolean or a list of strings")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value(if v { "yes" } else { "no" }.into()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
                super::no_control(v).map_err(E::custom)?;
                Ok(Value(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    super::no_control(&word).map_err(serde::de::Error::custom)?;
                    words.push(word);
                }
                Ok(Value(words.join(" ")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for Hardening {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Hardening;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of systemd sandboxing directives to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Hardening, A::Error> {
                let mut out: Vec<Setting> = Vec::new();
                while let Some(directive) = map.next_key::<Directive>()? {
                    let Value(value) = map.next_value()?;
                    let kind = kind_of(directive.as_str()).expect("checked while parsing the key");
                    check(kind, &value)
                        .map_err(|why| serde::de::Error::custom(format!("{}: {why}", directive.as_str())))?;
                    if out.iter().any(|s| s.directive == directive) {
                        return Err(serde::de::Error::custom(format!("{} is set twice", directive.as_str())));
                    }
                    out.push(Setting { directive, value });
                }
                Ok(Hardening(out))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_per_kind() {
        for (d, v) in [
            ("MemoryDenyWriteExecute", "no"),
            ("SystemCallFilter", "@system-service @resources"),
            ("SystemCallFilter", "~@mount"),
            ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_NETLINK"),
            ("ReadWritePaths", "-/var/lib/shop /srv/data"),
            ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
            ("IPAddressDeny", "any"),
            ("IPAddressAllow", "10.0.0.0/8 ::1 localhost"),
            ("RestrictNamespaces", "~user net"),
            ("ProtectHome", "tmpfs"),
        ] {
            assert!(Setting::new(d, v).is_ok(), "{d}={v}");
        }
        for (d, v) in [
            ("MemoryDenyWriteExecute", "maybe"),
            ("SystemCallFilter", "@system-service %n"),
            ("SystemCallFilter", "@system-service ~@privileged"),
            ("ReadWritePaths", "relative/path"),
            ("ReadWritePaths", "/a/../etc"),
            ("ReadWritePaths", "--/x"),
            ("CapabilityBoundingSet", "cap_sys_admin"),
            ("RestrictAddressFamilies", "AF_UNIX ~AF_INET"),
            ("IPAddressDeny", "10.0.0.0/8;rm"),
            ("UMask", "0000"),
            ("ExecStartPre", "/bin/sh"),
        ] {
            assert!(Setting::new(d, v).is_err(), "{d}={v} passed");
        }
    }
}
