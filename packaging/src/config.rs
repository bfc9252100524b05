//! `deploy.yaml`, the one file a team writes, and `deploy/release.yaml`, its resolved form that
//! the hook runs from.
//!
//! Every value that ends up in a unit file, a TOML file or a path is validated while it is
//! deserialized, so an error carries the key, line and column that serde_yaml knows.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use appspec::{LifecycleEvent, MAX_HOOK_TIMEOUT};

pub mod hardening;

/// The file name a team writes in its app directory.
pub const DEPLOY_YAML: &str = "deploy.yaml";

/// Why a deploy.yaml or release.yaml cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML, or a key or value breaks a rule.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// serde_yaml's message: key path, rule, line and column.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Validated scalar types. Each checks its rule in `TryFrom<String>`, which serde runs while the
// parser still knows the position.

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`.
            pub fn new(value: &str) -> Result<$name, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(value)?;
                Ok($name(value.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        // Validated inside the scalar's own visitor, where serde_yaml still knows its key path,
        // line and column.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<$name, E> {
                        $name::new(value).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) fn no_control(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{value:?} contains the control character {c:?}, which a unit file or TOML value cannot hold"
        )),
        None => Ok(()),
    }
}

fn relative_path(value: &str) -> Result<(), String> {
    no_control(value)?;
    let ok = !value.is_empty()
        && !value.starts_with('/')
        && value.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be a relative path without '.', '..' or empty parts"))
    }
}

fn absolute_path(value: &str) -> Result<(), String> {
    no_control(value)?;
    let ok = value.starts_with('/')
        && value.len() > 1
        && !value.ends_with('/')
        && value[1..].split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(format!(
            "{value:?} must be an absolute path without '.', '..', empty parts or a trailing '/'"
        ));
    }
    if value.contains(char::is_whitespace) || value.contains(['%', '$', '"', '\'', '\\']) {
        return Err(format!("{value:?}: paths with spaces, quotes, '\\', '%' or '$' are not supported"));
    }
    Ok(())
}

fn posix_name(value: &str) -> Result<(), String> {
    let mut bytes = value.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if first_ok && rest_ok && value.len() <= 32 {
        Ok(())
    } else {
        Err(format!("{value:?} is not a portable user or group name ([a-z_][a-z0-9_-]*, at most 32)"))
    }
}

fn app_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not an app name (letters, digits, '-', '_', '.'; at most 64)"))
    }
}

fn unit_name(value: &str) -> Result<(), String> {
    let stem = value.strip_suffix(".service").unwrap_or("");
    let ok = !stem.is_empty()
        && value.len() <= 255
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not a service unit name (letters, digits, ':-_.' and the suffix .service)"))
    }
}

fn asgi_app(value: &str) -> Result<(), String> {
    let (module, attr) =
        value.split_once(':').ok_or_else(|| format!("{value:?} must be MODULE:ATTRIBUTE, like app:app"))?;
    let ident = |s: &str| {
        s.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let attr_ok = ident(attr) || attr.ends_with("()") && ident(&attr[..attr.len() - 2]);
    if ident(module) && attr_ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be MODULE:ATTRIBUTE, like app:app"))
    }
}

fn env_name(value: &str) -> Result<(), String> {
    let mut bytes = value.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"))
    }
}

fn health_url(value: &str) -> Result<(), String> {
    crate::HttpUrl::parse(value).map(drop)
}

fn py_version(value: &str) -> Result<(), String> {
    let ok = value.strip_prefix("3.").is_some_and(|minor| {
        !minor.is_empty() && minor.len() <= 3 && minor.bytes().all(|b| b.is_ascii_digit())
    });
    if ok { Ok(()) } else { Err(format!("{value:?} is not a CPython version like \"3.11\"")) }
}

fn platform_tag(value: &str) -> Result<(), String> {
    let parts = value
        .strip_prefix("manylinux_")
        .or_else(|| value.strip_prefix("musllinux_"))
        .and_then(|rest| rest.split_once('_'))
        .filter(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        });
    match parts {
        Some(_) => Ok(()),
        None => Err(format!(
            "{value:?} is not a platform tag family like manylinux_2_17 or musllinux_1_2 (the arch comes from --target)"
        )),
    }
}

validated_string!(
    /// A name for the app: letters, digits, `-`, `_`, `.`.
    AppName, app_name);
validated_string!(
    /// A POSIX user or group name.
    PosixName, posix_name);
validated_string!(
    /// An absolute, normalized path with no characters that need quoting.
    AbsPath, absolute_path);
validated_string!(
    /// A relative, normalized path.
    RelPath, relative_path);
validated_string!(
    /// A systemd service unit name.
    UnitName, unit_name);
validated_string!(
    /// An ASGI application reference, `module:attribute`.
    AsgiApp, asgi_app);
validated_string!(
    /// An environment variable name.
    EnvName, env_name);
validated_string!(
    /// Free text that will land in a unit or TOML file: no control characters.
    Text, no_control);
validated_string!(
    /// An `http://` URL for the health check.
    HealthUrl, health_url);
