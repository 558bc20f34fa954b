//! A TCP proxy on loopback that can hold, on their way to the server, the chunks a client
//! sends that contain a pattern: a write that reaches Redis late, as on a congested network,
//! while everything else (reads, the pub/sub channel, other clients) goes through at once.
//! It runs on its own thread and runtime, so it outlives whatever the test blocks on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    hold_ms: AtomicU64,
    /// Chunks held so far, and how many of them reached the server.
    held: AtomicUsize,
    delivered: AtomicUsize,
}

pub struct DelayProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl DelayProxy {
    /// Forwards 127.0.0.1:<new port> to `upstream`; chunks from the client containing
    /// `pattern` are held while holding is on.
    pub fn start(upstream: SocketAddr, pattern: &'static [u8]) -> DelayProxy {
        let state = Arc::new(State::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let s = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let s = s.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            forward(client, server, pattern, s).await;
                        }
                    });
                }
            });
        });
        DelayProxy {
            addr: rx.recv().unwrap(),
            state,
        }
    }

    /// Holds every matching chunk for `d` from now on (zero: none).
    pub fn hold(&self, d: Duration) {
        self.state
            .hold_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    pub fn delivered(&self) -> usize {
        self.state.delivered.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, server: TcpStream, pattern: &[u8], s: Arc<State>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let hold = s.hold_ms.load(Ordering::SeqCst);
            let matched = hold > 0 && chunk.windows(pattern.len()).any(|w| w == pattern);
            if matched {
                s.held.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(hold)).await;
            }
            if sw.write_all(chunk).await.is_err() {
                break;
            }
            if matched {
                s.delivered.fetch_add(1, Ordering::SeqCst);
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
