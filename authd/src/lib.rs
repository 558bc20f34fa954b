//! authd: verifies bearer tokens against identity sources, maps them to Kubernetes users,
//! applies per-cluster policy and caches verdicts. Served over gRPC (`authd-proto`).

pub mod access;
pub mod audit;
pub mod authz;
pub mod cache;
pub mod check;
pub mod config;
pub mod ext_authz;
pub mod field;
pub mod fingerprint;
pub mod grpc;
pub mod identity;
pub mod mapping;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod reload;
pub mod revocation;
pub mod server;
pub mod service;
pub mod session;
pub mod source;
pub mod throttle;
pub mod tls;

pub use service::Authd;
