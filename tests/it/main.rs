//! End-to-end tests across crates, with real parts: cargo, GNU tar, qemu, systemd-analyze.

mod after_install;
mod attacker;
mod bundle;
mod container;
mod disk_full;
mod lifecycle;
mod publish;
mod rehearse;
mod socket;
mod systemd;
mod tidy;
mod vendored;
mod verify;
