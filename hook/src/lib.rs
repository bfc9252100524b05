//! The instance side: what `deploy-hook` does when the CodeDeploy agent runs it.
//!
//! The agent runs `<deployment-archive>/bin/deploy-hook` with no arguments and the lifecycle
//! event in `$LIFECYCLE_EVENT`; a person runs it with a subcommand.

mod cli;

pub use cli::main;
