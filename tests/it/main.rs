#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The one integration-test binary: every test starts the real server (or opens the real store)
//! in a temporary folder.

mod auth;
mod auth_matrix;
mod backup;
mod browser;
mod cli;
mod crash;
mod full_disk;
mod hardening;
mod hostile;
mod import_export;
mod isolation;
mod pages;
mod qa;
mod quarantine;
mod resilience;
mod review_loop;
mod scripts;
mod startup;
mod store;
mod support;
mod workflows;
