//! The runtime pieces authd and the edge both need, once: files that reload when they
//! change, content-change detection for polled files, the admin listener, the shutdown
//! signal, logging and process set-up, a lock-free latency histogram, config file loading,
//! PEM loading, certificate names and the plaintext rule for remote transports.
//!
//! No domain types live here (no tokens, reviews or verdicts), and this crate depends on
//! none of authd-proto, authd or authd-edge: it sits below both servers, so sharing it adds
//! no dependency path between them (`tests/layering.rs` keeps it so).

pub mod admin;
pub mod cert;
pub mod config;
pub mod file_state;
pub mod metrics;
pub mod net;
pub mod pem;
pub mod plaintext;
pub mod process;
pub mod reloading;
pub mod shutdown;

pub use reloading::Reloading;
