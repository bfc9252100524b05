//! The contract with the CodeDeploy agent: lifecycle events, the environment a hook receives, and
//! the AppSpec file we render for EC2/on-prem deployments.
//!
//! The facts encoded here come from the agent's source (aws/aws-codedeploy-agent 1.8.1); see
//! `docs/codedeploy-agent.md` for the source lines behind each of them.
#![warn(missing_docs)]

#[cfg(feature = "verify")]
pub mod diag;
mod event;
#[cfg(feature = "render")]
mod render;
#[cfg(feature = "verify")]
pub mod validate;
#[cfg(feature = "verify")]
pub mod yaml;
#[cfg(feature = "verify")]
pub mod yaml11;

pub use event::{HookEnv, HookEnvError, LifecycleEvent, MAX_HOOK_TIMEOUT, is_deployment_id};
#[cfg(feature = "render")]
pub use render::{AppSpec, HookScript, RenderError};
