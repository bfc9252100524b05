//! Wheel file names (PEP 427 / PEP 425 tags) and whether a wheel fits an interpreter: the one
//! rule the bundler, `verify` and the hook's BeforeInstall check all apply.
//!
//! A wheel fits when one of its Python tags, one of its ABI tags and one of its platform tags
//! fit, as pip's `packaging.tags` decides for CPython on Linux: `cp3N`/`py3`/`py3N` Python tags,
//! `cp3N`/`abi3`/`none` ABIs, and `any`, `manylinux_X_Y_<arch>` (with the legacy aliases
//! `manylinux1`, `manylinux2010`, `manylinux2014`) or `musllinux_X_Y_<arch>` platforms, where the
//! libc floor `X.Y` must not exceed the instance's.

use std::fmt;

/// A parsed wheel file name: `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`, each
/// tag part possibly a `.`-separated set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    /// The distribution name, normalized (PEP 503: lower case, runs of `-_.` as one `-`).
    pub name: String,
    /// The version.
    pub version: String,
    /// Python tags.
    pub python: Vec<String>,
    /// ABI tags.
    pub abi: Vec<String>,
    /// Platform tags.
    pub platform: Vec<String>,
}

/// The C library of an interpreter, with its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    /// glibc `major.minor`.
    Glibc(u32, u32),
    /// musl `major.minor`.
    Musl(u32, u32),
}

/// What a wheel must fit: the instance's interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// CPython `(3, minor)`.
    pub version: (u32, u32),
    /// The ABI tag, `cp311` (`cp313t` for a free-threaded build).
    pub abi: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// The C library; `None` when unknown (then only `any` platforms fit).
    pub libc: Option<Libc>,
}

impl fmt::Display for Interpreter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPython {}.{} ({}, {}", self.version.0, self.version.1, self.abi, self.arch)?;
        match self.libc {
            Some(Libc::Glibc(a, b)) => write!(f, ", glibc {a}.{b})"),
            Some(Libc::Musl(a, b)) => write!(f, ", musl {a}.{b})"),
            None => write!(f, ", libc unknown)"),
        }
    }
}

/// PEP 503 normalization of a distribution name.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

impl WheelName {
    /// Parses a wheel's file name.
    pub fn parse(file: &str) -> Result<WheelName, String> {
        let stem = file.strip_suffix(".whl").ok_or_else(|| format!("{file}: not a .whl file name"))?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, tags) = match parts.as_slice() {
            [name, version, py, abi, plat] => (name, version, [py, abi, plat]),
            [name, version, _build, py, abi, plat] => (name, version, [py, abi, plat]),
            _ => return Err(format!("{file}: not NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl")),
        };
        if name.is_empty() || version.is_empty() || tags.iter().any(|t| t.is_empty()) {
            return Err(format!("{file}: empty part in the wheel name"));
        }
        let split = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        Ok(WheelName {
            name: normalize_name(name),
            version: (*version).to_owned(),
            python: split(tags[0]),
            abi: split(tags[1]),
            platform: split(tags[2]),
        })
    }

    /// Whether this wheel installs on `interp`; the error says which tag does not fit.
    pub fn fits(&self, interp: &Interpreter) -> Result<(), String> {
        let (major, minor) = interp.version;
        let py_ok = |tag: &str| -> bool {
            let Some((kind, ver)) = tag.split_at_checked(2) else { return false };
            let Some(rest) = ver.strip_prefix(&major.to_string()) else { return false };
            let tag_minor: Option<u32> = if rest.is_empty() { None } else { rest.parse().ok() };
            match (kind, tag_minor) {
                ("py", None) => true,
                ("py", Some(m)) => m <= minor,
                ("cp", Some(m)) => m <= minor,
                _ => false,
            }
        };
        if !self.python.iter().any(|t| py_ok(t)) {
            return Err(format!(
                "its Python tags {} do not include Python {major}.{minor}",
                self.python.join(".")
            ));
        }
        let abi_ok = |tag: &str| -> bool {
            match tag {
                "none" => true,
                "abi3" => self.python.iter().any(|p| p.starts_with("cp") && py_ok(p)),
                other => other == interp.abi,
            }
        };
        if !self.abi.iter().any(|t| abi_ok(t)) {
            return Err(format!("its ABI tags {} do not include {}", self.abi.join("."), interp.abi));
        }
        if !self.platform.iter().any(|t| platform_fits(t, &interp.arch, interp.libc)) {
            return Err(format!(
                "its platform tags {} do not fit {} with {}",
                self.platform.join("."),
                interp.arch,
                match interp.libc {
                    Some(Libc::Glibc(a, b)) => format!("glibc {a}.{b}"),
                    Some(Libc::Musl(a, b)) => format!("musl {a}.{b}"),
                    None => "an unknown libc".into(),
                }
            ));
        }
        Ok(())
    }

    /// The highest libc floor among its platform tags' smallest: what the instance needs at
    /// least, or `None` for a pure wheel.
    pub fn libc_floor(&self) -> Option<Libc> {
        self.platform.iter().filter_map(|t| platform_parts(t).map(|(libc, _)| libc)).min_by_key(|l| match l {
            Libc::Glibc(a, b) | Libc::Musl(a, b) => (*a, *b),
        })
    }
}

