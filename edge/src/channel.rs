//! gRPC channels to one authd replica: plaintext, or TLS through our own connector, so the
//! edge's client certificate (and authd's CA) can rotate: each new connection uses the
//! configuration current at connect time.

use std::time::Duration;

use authd_runtime::Reloading;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::config::Target;

fn io_error(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// A lazily connecting channel that reconnects by itself.
pub fn connect(
    target: &Target,
    tls: Option<Reloading<ClientConfig>>,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    // The scheme tonic sees is always http: TLS, when configured, is done by the
    // connector below rather than by tonic (whose TLS configuration is fixed at start).
    let endpoint = Endpoint::from_shared(format!("http://{}", target.addr))
        .map_err(|e| anyhow::anyhow!("authd endpoint {:?}: {e}", target.addr))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let Some(tls) = tls else {
        return Ok(endpoint.connect_lazy());
    };
    let server_name = ServerName::try_from(target.server_name.clone()).map_err(|e| {
        anyhow::anyhow!(
            "authd host {:?} is not a valid TLS name: {e}",
            target.server_name
        )
    })?;
    let connector = tower::service_fn(move |uri: http::Uri| {
        let tls = tls.get();
        let server_name = server_name.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| io_error(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| io_error(format!("{uri}: no port")))?;
            let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {uri} took longer than {connect_timeout:?}"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake with authd timed out",
                )
            })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