validated_string!(
    /// A CPython feature version, `3.N`.
    PyVersion, py_version);
validated_string!(
    /// A platform tag family with its libc floor, without the arch: `manylinux_2_17`,
    /// `musllinux_1_2`.
    PlatformTag, platform_tag);

/// A hook timeout in seconds, 1..=3600.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct Timeout(u32);

impl Timeout {
    /// Validates `value`.
    pub fn new(value: i128) -> Result<Timeout, String> {
        if (1..=i128::from(MAX_HOOK_TIMEOUT)).contains(&value) {
            Ok(Timeout(value as u32))
        } else {
            Err(format!(
                "timeout {value} is outside 1..={MAX_HOOK_TIMEOUT} seconds (CodeDeploy's limit for a hook)"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Timeout, E> {
                Timeout::new(value.into()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Timeout, E> {
                Timeout::new(value.into()).map_err(E::custom)
            }
        }
        deserializer.deserialize_u64(Visitor)
    }
}

impl From<Timeout> for u32 {
    fn from(value: Timeout) -> u32 {
        value.0
    }
}

impl Timeout {
    /// Seconds.
    pub fn secs(self) -> u32 {
        self.0
    }
}

/// A count of at least `MIN`, checked while parsing so the error has its line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLeast<const MIN: u32>(u32);

impl<const MIN: u32> AtLeast<MIN> {
    /// Validates `value`.
    pub fn new(value: u64) -> Result<Self, String> {
        match u32::try_from(value) {
            Ok(v) if v >= MIN => Ok(AtLeast(v)),
            _ => Err(format!("{value} is below {MIN}")),
        }
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<const MIN: u32> Serialize for AtLeast<MIN> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de, const MIN: u32> Deserialize<'de> for AtLeast<MIN> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<const MIN: u32>;
        impl<const MIN: u32> serde::de::Visitor<'_> for Visitor<MIN> {
            type Value = AtLeast<MIN>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number of at least {MIN}")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<AtLeast<MIN>, E> {
                AtLeast::new(value).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<AtLeast<MIN>, E> {
                AtLeast::new(value.max(0) as u64).map_err(|_| E::custom(format!("{value} is below {MIN}")))
            }
        }
        deserializer.deserialize_u64(Visitor::<MIN>)
    }
}

/// A duration in seconds that may have a fraction (hypercorn's timeouts): finite, at least 0,
/// at most [`MAX_HOOK_TIMEOUT`] (no lifecycle event, and so no stop, can last longer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(into = "f64")]
pub struct Seconds(f64);

impl Seconds {
    /// Validates `value`.
    pub fn new(value: f64) -> Result<Seconds, String> {
        if value.is_finite() && (0.0..=f64::from(MAX_HOOK_TIMEOUT)).contains(&value) {
            Ok(Seconds(value))
        } else {
            Err(format!("{value} is not a finite number of seconds in 0..={MAX_HOOK_TIMEOUT}"))
        }
    }

    /// The seconds.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl From<Seconds> for f64 {
    fn from(value: Seconds) -> f64 {
        value.0
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Seconds, E> {
                Seconds::new(value).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Seconds, E> {
                Seconds::new(value as f64).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Seconds, E> {
                Seconds::new(value as f64).map_err(E::custom)
            }
        }
        deserializer.deserialize_f64(Visitor)
    }
}

/// A command line: at least one word, each free of control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Argv(Vec<Text>);

impl Argv {
    /// Validates `words`.
    pub fn new(words: Vec<Text>) -> Result<Argv, String> {
        if words.is_empty() {
            Err("the command is empty: give the program and its arguments, like [python, manage.py, migrate]"
                .into())
        } else {
            Ok(Argv(words))
        }
    }

    /// The program.
    pub fn program(&self) -> &Text {
        &self.0[0]
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[Text] {
        &self.0[1..]
    }
}

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of words")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<Text>()? {
                    words.push(word);
                }
                Argv::new(words).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// A venv name as [`venv_key`] makes it: `v-` and 16 lowercase hex digits. It becomes a path
/// component under `<app_root>/venvs/`, so nothing else is accepted.
fn venv_key_name(value: &str) -> Result<(), String> {
    let ok = value.strip_prefix("v-").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok { Ok(()) } else { Err(format!("{value:?} is not a venv key (v- and 16 lowercase hex digits)")) }
}

validated_string!(
    /// The name of a venv under `<app_root>/venvs/`, as [`venv_key`] makes it.
    VenvKey, venv_key_name);

// release.yaml keeps plain types for the hook; these hold its values to deploy.yaml's rules.
fn at_least<'de, const MIN: u32, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    AtLeast::<MIN>::deserialize(deserializer).map(AtLeast::get)
}

fn venv_key_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    VenvKey::deserialize(deserializer).map(|key| key.0)
}

// ---------------------------------------------------------------------------------------------
// deploy.yaml

/// How the hook builds the virtualenv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Installer {
    /// uv when the instance has it, else venv + pip.
    #[default]
    Auto,
    /// Always uv; fails when the instance has none.
    Uv,
    /// Always `python -m venv` and pip.
    Pip,
}

impl Installer {
    /// The name in deploy.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Installer::Auto => "auto",
            Installer::Uv => "uv",
            Installer::Pip => "pip",
        }
    }
}

