//! Rendering appspec.yml for an EC2/on-prem revision whose every hook is one binary.

use serde::Serialize;

use crate::{LifecycleEvent, MAX_HOOK_TIMEOUT};

/// One script of one lifecycle event.
#[derive(Debug, Clone, Serialize)]
pub struct HookScript {
    /// Path of the script inside the revision, relative to its root.
    pub location: String,
    /// Seconds before the agent sends SIGTERM to the script's process group.
    pub timeout: u32,
}

/// An AppSpec with no `files:` section: the hook builds the release itself.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// The scripts of each event, in the agent's order.
    pub hooks: Vec<(LifecycleEvent, HookScript)>,
}

/// Why an AppSpec cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A timeout outside 1..=3600.
    #[error("{event}: timeout {timeout} is outside 1..={MAX_HOOK_TIMEOUT} seconds")]
    Timeout {
        /// The event whose script has the timeout.
        event: LifecycleEvent,
        /// The timeout given.
        timeout: u32,
    },
    /// A location that is not a plain relative path without spaces.
    #[error("{event}: hook location {location:?} must be a relative path without spaces or '..'")]
    Location {
        /// The event whose script has the location.
        event: LifecycleEvent,
        /// The location given.
        location: String,
    },
}

#[derive(Serialize)]
struct Document {
    // A float: the agent compares with `[0.0].include?`, and a quoted "0.0" fails.
    version: f64,
    os: &'static str,
    hooks: serde_yaml::Mapping,
}

impl AppSpec {
    /// The five in-place events, each running `location` with its timeout from `timeout_of`.
    pub fn single_binary(location: &str, timeout_of: impl Fn(LifecycleEvent) -> u32) -> AppSpec {
        let hooks = LifecycleEvent::IN_PLACE
            .into_iter()
            .map(|event| {
                let script = HookScript { location: location.to_owned(), timeout: timeout_of(event) };
                (event, script)
            })
            .collect();
        AppSpec { hooks }
    }

    /// Renders the YAML text, checking every value the agent would misread.
    pub fn render(&self) -> Result<String, RenderError> {
        let mut hooks = serde_yaml::Mapping::new();
        for (event, script) in &self.hooks {
            let (event, timeout) = (*event, script.timeout);
            if !(1..=MAX_HOOK_TIMEOUT).contains(&timeout) {
                return Err(RenderError::Timeout { event, timeout });
            }
            let location = &script.location;
            let plain = !location.is_empty()
                && !location.starts_with('/')
                && location.bytes().all(|b| b.is_ascii_graphic())
                && location.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
            if !plain {
                return Err(RenderError::Location { event, location: location.clone() });
            }
            let value = serde_yaml::to_value(vec![script]).expect("a script serializes");
            hooks.insert(event.name().into(), value);
        }
        let doc = Document { version: 0.0, os: "linux", hooks };
        let body = serde_yaml::to_string(&doc).expect("an appspec serializes");
        Ok(format!("# Rendered by `cargo xtask bundle`; every hook is the same static binary.\n{body}"))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn renders_every_in_place_event() {
        let spec = AppSpec::single_binary("bin/deploy-hook", |event| match event {
            LifecycleEvent::AfterInstall => 900,
            _ => 300,
        });
        expect![[r#"
            # Rendered by `cargo xtask bundle`; every hook is the same static binary.
            version: 0.0
            os: linux
            hooks:
              ApplicationStop:
              - location: bin/deploy-hook
                timeout: 300
              BeforeInstall:
              - location: bin/deploy-hook
                timeout: 300
              AfterInstall:
              - location: bin/deploy-hook
                timeout: 900
              ApplicationStart:
              - location: bin/deploy-hook
                timeout: 300
              ValidateService:
              - location: bin/deploy-hook
                timeout: 300
        "#]]
        .assert_eq(&spec.render().unwrap());
    }

    #[test]
    fn rejects_what_the_agent_would_misread() {
        let long = AppSpec::single_binary("bin/deploy-hook", |_| 3601);
        assert_eq!(
            long.render().unwrap_err().to_string(),
            "ApplicationStop: timeout 3601 is outside 1..=3600 seconds"
        );
        let spaced = AppSpec::single_binary("bin/deploy hook", |_| 60);
        assert!(spaced.render().unwrap_err().to_string().contains("without spaces"));
        let escaping = AppSpec::single_binary("../deploy-hook", |_| 60);
        assert!(escaping.render().is_err());
    }
}
