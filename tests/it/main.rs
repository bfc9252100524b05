//! End-to-end tests across crates, with real parts: cargo, GNU tar, qemu, systemd-analyze.

mod after_install;
mod bundle;
mod container;
mod lifecycle;
mod rehearse;
mod systemd;
mod tidy;
mod vendored;
mod verify;