/// Where the instance gets the Python packages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependencies {
    /// The revision carries a wheel for every requirement and `bin/uv`, built for the instances'
    /// arch and Python at bundle time; the instance installs them with no index.
    #[default]
    Vendored,
    /// The instance downloads the pinned requirements from its package index.
    Index,
}

impl Dependencies {
    /// The name in deploy.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependencies::Vendored => "vendored",
            Dependencies::Index => "index",
        }
    }
}

/// systemd's `Restart=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum RestartPolicy {
    No,
    Always,
    OnSuccess,
    #[default]
    OnFailure,
    OnAbnormal,
    OnAbort,
    OnWatchdog,
}

impl RestartPolicy {
    /// The value systemd reads.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnSuccess => "on-success",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnAbnormal => "on-abnormal",
            RestartPolicy::OnAbort => "on-abort",
            RestartPolicy::OnWatchdog => "on-watchdog",
        }
    }
}

/// hypercorn's worker classes that need no code of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum WorkerClass {
    Asyncio,
    Uvloop,
    Trio,
}

/// The `service:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unit name; default `<app>.service`.
    pub unit: Option<UnitName>,
    /// `Description=`; default `<app> (hypercorn)`.
    pub description: Option<Text>,
    /// The ASGI application, `module:attribute`.
    #[serde(default = "default_asgi_app")]
    pub asgi_app: AsgiApp,
    /// `Restart=`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `RestartSec=`, seconds.
    #[serde(default = "default_restart_sec")]
    pub restart_sec: u32,
    /// `Environment=` assignments.
    #[serde(default)]
    pub environment: BTreeMap<EnvName, Text>,
    /// Stop the service in ApplicationStop (default: keep serving until ApplicationStart).
    #[serde(default)]
    pub stop_on_application_stop: bool,
    /// Listen through `<unit>.socket` (or the process manager's socket holder), so a restart
    /// queues connections instead of refusing them.
    #[serde(default = "default_true")]
    pub socket_activation: bool,
    /// Sandboxing directives that replace or add to the unit's defaults.
    #[serde(default)]
    pub hardening: hardening::Hardening,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            unit: None,
            description: None,
            asgi_app: default_asgi_app(),
            restart: RestartPolicy::default(),
            restart_sec: default_restart_sec(),
            environment: BTreeMap::new(),
            stop_on_application_stop: false,
            socket_activation: true,
            hardening: hardening::Hardening::default(),
        }
    }
}

