//! `oncely serve`: a reverse proxy that gives any HTTP service the idempotency contract.
//!
//! The gateway is the `oncely_http` layer wrapped around [`forward::Forwarder`], a hyper
//! client pointed at one upstream. This crate adds what a process needs around it: the
//! configuration file, the listener with its limits and graceful shutdown, the purge of
//! expired records, the admin listener and the audit trail.

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod config;
pub mod forward;
pub mod server;

pub use config::{AdminConfig, Config, ConfigError, SettingError};
pub use server::{Gateway, GatewayError, RunningGateway};
