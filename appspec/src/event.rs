//! Lifecycle events and the environment the agent gives every hook script.

use std::fmt;

/// The longest hook timeout AWS documents, in seconds. The agent accepts more; we do not.
pub const MAX_HOOK_TIMEOUT: u32 = 3600;

/// A lifecycle event that runs hook scripts on an EC2/on-prem instance.
///
/// `DownloadBundle` and `Install` are the agent's own steps and never run scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LifecycleEvent {
    /// Runs the previous revision's hook, before the new bundle is downloaded.
    ApplicationStop,
    /// Runs after the download, before the agent's Install step.
    BeforeInstall,
    /// Runs after the agent's Install step: where the release is built and switched.
    AfterInstall,
    /// Starts the service.
    ApplicationStart,
    /// Checks the service.
    ValidateService,
    /// Load balancer events, only with traffic control.
    BeforeBlockTraffic,
    /// Load balancer events, only with traffic control.
    AfterBlockTraffic,
    /// Load balancer events, only with traffic control.
    BeforeAllowTraffic,
    /// Load balancer events, only with traffic control.
    AfterAllowTraffic,
}

impl LifecycleEvent {
    /// Every event that may carry scripts, in the agent's order.
    pub const ALL: [LifecycleEvent; 9] = [
        LifecycleEvent::BeforeBlockTraffic,
        LifecycleEvent::AfterBlockTraffic,
        LifecycleEvent::ApplicationStop,
        LifecycleEvent::BeforeInstall,
        LifecycleEvent::AfterInstall,
        LifecycleEvent::ApplicationStart,
        LifecycleEvent::ValidateService,
        LifecycleEvent::BeforeAllowTraffic,
        LifecycleEvent::AfterAllowTraffic,
    ];

    /// The five events of an in-place deployment without a load balancer, in the agent's order.
    pub const IN_PLACE: [LifecycleEvent; 5] = [
        LifecycleEvent::ApplicationStop,
        LifecycleEvent::BeforeInstall,
        LifecycleEvent::AfterInstall,
        LifecycleEvent::ApplicationStart,
        LifecycleEvent::ValidateService,
    ];

    /// The name as it appears in appspec.yml and in `$LIFECYCLE_EVENT`.
    pub fn name(self) -> &'static str {
        match self {
            LifecycleEvent::ApplicationStop => "ApplicationStop",
            LifecycleEvent::BeforeInstall => "BeforeInstall",
            LifecycleEvent::AfterInstall => "AfterInstall",
            LifecycleEvent::ApplicationStart => "ApplicationStart",
            LifecycleEvent::ValidateService => "ValidateService",
            LifecycleEvent::BeforeBlockTraffic => "BeforeBlockTraffic",
            LifecycleEvent::AfterBlockTraffic => "AfterBlockTraffic",
            LifecycleEvent::BeforeAllowTraffic => "BeforeAllowTraffic",
            LifecycleEvent::AfterAllowTraffic => "AfterAllowTraffic",
        }
    }

    /// Parses an exact (case-sensitive) event name.
    pub fn from_name(name: &str) -> Option<LifecycleEvent> {
        LifecycleEvent::ALL.into_iter().find(|it| it.name() == name)
    }

    /// True for the events the agent runs from the *previous* revision's archive.
    pub fn runs_previous_revision(self) -> bool {
        matches!(
            self,
            LifecycleEvent::ApplicationStop
                | LifecycleEvent::BeforeBlockTraffic
                | LifecycleEvent::AfterBlockTraffic
        )
    }
}

impl fmt::Display for LifecycleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// True when `id` has the shape of a CodeDeploy deployment id: `d-` then letters and digits.
///
/// codedeploy-local ids (like `d-4B2QW9M1Z-local`) are accepted too: one `-local` suffix.
pub fn is_deployment_id(id: &str) -> bool {
    let body = id.strip_prefix("d-").unwrap_or("");
    let body = body.strip_suffix("-local").unwrap_or(body);
    !body.is_empty() && body.len() <= 64 && body.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The variables the agent sets for every hook script (`hook_executor.rb:106`, `@child_envs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEnv {
    /// `$LIFECYCLE_EVENT`, kept as given: an unknown name is not an error here.
    pub lifecycle_event: String,
    /// `$DEPLOYMENT_ID`, validated.
    pub deployment_id: String,
    /// `$APPLICATION_NAME`.
    pub application_name: String,
    /// `$DEPLOYMENT_GROUP_NAME`.
    pub deployment_group_name: String,
    /// `$DEPLOYMENT_GROUP_ID`.
    pub deployment_group_id: String,
}

/// Why the hook environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HookEnvError {
    /// A variable the agent always sets is absent.
    #[error("environment variable {0} is not set (is this run by the CodeDeploy agent?)")]
    Missing(&'static str),
    /// The deployment id could be used in a path and is not of CodeDeploy's shape.
    #[error("DEPLOYMENT_ID {0:?} is not a CodeDeploy deployment id (d- followed by letters and digits)")]
    BadDeploymentId(String),
}

impl HookEnv {
    /// The variable names, in the order the agent documents them.
    pub const VARS: [&'static str; 5] = [
        "LIFECYCLE_EVENT",
        "DEPLOYMENT_ID",
        "APPLICATION_NAME",
        "DEPLOYMENT_GROUP_NAME",
        "DEPLOYMENT_GROUP_ID",
    ];

    /// Reads the variables through `get`, validating the deployment id.
    pub fn from_lookup(mut get: impl FnMut(&str) -> Option<String>) -> Result<HookEnv, HookEnvError> {
        let mut var = |name: &'static str| get(name).ok_or(HookEnvError::Missing(name));
        let env = HookEnv {
            lifecycle_event: var("LIFECYCLE_EVENT")?,
            deployment_id: var("DEPLOYMENT_ID")?,
            application_name: var("APPLICATION_NAME").unwrap_or_default(),
            deployment_group_name: var("DEPLOYMENT_GROUP_NAME").unwrap_or_default(),
            deployment_group_id: var("DEPLOYMENT_GROUP_ID").unwrap_or_default(),
        };
        if !is_deployment_id(&env.deployment_id) {
            return Err(HookEnvError::BadDeploymentId(env.deployment_id));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids() {
        for good in ["d-ABCDEF123", "d-1", "d-4B2QW9M1Z-local"] {
            assert!(is_deployment_id(good), "{good}");
        }
        for bad in ["", "d-", "x-ABC", "d-../x", "d-a b", "d-a/b", "d-ab.c", "D-ABC", "d-a-b"] {
            assert!(!is_deployment_id(bad), "{bad}");
        }
    }

    #[test]
    fn event_names_round_trip() {
        for ev in LifecycleEvent::ALL {
            assert_eq!(LifecycleEvent::from_name(ev.name()), Some(ev));
        }
        assert_eq!(LifecycleEvent::from_name("afterinstall"), None);
    }
}
