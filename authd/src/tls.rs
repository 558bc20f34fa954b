//! authd's gRPC TLS: the server configuration (mutual TLS when `tls.client_ca` is set),
//! rebuilt when its files change, and our own acceptor feeding tonic's
//! `serve_with_incoming`, so every new connection uses the current certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use authd_runtime::{cert, net, pem, Reloading};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// Builds the server configuration from the files named in `[tls]`.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<ServerConfig> {
    let chain = pem::load_certs(&tls.cert, "tls.cert")?;
    let key = pem::load_key(&tls.key, "tls.key")?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = pem::root_store([(ca.as_path(), "tls.client_ca")])?;
            // Client certificates are required: only edges and internal clients holding a
            // certificate from this CA may call.
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .with_context(|| format!("tls.client_ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("tls.cert/tls.key: the key does not match the certificate or is unsupported")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server configuration, reloaded when `tls.cert`, `tls.key` or `tls.client_ca` change.
pub fn reloading(tls: &TlsConfig) -> anyhow::Result<Reloading<ServerConfig>> {
    let mut files = vec![tls.cert.clone(), tls.key.clone()];
    files.extend(tls.client_ca.clone());
    let tls = tls.clone();
    Reloading::start("authd gRPC TLS", files, move || server_config(&tls))
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow client cannot
/// hold up others), yielding finished TLS streams. Each handshake uses the configuration
/// current at accept time. Stops when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Reloading<ServerConfig>,
    handshake_timeout: Duration,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                a = net::accept(&listener, "gRPC") => a,
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.get());
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(acceptor, tcp, peer, handshake_timeout).await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            if let Some(leaf) = s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                // Which certificate a client connected with: shows rotations taking effect.
                tracing::debug!(%peer,
                    client = cert::identity(leaf).as_deref().unwrap_or("-"),
                    cert_sha256 = %hex::encode(Sha256::digest(leaf)),
                    "gRPC client connected");
            }
            Some(s)
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e,
                "gRPC client refused at the TLS handshake");
            None
        }
        Err(_) => {
            tracing::info!(%peer, ?limit, "gRPC TLS handshake not completed in time; closing");
            None
        }
    }
}