/// The `hypercorn:` section: only keys hypercorn's `Config` knows (it ignores unknown ones
/// silently, so we refuse them here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HypercornConfig {
    #[serde(default = "default_bind")]
    pub bind: Vec<Text>,
    #[serde(default = "default_workers")]
    pub workers: AtLeast<1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_class: Option<WorkerClass>,
    #[serde(default = "default_graceful_timeout")]
    pub graceful_timeout: Seconds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_path: Option<Text>,
    #[serde(default = "default_dash")]
    pub accesslog: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<Text>,
    #[serde(default = "default_dash")]
    pub errorlog: Text,
    #[serde(default = "default_loglevel")]
    pub loglevel: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_server_header: Option<bool>,
}

impl Default for HypercornConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every hypercorn key has a default")
    }
}

/// The `health:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// URL to GET; default `http://<first TCP bind>/healthz`, with 0.0.0.0 read as 127.0.0.1.
    pub url: Option<HealthUrl>,
    /// Seconds for one try.
    pub try_timeout: Option<AtLeast<1>>,
    /// Seconds for all tries.
    pub deadline: Option<AtLeast<1>>,
    /// Seconds between tries.
    pub interval: Option<u32>,
}

/// One post-install command (a migration, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostInstall {
    /// A name for logs.
    pub name: Text,
    /// The argv, run without a shell in the staged release, the venv first on PATH.
    pub run: Argv,
    /// Seconds before it is killed (1..=3600; the hook also stops it when AfterInstall's own
    /// timeout runs out).
    #[serde(default = "default_post_install_timeout")]
    pub timeout: Timeout,
}

/// The `timeouts:` section: seconds per lifecycle event, each 1..=3600.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Timeouts {
    #[serde(default = "t60")]
    pub application_stop: Timeout,
    #[serde(default = "t300")]
    pub before_install: Timeout,
    #[serde(default = "t1200")]
    pub after_install: Timeout,
    #[serde(default = "t300")]
    pub application_start: Timeout,
    #[serde(default = "t300")]
    pub validate_service: Timeout,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            application_stop: t60(),
            before_install: t300(),
            after_install: t1200(),
            application_start: t300(),
            validate_service: t300(),
        }
    }
}

impl Timeouts {
    /// The timeout of one event; load balancer events get ApplicationStop's.
    pub fn of(&self, event: LifecycleEvent) -> Timeout {
        match event {
            LifecycleEvent::BeforeInstall => self.before_install,
            LifecycleEvent::AfterInstall => self.after_install,
            LifecycleEvent::ApplicationStart => self.application_start,
            LifecycleEvent::ValidateService => self.validate_service,
            _ => self.application_stop,
        }
    }
}

/// `deploy.yaml` as written, before defaults that depend on other keys are resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// The app's name: bundle names, default unit name.
    pub app: AppName,
    /// The user the service and the venv build run as; default `snake`, as in the seed.
    #[serde(default = "default_user")]
    pub user: PosixName,
    /// Default: the user's name.
    pub group: Option<PosixName>,
    /// Default: `/home/<user>/app`.
    pub app_root: Option<AbsPath>,
    /// The application source, relative to the app directory.
    #[serde(default = "default_source_dir")]
    pub source_dir: RelPath,
    /// The pinned requirements, relative to the app directory.
    #[serde(default = "default_requirements")]
    pub requirements: RelPath,
    /// The `.env` template, relative to the app directory.
    #[serde(default = "default_env_sample")]
    pub env_sample: RelPath,
    /// Files that outlive releases: linked from `shared/`.
    #[serde(default)]
    pub shared_files: Vec<RelPath>,
    /// Directories that outlive releases: linked from `shared/`.
    #[serde(default)]
    pub shared_dirs: Vec<RelPath>,
    /// How many good releases to keep (at least 2: the current and the previous).
    #[serde(default = "default_keep")]
    pub keep_releases: AtLeast<2>,
    /// The interpreter on the instance that builds the venv.
    #[serde(default = "default_python")]
    pub python: AbsPath,
    /// How the venv is built.
    #[serde(default)]
    pub installer: Installer,
    /// `vendored` (default): wheels and uv in the revision; `index`: pip or uv downloads them on
    /// the instance.
    #[serde(default)]
    pub dependencies: Dependencies,
    /// The instances' CPython version, `3.N`: the wheels are chosen for it.
    #[serde(default = "default_python_version")]
    pub python_version: PyVersion,
    /// The platform tag family of the instances with its libc floor (the arch comes from
    /// `--target`): the wheels are chosen for it.
    #[serde(default = "default_platform")]
    pub platform: PlatformTag,
    /// Requirements with no wheel for the platform that may be built from their sdist at bundle
    /// time (pure-Python packages only: the build runs on the build machine).
    #[serde(default)]
    pub build_sdists: Vec<Text>,
    /// The systemd service.
    #[serde(default)]
    pub service: ServiceConfig,
    /// hypercorn's configuration.
    #[serde(default)]
    pub hypercorn: HypercornConfig,
    /// The health check of ValidateService.
    #[serde(default)]
    pub health: HealthConfig,
    /// Commands run in the staged release before the switch.
    #[serde(default)]
    pub post_install: Vec<PostInstall>,
    /// Seconds per lifecycle event.
    #[serde(default)]
    pub timeouts: Timeouts,
}

