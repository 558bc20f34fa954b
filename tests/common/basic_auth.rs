//! A tiny real HTTP/1.1 server for source tests (std threads, keep-alive), recording every
//! request it receives, switchable to slow, down (port closed) or failing (500). The
//! Basic-auth service and the JWKS endpoint are both built on it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

/// How the server behaves right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Sleep this long before answering.
    Slow(Duration),
    /// Listener closed (connection refused); open connections are closed.
    Down,
    /// Answer 500 to everything.
    Fail,
    /// Answer 302 to everything.
    Redirect,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Raw request target (path and query, still percent-encoded).
    pub target: String,
    /// The HTTP Basic user, decoded, if any.
    pub user: Option<String>,
    /// The HTTP Basic password, decoded, if any.
    pub password: Option<String>,
    /// Every header line as received (names lower-cased, values trimmed), in order.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The values of every header line named `name` (lower-case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> (u16, String) + Send + Sync>;

struct Shared {
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Recorded>>,
    handler: Handler,
    /// Serve HTTPS with this configuration instead of plain HTTP.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections accepted and not yet closed (by either side).
    open: AtomicUsize,
    /// Header lines (each ending in CRLF) added to every normal answer.
    headers: Mutex<String>,
}

pub struct HttpServer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl HttpServer {
    pub fn start(handler: Handler) -> HttpServer {
        Self::start_with(handler, None)
    }

    /// HTTPS with a PEM certificate chain and key.
    pub fn start_tls(handler: Handler, cert_pem: &[u8], key_pem: &[u8]) -> HttpServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem).expect("key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        Self::start_with(handler, Some(Arc::new(cfg)))
    }

    fn start_with(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test HTTP server");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Normal),
            seen: Mutex::new(Vec::new()),
            handler,
            tls,
            open: AtomicUsize::new(0),
            headers: Mutex::new(String::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, port, s));
        HttpServer { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Connections open now: the client's keep-alive ones and those being answered. A
    /// connection its client closed counts until the server notices (after a `Slow` sleep).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        // Give the accept loop time to close or reopen the port.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Adds these header lines (each ending in CRLF) to every normal answer from now on.
    pub fn set_headers(&self, lines: &str) {
        *self.shared.headers.lock().unwrap() = lines.to_owned();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.seen.lock().unwrap().clone()
    }
}

fn mode(s: &Shared) -> Mode {
    *s.mode.lock().unwrap()
}

/// Accepts while not Down; while Down the listener is dropped so the port refuses
/// connections, and it is re-bound on the same port when the mode changes back.
fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    loop {
        match (&listener, mode(&shared)) {
            (Some(_), Mode::Down) => listener = None,
            (None, m) if m != Mode::Down => {
                listener = TcpListener::bind(("127.0.0.1", port)).ok();
            }
            _ => {}
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((stream, _)) => {
                let s = shared.clone();
                s.open.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _closes = Closes(s.clone());
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    match s.tls.clone() {
                        None => serve_conn(stream, s),
                        Some(cfg) => {
                            let conn = rustls::ServerConnection::new(cfg).unwrap();
                            serve_conn(rustls::StreamOwned::new(conn, stream), s)
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Counts a connection's thread out of `Shared::open` however it ends.
struct Closes(Arc<Shared>);

impl Drop for Closes {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_conn<S: Read + Write>(stream: S, shared: Arc<Shared>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        let mut lines = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                lines.push((k.clone(), v.clone()));
                headers.insert(k, v);
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (user, password) = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|raw| {
                let raw = String::from_utf8_lossy(&raw).into_owned();
                match raw.split_once(':') {
                    Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                    None => (Some(raw), None),
                }
            })
            .unwrap_or((None, None));
        let rec = Recorded {
            target,
            user,
            password,
            headers: lines,
        };
        let m = mode(&shared);
        if m == Mode::Down {
            return;
        }
        shared.seen.lock().unwrap().push(rec.clone());
        let headers = || shared.headers.lock().unwrap().clone();
        let (code, body, extra) = match m {
            Mode::Fail => (500, "{}".to_owned(), String::new()),
            Mode::Redirect => (
                302,
                String::new(),
                "Location: http://127.0.0.1:1/\r\n".to_owned(),
            ),
            Mode::Slow(d) => {
                std::thread::sleep(d);
                let (c, b) = (shared.handler)(&rec);
                (c, b, headers())
            }
            _ => {
                let (c, b) = (shared.handler)(&rec);
                (c, b, headers())
            }
        };
        let resp = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        let writer = reader.get_mut();
        if writer
            .write_all(resp.as_bytes())
            .and_then(|_| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A Basic-auth service at `/basic-auth/{user}`: 200 when the Basic credentials match a
/// known user and the path names the same user, 401 otherwise.
pub struct BasicAuthServer {
    pub http: HttpServer,
    users: Arc<Mutex<HashMap<String, String>>>,
}

impl BasicAuthServer {
    pub fn start(users: &[(&str, &str)]) -> BasicAuthServer {
        Self::start_with(users, None)
    }

    /// Over HTTPS with this certificate chain and key (PEM).
    pub fn start_tls(users: &[(&str, &str)], cert_pem: &[u8], key_pem: &[u8]) -> BasicAuthServer {
        Self::start_with(users, Some((cert_pem, key_pem)))
    }

    fn start_with(users: &[(&str, &str)], tls: Option<(&[u8], &[u8])>) -> BasicAuthServer {
        let users: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        ));
        let u = users.clone();
        let handler: Handler = Arc::new(move |r: &Recorded| {
            let (Some(user), Some(pw)) = (&r.user, &r.password) else {
                return (401, String::new());
            };
            let path_user = r
                .target
                .strip_prefix("/basic-auth/")
                .map(percent_decode)
                .unwrap_or_default();
            let ok = path_user == *user && u.lock().unwrap().get(user) == Some(pw);
            if ok {
                (200, "{}".into())
            } else {
                (401, String::new())
            }
        });
        let http = match tls {
            None => HttpServer::start(handler),
            Some((cert, key)) => HttpServer::start_tls(handler, cert, key),
        };
        BasicAuthServer { http, users }
    }

    /// The URL template a source is configured with.
    pub fn template(&self) -> String {
        self.http.url("/basic-auth/{user}")
    }

    pub fn add_user(&self, user: &str, password: &str) {
        self.users
            .lock()
            .unwrap()
            .insert(user.to_owned(), password.to_owned());
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
