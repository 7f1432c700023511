//! ccgate: an OpenAI-compatible gateway that runs prompts on a pool of
//! Claude Code CLI workers, with budgets that cannot be overspent.

pub mod admin_cli;
pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod limits;
pub mod log_writer;
pub mod metrics;
pub mod money;
pub mod pricing;
pub mod routing;
pub mod server;
pub mod store;
pub mod tasks;
pub mod threads;
pub mod workers;