fn default_user() -> PosixName {
    PosixName("snake".into())
}
fn default_source_dir() -> RelPath {
    RelPath("src".into())
}
fn default_requirements() -> RelPath {
    RelPath("requirements.pip".into())
}
fn default_env_sample() -> RelPath {
    RelPath("configs/sample.env".into())
}
fn default_keep() -> AtLeast<2> {
    AtLeast(5)
}
fn default_python() -> AbsPath {
    AbsPath("/usr/bin/python3".into())
}
fn default_python_version() -> PyVersion {
    PyVersion("3.11".into())
}
fn default_platform() -> PlatformTag {
    PlatformTag("manylinux_2_17".into())
}
fn default_asgi_app() -> AsgiApp {
    AsgiApp("app:app".into())
}
fn default_true() -> bool {
    true
}
fn default_restart_sec() -> u32 {
    2
}
fn default_bind() -> Vec<Text> {
    vec![Text("127.0.0.1:8000".into())]
}
fn default_workers() -> AtLeast<1> {
    AtLeast(1)
}
fn default_graceful_timeout() -> Seconds {
    Seconds(10.0)
}
fn default_dash() -> Text {
    Text("-".into())
}
fn default_loglevel() -> Text {
    Text("INFO".into())
}
fn default_post_install_timeout() -> Timeout {
    Timeout(300)
}
fn t60() -> Timeout {
    Timeout(60)
}
fn t300() -> Timeout {
    Timeout(300)
}
fn t1200() -> Timeout {
    Timeout(1200)
}

// ---------------------------------------------------------------------------------------------
// release.yaml

/// The resolved health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Health {
    pub url: HealthUrl,
    #[serde(deserialize_with = "at_least::<1, _>")]
    pub try_timeout: u32,
    #[serde(deserialize_with = "at_least::<1, _>")]
    pub deadline: u32,
    pub interval: u32,
}

/// `deploy/release.yaml`: every value the hook needs, resolved at bundle time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Release {
    /// Format version of this file.
    pub schema: u32,
    pub app: AppName,
    pub user: PosixName,
    pub group: PosixName,
    pub app_root: AbsPath,
    pub unit: UnitName,
    pub python: AbsPath,
    pub installer: Installer,
    /// The instances' CPU architecture, as the hook binary was built for.
    pub arch: String,
    /// Names the venv under `<app_root>/venvs/`; see [`venv_key`].
    #[serde(deserialize_with = "venv_key_string")]
    pub venv_key: String,
    /// Where the packages come from.
    #[serde(default)]
    pub dependencies: Dependencies,
    /// The wheels' target, when vendored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheels: Option<WheelTarget>,
    #[serde(deserialize_with = "at_least::<2, _>")]
    pub keep_releases: u32,
    pub shared_files: Vec<RelPath>,
    pub shared_dirs: Vec<RelPath>,
    pub stop_on_application_stop: bool,
    /// The unit listens through `<unit stem>.socket`; absent in releases made before it existed.
    #[serde(default)]
    pub socket_activation: bool,
    pub health: Health,
    pub post_install: Vec<PostInstall>,
    pub timeouts: Timeouts,
}