/// `manylinux_2_17_x86_64` -> (glibc 2.17, "x86_64"); the legacy aliases too.
fn platform_parts(tag: &str) -> Option<(Libc, &str)> {
    for (alias, floor) in [("manylinux1_", (2, 5)), ("manylinux2010_", (2, 12)), ("manylinux2014_", (2, 17))]
    {
        if let Some(arch) = tag.strip_prefix(alias) {
            return Some((Libc::Glibc(floor.0, floor.1), arch));
        }
    }
    let (family, rest) = if let Some(rest) = tag.strip_prefix("manylinux_") {
        (true, rest)
    } else {
        (false, tag.strip_prefix("musllinux_")?)
    };
    let mut it = rest.splitn(3, '_');
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = it.next()?.parse().ok()?;
    let arch = it.next()?;
    Some((if family { Libc::Glibc(major, minor) } else { Libc::Musl(major, minor) }, arch))
}

fn platform_fits(tag: &str, arch: &str, libc: Option<Libc>) -> bool {
    if tag == "any" {
        return true;
    }
    match (platform_parts(tag), libc) {
        (Some((Libc::Glibc(a, b), tag_arch)), Some(Libc::Glibc(x, y))) => {
            tag_arch == arch && (a, b) <= (x, y)
        }
        (Some((Libc::Musl(a, b), tag_arch)), Some(Libc::Musl(x, y))) => tag_arch == arch && (a, b) <= (x, y),
        _ => false,
    }
}

/// The interpreter a bundle's wheels were chosen for: CPython `python_version`, its ABI, and
/// the libc floor and arch of `platform` (`manylinux_2_17_x86_64`).
pub fn target_interpreter(python_version: &str, abi: &str, platform: &str) -> Option<Interpreter> {
    let minor = python_version.strip_prefix("3.")?.parse().ok()?;
    let (libc, arch) = platform_parts(platform)?;
    Some(Interpreter { version: (3, minor), abi: abi.to_owned(), arch: arch.to_owned(), libc: Some(libc) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(arch: &str, glibc: (u32, u32)) -> Interpreter {
        Interpreter {
            version: (3, 11),
            abi: "cp311".into(),
            arch: arch.into(),
            libc: Some(Libc::Glibc(glibc.0, glibc.1)),
        }
    }

    #[test]
    fn tags_fit_or_say_why() {
        let x86 = interp("x86_64", (2, 36));
        let ms = WheelName::parse(
            "markupsafe-3.0.3-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl",
        )
        .unwrap();
        assert_eq!(ms.name, "markupsafe");
        assert_eq!(ms.libc_floor(), Some(Libc::Glibc(2, 17)));
        assert!(ms.fits(&interp("aarch64", (2, 36))).is_ok());
        let err = ms.fits(&x86).unwrap_err();
        assert!(err.contains("do not fit x86_64 with glibc 2.36"), "{err}");
        assert!(ms.fits(&interp("aarch64", (2, 12))).is_err());

        let pure = WheelName::parse("h11-0.16.0-py3-none-any.whl").unwrap();
        assert!(pure.fits(&x86).is_ok());
        assert_eq!(pure.libc_floor(), None);

        let abi3 = WheelName::parse("cryptography-44.0.0-cp39-abi3-manylinux_2_28_x86_64.whl").unwrap();
        assert!(abi3.fits(&x86).is_ok());
        assert!(abi3.fits(&interp("x86_64", (2, 17))).is_err());

        let cp312 = WheelName::parse("Foo_Bar-1.0-cp312-cp312-manylinux_2_17_x86_64.whl").unwrap();
        assert_eq!(cp312.name, "foo-bar");
        let err = cp312.fits(&x86).unwrap_err();
        assert!(err.contains("Python tags cp312"), "{err}");

        let musl = WheelName::parse("x-1-cp311-cp311-musllinux_1_2_x86_64.whl").unwrap();
        assert!(musl.fits(&x86).is_err());
        assert!(WheelName::parse("nope.tar.gz").is_err());
        assert!(WheelName::parse("a-1-py3-none.whl").is_err());
    }

    #[test]
    fn target_of_a_bundle() {
        let t = target_interpreter("3.11", "cp311", "manylinux_2_17_aarch64").unwrap();
        assert_eq!(t, interp("aarch64", (2, 17)));
        assert!(target_interpreter("3.x", "cp3x", "manylinux_2_17_aarch64").is_none());
    }
}
