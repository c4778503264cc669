//! thaw's control plane: the HTTP API, function records, logs, metrics and
//! the `thaw` command line.
//!
//! * [`spec`]: the deploy request and its validation.
//! * [`runtime`]: the runtimes (runtimes/*): handler syntax, launch, build.
//! * [`build`]: dependency files installed into cached layers.
//! * [`registry`]: function records and code in the data directory.
//! * [`snapshots`]: capturing a warmed version into the page store.
//! * [`rebuild`]: rebuilding a snapshot after a restore of it failed.
//! * [`service`]: deploy, version routing, invoke, delete.
//! * [`api`]: the axum router over the service.
//! * [`auth`]: API tokens and roles.
//! * [`guard`]: cross-site requests and DNS rebinding.
//! * [`answer`]: the headers of a function's answer.
//! * [`redact`]: what non-admin callers may not read.
//! * [`private`]: permissions of the data directory.
//! * [`serve`]: `thaw serve`.
//! * [`config`]: its settings (file, environment, flags).
//! * [`client`]: the commands that talk to a server.
//! * [`bundle`]: function folders (`thaw.toml` + code).
//! * [`store_view`]: the page store as the API and CLI show it.
//! * [`remote`]: the shared S3 store: uploads, `thaw store push|pull`.
//! * [`ui`]: the dashboard's routes, sessions and live stream.
//! * [`dns`]: the DNS forwarder of outbound sandboxes.
#![forbid(unsafe_code)]

pub mod answer;
pub mod api;
pub mod auth;
pub mod build;
pub mod bundle;
pub mod client;
pub mod cluster;
pub mod config;
pub mod deploy_working_set;
pub mod dns;
pub mod guard;
pub mod logstore;
pub mod metrics;
pub mod private;
pub mod rebuild;
pub mod redact;
pub mod registry;
pub mod remote;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod snapshots;
pub mod spec;
pub mod store_view;
pub mod ui;