/// What the vendored wheels were chosen for, and the uv that came with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelTarget {
    /// CPython `3.N`.
    pub python_version: PyVersion,
    /// The CPython ABI tag, `cp3N`.
    pub abi: String,
    /// The full platform tag, `manylinux_2_17_x86_64`.
    pub platform: String,
    /// The version of `bin/uv`, from the uv wheel it was taken from.
    pub uv_version: String,
}

impl WheelTarget {
    /// What goes into the venv key.
    pub fn key_part(&self) -> String {
        format!("{} {} {}", self.python_version, self.abi, self.platform)
    }
}

impl PyVersion {
    /// The CPython ABI tag, `cp311` for 3.11.
    pub fn abi(&self) -> String {
        format!("cp{}", self.0.replace('.', ""))
    }
}

/// The current `schema` of release.yaml.
pub const RELEASE_SCHEMA: u32 = 1;

/// The venv's name: a hash of everything that makes it what it is.
///
/// The installer *setting* is hashed, not what `auto` picks on a host, so the bundle and the
/// hook agree on the name. `target` is what the wheels were chosen for (the Python version, ABI
/// and platform; empty with `dependencies: index`), and the requirements carry every wheel's
/// hash when vendored, so a venv is shared only by releases that install the same wheels. The
/// interpreter's real version is checked against the venv's marker on the instance.
pub fn venv_key(python: &str, installer: Installer, target: &str, requirements: &[u8]) -> String {
    let mut hasher = Sha256::new();
    let parts = [
        b"venv-v2".as_slice(),
        python.as_bytes(),
        installer.as_str().as_bytes(),
        target.as_bytes(),
        requirements,
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    format!("v-{}", &crate::hex(&digest)[..16])
}

#[cfg(feature = "build")]
fn yaml_error(path: &Path, err: serde_yaml::Error) -> ConfigError {
    ConfigError::Invalid { path: path.display().to_string(), message: err.to_string() }
}

/// The rules on `shared_files` and `shared_dirs` that span both lists: nothing where the release
/// puts its own files, nothing listed twice. Both deploy.yaml and release.yaml are held to them.
fn check_shared(files: &[RelPath], dirs: &[RelPath]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    let shared = files.iter().map(|p| ("shared_files", p));
    for (key, path) in shared.chain(dirs.iter().map(|p| ("shared_dirs", p))) {
        let top = path.as_str().split('/').next().unwrap_or_default();
        if crate::layout::RESERVED_IN_RELEASE.contains(&top) {
            let hint = match top {
                ".env" => {
                    "the service's environment file is /var/lib/deploy-hook/<app>/service.env on the instance, root's, seeded from env_sample"
                }
                _ => "choose another path",
            };
            return Err(format!("{key}: {path} is where the release puts its own {top}; {hint}"));
        }
        if !seen.insert(path.as_str()) {
            return Err(format!("{key}: {path} is listed twice in shared_files and shared_dirs"));
        }
    }
    Ok(())
}

impl DeployConfig {
    /// Reads and validates `path`.
    #[cfg(feature = "build")]
    pub fn load(path: &Path) -> Result<DeployConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        DeployConfig::parse(path, &text)
    }

    /// Validates `text`, naming `path` in errors.
    #[cfg(feature = "build")]
    pub fn parse(path: &Path, text: &str) -> Result<DeployConfig, ConfigError> {
        let config: DeployConfig = serde_yaml::from_str(text).map_err(|err| yaml_error(path, err))?;
        let invalid = |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        if config.hypercorn.bind.is_empty() {
            return Err(invalid("hypercorn.bind: at least one address is needed".into()));
        }
        check_shared(&config.shared_files, &config.shared_dirs).map_err(invalid)?;
        if config.service.socket_activation {
            for (i, bind) in config.hypercorn.bind.iter().enumerate() {
                listen_stream(bind.as_str()).map_err(|why| {
                    // The value's place in the text, for a message like serde_yaml's own.
                    let after = text.find("hypercorn:").unwrap_or(0);
                    let at = text[after..].find(bind.as_str()).map(|off| {
                        let before = &text[..after + off];
                        let line = before.matches('\n').count() + 1;
                        let col = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
                        format!(" at line {line} column {col}")
                    });
                    invalid(format!("hypercorn.bind[{i}]: {why}{}", at.unwrap_or_default()))
                })?;
            }
        }
        if config.health.url.is_none() && config.default_health_url().is_none() {
            return Err(invalid(
                "health.url: no TCP address in hypercorn.bind to derive it from; set health.url".into(),
            ));
        }
        Ok(config)
    }

    /// The group, defaulting to the user's name.
    pub fn group(&self) -> PosixName {
        self.group.clone().unwrap_or_else(|| PosixName(self.user.0.clone()))
    }

    /// The app root, defaulting to `/home/<user>/app` as in the seed.
    pub fn app_root(&self) -> AbsPath {
        self.app_root.clone().unwrap_or_else(|| AbsPath(format!("/home/{}/app", self.user)))
    }

    /// The unit name, defaulting to `<app>.service`.
    pub fn unit(&self) -> UnitName {
        self.service.unit.clone().unwrap_or_else(|| UnitName(format!("{}.service", self.app)))
    }

    /// The unit description.
    pub fn description(&self) -> String {
        match &self.service.description {
            Some(it) => it.0.clone(),
            None => format!("{} (hypercorn ASGI service)", self.app),
        }
    }

    fn default_health_url(&self) -> Option<HealthUrl> {
        self.hypercorn.bind.iter().find_map(|bind| {
            let bind = bind.as_str();
            if bind.starts_with("unix:") || bind.starts_with("fd://") {
                return None;
            }
            let (host, port) = bind.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            let host = match host {
                "0.0.0.0" | "" => "127.0.0.1",
                "[::]" => "[::1]",
                other => other,
            };
            Some(HealthUrl(format!("http://{host}:{port}/healthz")))
        })
    }

    /// Resolves every default; `requirements` is the content of the requirements file as
    /// shipped (hash-pinned when vendored), `arch` the instances' architecture, `uv_version` the
    /// bundled uv's (when vendored).
    pub fn resolve(&self, requirements: &[u8], arch: &str, uv_version: Option<&str>) -> Release {
        let health = &self.health;
        let wheels = match (self.dependencies, uv_version) {
            (Dependencies::Vendored, Some(uv)) => Some(WheelTarget {
                python_version: self.python_version.clone(),
                abi: self.python_version.abi(),
                platform: format!("{}_{arch}", self.platform),
                uv_version: uv.to_owned(),
            }),
            _ => None,
        };
        Release {
            schema: RELEASE_SCHEMA,
            app: self.app.clone(),
            user: self.user.clone(),
            group: self.group(),
            app_root: self.app_root(),
            unit: self.unit(),
            python: self.python.clone(),
            installer: self.installer,
            arch: arch.to_owned(),
            venv_key: venv_key(
                self.python.as_str(),
                self.installer,
                &wheels.as_ref().map(WheelTarget::key_part).unwrap_or_default(),
                requirements,
            ),
            dependencies: self.dependencies,
            wheels,
            keep_releases: self.keep_releases.get(),
            shared_files: self.shared_files.clone(),
            shared_dirs: self.shared_dirs.clone(),
            stop_on_application_stop: self.service.stop_on_application_stop,
            socket_activation: self.service.socket_activation,
            health: Health {
                url: health.url.clone().or_else(|| self.default_health_url()).expect("checked in parse"),
                try_timeout: health.try_timeout.map_or(2, AtLeast::get),
                deadline: health.deadline.map_or(60, AtLeast::get),
                interval: health.interval.unwrap_or(1),
            },
            post_install: self.post_install.clone(),
            timeouts: self.timeouts,
        }
    }
}

