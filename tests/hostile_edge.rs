//! The edge against hostile clients (issue 13): slowloris on the TLS handshake, on the
//! headers and on the body; HTTP/2 stream floods and rapid reset; huge and endless bodies.
//! Each attack runs against `kube-authd up` with its default limits, bounded in count and
//! time, and asserts a bound on the process (peak RSS growth, open descriptors), that
//! kube-apiserver, reviewing every 75 ms over its own keep-alive connection while the attack
//! runs, never saw a review fail, that a review on a fresh connection succeeds after it, and
//! that alice's token is in none of the process's output.
//!
//! The reproduction: with bodies buffered before admission, one HTTP/2 connection
//! grew the edge by 216 MB and three by 903 MB in 8 s (the manifest's limit is 256 Mi).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hostile::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most the edge may grow under any attack here: half the manifest's 256 Mi limit
/// (the rest is the process at rest, authd's share in `up`, and headroom).
const MAX_GROWTH_KIB: u64 = 128 * 1024;
/// The edge's default `max_connections`.
const MAX_CONNECTIONS: usize = 256;
/// Descriptors the edge may open beyond its idle count apart from client connections
/// (the source's files, timers).
const FD_SLACK: usize = 24;
/// The default `max_body_bytes`: the body size the memory attacks declare.
const MIB: usize = 1 << 20;

/// `kube-authd up` with one known user.
struct Target {
    _dir: tempfile::TempDir,
    up: Proc,
    kc: Kubeconfig,
    alice: String,
    /// RSS (KiB) and open descriptors at rest, after a first review.
    rest: (u64, usize),
}

impl Target {
    async fn start() -> Target {
        Self::start_with(&[]).await
    }

    /// `up` with `flags` added to its command line.
    async fn start_with(flags: &[&str]) -> Target {
        let dir = temp_dir();
        let alice = token("alice");
        let tokens = write(
            dir.path(),
            "tokens.csv",
            &format!("{alice},alice,1,\"dev\"\n"),
        );
        let state = dir.path().join("state");
        let mut args = vec![
            "up",
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ];
        args.extend(flags);
        let up = Proc::start("kube-authd", &args, dir.path(), "kube-authd ready");
        let kc = Kubeconfig::load(&state.join("webhook-kubeconfig.yaml"));
        let mut t = Target {
            _dir: dir,
            up,
            kc,
            alice,
            rest: (0, 0),
        };
        t.assert_legit_review("before the attack").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.rest = (rss_kib(t.up.pid()), open_fds(t.up.pid()));
        t
    }

    fn addr(&self) -> String {
        authority(&self.kc)
    }

    /// kube-apiserver reviewing alice's token over its own connection, opened before the
    /// attack (as its connection pool would be), until stopped.
    async fn legit_caller(&self) -> LegitCaller {
        let c = client(&self.kc.ca_pem, Proto::H1, identity(&self.kc));
        edge_caller(c, self.kc.server.clone(), self.alice.clone(), "alice").await
    }

    /// After the attack: alice's token was never written by `up`.
    fn assert_no_token_logged(&self) {
        assert_no_secret_logged(&[&self.up], &[&self.alice]);
    }

