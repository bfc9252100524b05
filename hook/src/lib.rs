//! The instance side: what `deploy-hook` does when the CodeDeploy agent runs it.
//!
//! The agent runs `<deployment-archive>/bin/deploy-hook` with no arguments and the lifecycle
//! event in `$LIFECYCLE_EVENT`; a person runs it with a subcommand. See ARCHITECTURE.md.

mod after_install;
mod child;
mod cli;
mod context;
mod fsx;
mod health;
pub mod journal;
mod lifecycle;
mod listen;
mod process;
mod prune;
mod service;
mod space;
mod store;
mod unit;
mod users;
mod util;
mod venv;
mod wheels;

pub use cli::main;