/// The `ListenStream=` value of one hypercorn bind, for socket activation: an IP address and
/// port (hypercorn's default port 8000 when none is given) or a unix socket path.
pub fn listen_stream(bind: &str) -> Result<String, String> {
    if let Some(path) = bind.strip_prefix("unix:") {
        absolute_path(path).map_err(|why| format!("{bind}: {why}"))?;
        return Ok(path.to_owned());
    }
    if bind.starts_with("fd://") {
        return Err(format!(
            "{bind}: with service.socket_activation the binds are handed over as fd://; list addresses instead"
        ));
    }
    let (host, port) = match bind.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, port),
        _ => (bind, "8000"),
    };
    let port: u16 = port.parse().map_err(|_| format!("{bind}: {port:?} is not a port"))?;
    let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
        format!(
            "{bind}: socket activation needs an IP address, not a host name (systemd's ListenStream= does not resolve names); write 127.0.0.1:{port}, or set service.socket_activation: false"
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

/// The key path (`health.deadline`, `post_install[0].run`) of the value serde_json stopped at,
/// `line` and `column` as it reports them (1-based; column 0 before the line's first byte), so
/// release.yaml errors name the key as deploy.yaml's do. A scan of the JSON structure up to that
/// point; a closing bracket there is the end of the value that failed, so it is included.
fn json_key_path(text: &str, line: usize, column: usize) -> String {
    enum Frame {
        Object { key: Option<String>, expect_key: bool },
        Array { index: usize },
    }
    if line == 0 {
        return String::new();
    }
    let line_start: usize = text.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let bytes = text.as_bytes();
    let mut end = (line_start + column).min(bytes.len());
    if end > 0 && matches!(bytes[end - 1], b']' | b'}') {
        // serde_json's column is the last byte read: the bracket closing the failed value.
    } else {
        end = end.saturating_sub(1);
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => stack.push(Frame::Object { key: None, expect_key: true }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key, expect_key }) => {
                    *key = None;
                    *expect_key = true;
                }
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key, expect_key: true }) = stack.last_mut() {
                    // Keys of release.yaml are plain field names: no escapes to decode.
                    *key = std::str::from_utf8(&bytes[start..i.min(bytes.len())]).ok().map(str::to_owned);
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

impl Release {
    /// The socket unit next to the service unit, `<stem>.socket`, when the release uses socket
    /// activation.
    pub fn socket_unit(&self) -> Option<String> {
        let stem = self.unit.as_str().strip_suffix(".service").expect("checked while parsing");
        self.socket_activation.then(|| format!("{stem}.socket"))
    }

    /// Parses release.yaml, naming `path` in errors, with the rules deploy.yaml's values were
    /// held to: a release.yaml edited after bundling gets no further than a bad deploy.yaml.
    pub fn parse(path: &Path, text: &str) -> Result<Release, ConfigError> {
        // serde_json knows line and column; the key path comes from a scan of the text
        // (json_key_path), as serde_yaml gives it for deploy.yaml.
        let invalid = |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        let release: Release = serde_json::from_str(text).map_err(|err| {
            invalid(match json_key_path(text, err.line(), err.column()) {
                key if key.is_empty() => err.to_string(),
                key => format!("{key}: {err}"),
            })
        })?;
        if release.schema != RELEASE_SCHEMA {
            return Err(invalid(format!(
                "schema {} is not {RELEASE_SCHEMA}: bundle and hook versions differ",
                release.schema
            )));
        }
        check_shared(&release.shared_files, &release.shared_dirs).map_err(invalid)?;
        Ok(release)
    }

    /// The text of release.yaml: YAML in its JSON-compatible style (JSON is YAML 1.2), so the
    /// hook reads it without a YAML parser and stays under 1 MiB. It can hold no comment.
    pub fn to_yaml(&self) -> String {
        let mut body = serde_json::to_string_pretty(self).expect("a release serializes");
        body.push('\n');
        body
    }

    /// The venv key the shipped `requirements` give with this release's settings; the hook
    /// checks it against [`Release::venv_key`].
    pub fn expected_venv_key(&self, requirements: &[u8]) -> String {
        let target = self.wheels.as_ref().map(WheelTarget::key_part).unwrap_or_default();
        venv_key(self.python.as_str(), self.installer, &target, requirements)
    }

    /// `<app_root>/venvs/<venv_key>`, the venv every release with these dependencies uses.
    pub fn venv_dir(&self) -> String {
        format!("{}/venvs/{}", self.app_root, self.venv_key)
    }
}

#[cfg(test)]
mod tests;