    /// A review as kube-apiserver sends it: a fresh connection per attempt, 5 attempts
    /// with its backoff on 5xx and transport errors; the last must authenticate alice.
    async fn assert_legit_review(&self, when: &str) {
        let mut last = String::new();
        for delay_ms in [0u64, 500, 750, 1100, 1700] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let c = client(&self.kc.ca_pem, Proto::H1, identity(&self.kc));
            let sent = c
                .post(format!("{}?timeout=30s", self.kc.server))
                .header("content-type", "application/json")
                .body(review_body(V1, &self.alice, &[]))
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let a = answer(resp).await;
                    if a.status < 500 {
                        assert!(a.authenticated(), "{when}: {a:?}");
                        assert_eq!(a.username(), "alice", "{when}");
                        return;
                    }
                    last = format!("{a:?}");
                }
                Err(e) => last = format!("{e:?}"),
            }
        }
        panic!("{when}: a legitimate review failed 5 times; last: {last}");
    }

    /// Checks the peaks against the bounds, and prints them for the record. `connections`
    /// counts the attacker's and the legitimate caller's.
    fn assert_bounded(&self, what: &str, peaks: Peaks, connections: usize) {
        let growth = peaks.rss_kib.saturating_sub(self.rest.0);
        eprintln!(
            "{what}: RSS {} KiB at rest, peak {} KiB (+{} MiB); fds {} at rest, peak {}",
            self.rest.0,
            peaks.rss_kib,
            growth / 1024,
            self.rest.1,
            peaks.fds
        );
        assert!(
            growth <= MAX_GROWTH_KIB,
            "{what}: the edge grew by {} MiB (bound {} MiB)",
            growth / 1024,
            MAX_GROWTH_KIB / 1024
        );
        let fd_bound = self.rest.1 + connections.min(MAX_CONNECTIONS) + FD_SLACK;
        assert!(
            peaks.fds <= fd_bound,
            "{what}: the edge held {} descriptors (bound {fd_bound})",
            peaks.fds
        );
    }
}

/// Opens TLS connections to `addr` in parallel; those the edge refuses are left out.
async fn tls_connections(
    addr: &str,
    n: usize,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (addr, config) = (addr.to_owned(), config.clone());
            tokio::spawn(async move {
                let tcp = TcpStream::connect(&addr).await.ok()?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            out.push(c);
        }
    }
    out
}

/// Many connections that start a TLS handshake and never finish it: the edge holds at
/// most `max_connections` of them, and kube-apiserver's review goes through once they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_slowloris_is_capped() {
    let t = Target::start().await;
    let n = MAX_CONNECTIONS + 150;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(mut tcp) = TcpStream::connect(t.addr()).await {
            // A handshake record header announcing 512 bytes, and the first of them.
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
            held.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peaks = sampler.stop();
    legit.stop("handshake slowloris").await;
    t.assert_bounded("handshake slowloris", peaks, n + 1);
    drop(held);
    t.assert_legit_review("after the handshake slowloris").await;
    t.assert_no_token_logged();
}

