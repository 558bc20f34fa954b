//! A busy HTTP/1.1 keep-alive connection stays open past the header read timeout (which
//! only closes connections that never send a request): kube-apiserver keeps its webhook
//! connections for minutes, and a close racing a new request fails that review.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn keep_alive_connection_outlives_the_header_timeout() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = temp_dir();
    let alice = token("alice");
    let tokens = write(dir.path(), "tokens.csv", &format!("{alice},alice,1\n"));
    let sources = format!(
        "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = {:?}\n",
        tokens.display().to_string()
    );
    let split = Split::start(dir.path(), &sources, "header_read_timeout = \"1s\"\n");
    let authority = split
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/authenticate")
        .to_owned();

    let mut config = kube_apiserver_tls(&split.ca_pem, b"http/1.1");
    config.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();

    let body = review_body(V1, &alice, &[]);
    let request = format!(
        "POST /authenticate?timeout=30s HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Bounded: 2.5 s of reviews, one every 250 ms, all on the one connection.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut answered = 0;
    while Instant::now() < until {
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let mut got = Vec::new();
        // The edge answers with Content-Length; read until the whole body is in.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("answer within 5 s")
                .expect("read");
            assert!(
                n > 0,
                "the edge closed a busy keep-alive connection after {answered} reviews"
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if rest.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    assert!(rest.contains("\"authenticated\":true"), "{rest}");
                    break;
                }
            }
        }
        answered += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered >= 8, "only {answered} reviews answered");
}