/// Many TLS connections sending request headers one line at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_slowloris_is_capped() {
    let t = Target::start().await;
    let n = MAX_CONNECTIONS + 150;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let mut conns = tls_connections(&t.addr(), n, tls_config(&t.kc, b"http/1.1")).await;
    let accepted = conns.len();
    let head = format!("POST /authenticate HTTP/1.1\r\nHost: {}\r\n", t.addr());
    for c in conns.iter_mut() {
        let _ = c.write_all(head.as_bytes()).await;
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for c in conns.iter_mut() {
            let _ = c.write_all(b"X-Slow: 1\r\n").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let peaks = sampler.stop();
    legit.stop("header slowloris").await;
    eprintln!("header slowloris: {accepted} of {n} connections completed the handshake");
    t.assert_bounded("header slowloris", peaks, n + 1);
    drop(conns);
    t.assert_legit_review("after the header slowloris").await;
    t.assert_no_token_logged();
}

/// Connections (fewer than the cap) each trickling a 1 MiB body one byte at a time: they
/// hold what they sent, not what they declared, and reviews still go through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_slowloris_leaves_room_for_reviews() {
    let t = Target::start().await;
    let n = 200;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let mut conns = tls_connections(&t.addr(), n, tls_config(&t.kc, b"http/1.1")).await;
    assert_eq!(conns.len(), n, "connections under the cap are all served");
    let head = format!(
        "POST /authenticate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {MIB}\r\n\r\n",
        t.addr()
    );
    for c in conns.iter_mut() {
        let _ = c.write_all(head.as_bytes()).await;
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for c in conns.iter_mut() {
            let _ = c.write_all(b" ").await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peaks = sampler.stop();
    legit.stop("body slowloris").await;
    t.assert_bounded("body slowloris", peaks, n + 1);
    t.assert_no_token_logged();
}

/// HTTP/1.1 connections each sending almost all of a 1 MiB body and stalling: without
/// admission before the body every one of them was buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_bodies_over_http1_are_bounded() {
    let t = Target::start().await;
    let n = 200;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let conns = tls_connections(&t.addr(), n, tls_config(&t.kc, b"http/1.1")).await;
    let head = format!(
        "POST /authenticate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {MIB}\r\n\r\n",
        t.addr()
    );
    let body = Bytes::from(vec![b' '; MIB - 1]);
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let _ = c.write_all(head.as_bytes()).await;
                // Refused bodies are answered and closed while still being written.
                let _ = tokio::time::timeout(Duration::from_secs(4), c.write_all(&body)).await;
                c
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let peaks = sampler.stop();
    legit.stop("stalled 1 MiB bodies over HTTP/1.1").await;
    for w in writers {
        drop(w.await);
    }
    t.assert_bounded("stalled 1 MiB bodies over HTTP/1.1", peaks, n + 1);
    t.assert_legit_review("after the stalled bodies").await;
    t.assert_no_token_logged();
}

/// The reproduction: HTTP/2 connections, each opening as many streams as the edge
/// allows (up to 512), each declaring a 1 MiB body, sending all of it but the last byte
/// and stalling.
async fn stream_flood(connections: usize) {
    let t = Target::start().await;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let body = Bytes::from(vec![b' '; MIB - 1]);
    let mut streams = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..connections {
        let mut send = h2_connect(&t.addr(), tls_config(&t.kc, b"h2")).await;
        let until = Instant::now() + Duration::from_secs(2);
        for _ in 0..512 {
            let ready = tokio::time::timeout_at(until.into(), send.clone().ready()).await;
            let Ok(Ok(mut ready)) = ready else { break };
            let Ok((response, mut stream)) = ready.send_request(h2_post(&t.kc, MIB as u64), false)
            else {
                break;
            };
            let _ = stream.send_data(body.clone(), false);
            streams.push((response, stream));
            send = ready;
        }
        senders.push(send);
    }
    let opened = streams.len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let peaks = sampler.stop();
    let what = format!("HTTP/2 stream flood on {connections} connection(s)");
    legit.stop(&what).await;
    eprintln!("stream flood: {opened} streams opened on {connections} connection(s)");
    drop(streams);
    drop(senders);
    t.assert_bounded(&what, peaks, connections + 1);
    t.assert_legit_review("after the stream flood").await;
    t.assert_no_token_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_flood_on_one_connection_is_bounded() {
    stream_flood(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_flood_on_three_connections_is_bounded() {
    stream_flood(3).await;
}

/// Rapid reset (CVE-2023-44487): open a stream and reset it at once, in a loop. The edge
/// stays bounded and keeps answering reviews meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_bounded() {
    let t = Target::start().await;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let attack = async {
        let mut send = h2_connect(&t.addr(), tls_config(&t.kc, b"h2")).await;
        let (mut sent, mut connections) = (0usize, 1usize);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && sent < 50_000 {
            let ready =
                tokio::time::timeout(Duration::from_millis(500), send.clone().ready()).await;
            let opened = match ready {
                Ok(Ok(mut ready)) => ready.send_request(h2_post(&t.kc, 100), false).ok(),
                _ => None,
            };
            match opened {
                Some((_, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                // The edge closed the connection (GOAWAY): the attacker opens another.
                None => {
                    send = h2_connect(&t.addr(), tls_config(&t.kc, b"h2")).await;
                    connections += 1;
                }
            }
        }
        eprintln!("rapid reset: {sent} streams reset over {connections} connection(s)");
        connections
    };
    let connections = attack.await;
    let peaks = sampler.stop();
    legit.stop("rapid reset").await;
    t.assert_bounded("rapid reset", peaks, connections + 1);
    t.assert_legit_review("after the rapid reset").await;
    t.assert_no_token_logged();
}

/// Reads what the edge answers on `c` within `within`: the status code, or `None` if the
/// connection closed without one.
async fn status_of(
    c: &mut tokio_rustls::client::TlsStream<TcpStream>,
    within: Duration,
) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, c.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A Content-Length far above the limit is refused at once, over either HTTP version,
/// without reading the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_bodies_are_refused_at_once() {
    let t = Target::start().await;
    let legit = t.legit_caller().await;
    let huge: u64 = 1 << 40;
    let head = format!(
        "POST /authenticate HTTP/1.1\r\nHost: {}\r\nContent-Length: {huge}\r\n\r\n{{",
        t.addr()
    );
    // Over and over for two seconds, over both HTTP versions, while kube-apiserver reviews.
    let until = Instant::now() + Duration::from_secs(2);
    let mut attempts = 0;
    while Instant::now() < until {
        let mut c = tls_connect(&t.addr(), tls_config(&t.kc, b"http/1.1")).await;
        c.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(status_of(&mut c, Duration::from_secs(2)).await, Some(413));

        let mut send = h2_connect(&t.addr(), tls_config(&t.kc, b"h2")).await;
        send = send.ready().await.unwrap();
        let (response, mut stream) = send.send_request(h2_post(&t.kc, huge), false).unwrap();
        let _ = stream.send_data(Bytes::from_static(b"{"), false);
        let response = tokio::time::timeout(Duration::from_secs(2), response)
            .await
            .expect("answered at once")
            .expect("response");
        assert_eq!(response.status(), 413);
        attempts += 1;
    }
    eprintln!("huge declared bodies: {attempts} rounds");
    legit.stop("huge declared bodies").await;
    t.assert_legit_review("after the huge bodies").await;
    t.assert_no_token_logged();
}

/// Chunked bodies that never end, on several connections at once: each is cut off past
/// the limit, and the edge keeps answering reviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_chunked_bodies_are_cut_off() {
    let t = Target::start().await;
    let legit = t.legit_caller().await;
    let sampler = Sampler::start(t.up.pid());
    let conns = tls_connections(&t.addr(), 8, tls_config(&t.kc, b"http/1.1")).await;
    let head = format!(
        "POST /authenticate HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        t.addr()
    );
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let (head, chunk) = (head.clone(), chunk.clone());
            tokio::spawn(async move {
                let _ = c.write_all(head.as_bytes()).await;
                let (until, mut sent) = (Instant::now() + Duration::from_secs(3), 0usize);
                while Instant::now() < until {
                    // A refused body stops being read: the write then stalls or fails.
                    let wrote =
                        tokio::time::timeout(Duration::from_secs(1), c.write_all(chunk.as_bytes()))
                            .await;
                    if !matches!(wrote, Ok(Ok(()))) {
                        break;
                    }
                    sent += 0x10000;
                }
                (sent, status_of(&mut c, Duration::from_secs(2)).await)
            })
        })
        .collect();
    let outcomes = futures::future::join_all(writers).await;
    let peaks = sampler.stop();
    legit.stop("endless chunked bodies").await;
    for o in outcomes {
        let (sent, status) = o.unwrap();
        assert!(
            matches!(status, Some(413) | None),
            "an endless body was answered {status:?} after {sent} bytes"
        );
    }
    t.assert_bounded("endless chunked bodies", peaks, 8 + 1);
    t.assert_no_token_logged();
}

/// `kube-authd up --max-connections` reaches the edge: connections above it are closed at
/// once, and a review goes through once the attacker's are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_passes_its_connection_cap_to_the_edge() {
    let t = Target::start_with(&["--max-connections", "4"]).await;
    let conns = tls_connections(&t.addr(), 10, tls_config(&t.kc, b"http/1.1")).await;
    assert_eq!(
        conns.len(),
        4,
        "connections past --max-connections are closed"
    );
    assert!(open_fds(t.up.pid()) <= t.rest.1 + 4 + FD_SLACK);
    drop(conns);
    t.assert_legit_review("after the connections are closed")
        .await;
    t.assert_no_token_logged();
}
