//! The verdict path with its shared level, against a real private redis-server:
//! stale-if-error across both levels, single flight, and lookups racing a revocation.
//!
//! The identity source is a test double whose answer (and timing) the test controls,
//! because the only source on this branch (the static token file) can neither fail nor be
//! slow; the caches and Redis are real. The end-to-end version of stale-if-error comes
//! with a source that can fail (HTTP Basic auth).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authd::cache::redis::SharedCache;
use authd::cache::seal::Sealer;
use authd::cache::verdict::{RevocationSettings, SharedLevel};
use authd::cache::Ttls;
use authd::config::RedisConfig;
use authd::fingerprint::Fingerprinter;
use authd::identity::{Identity, Outcome};
use authd::metrics::{LevelLabels, Metrics};
use authd::pipeline::Pipeline;
use authd::policy::{ClusterPolicy, Clusters, ANY_CLUSTER};
use authd::source::Verifier;
use authd::Authd;
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use futures::future::BoxFuture;

/// A source whose next answer the test sets, and which can be held until released.
struct Switch {
    answer: Mutex<Outcome>,
    calls: AtomicUsize,
    /// While closed, lookups wait here.
    gate: tokio::sync::Semaphore,
}

impl Switch {
    fn new(answer: Outcome) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(answer),
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS),
        })
    }
    /// Holds every lookup until `open`.
    fn close(&self) {
        let _ = self
            .gate
            .forget_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }
    fn open(&self) {
        self.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }
    fn set(&self, answer: Outcome) {
        *self.answer.lock().unwrap() = answer;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Verifier for Switch {
    fn name(&self) -> &str {
        "switch"
    }
    fn owns(&self, _token: &str) -> bool {
        true
    }
    fn verify<'a>(&'a self, _token: &'a str, _aud: &'a [String]) -> BoxFuture<'a, Outcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            let _permit = self.gate.acquire().await;
            answer
        })
    }
}

fn alice() -> Outcome {
    Outcome::Authenticated(Identity {
        username: "alice".into(),
        uid: "1".into(),
        ..Default::default()
    })
}

fn down() -> Outcome {
    Outcome::Undecided("directory unreachable".into())
}

/// A private redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install the Debian package redis-server");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ping = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One replica: its own local cache and metrics, the shared Redis and key.
/// Every cluster, open: these requests name none.
fn any_cluster() -> Clusters {
    Clusters::new(&BTreeMap::from([(
        ANY_CLUSTER.to_owned(),
        ClusterPolicy::default(),
    )]))
}

fn replica(redis: &Redis, source: &Arc<Switch>, grace: Duration) -> Authd {
    let metrics = Arc::new(Metrics::new());
    let config = RedisConfig {
        url: Some(format!("redis://127.0.0.1:{}", redis.port)),
        cluster_urls: vec![],
        username: None,
        password_file: None,
        ca_file: None,
        allow_plaintext: false,
        key_prefix: "test:".into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
    };
    let fingerprinter = Fingerprinter::new(b"the key every replica shares 0123456789");
    let sealer = Sealer::new(&fingerprinter);
    let shared =
        SharedCache::new(&config, Duration::from_secs(60), metrics.clone(), sealer).unwrap();
    Authd::with_levels(
        fingerprinter,
        Pipeline {
            sources: vec![source.clone() as Arc<dyn Verifier>],
            clusters: any_cluster(),
            deadline: Duration::from_secs(5),
            digest: [0; 32],
            throttle: Default::default(),
        },
        Ttls {
            positive: Duration::from_secs(1),
            negative: Duration::from_secs(1),
            stale_grace: grace,
        },
        1000,
        metrics,
        Some(SharedLevel {
            cache: Arc::new(shared),
            local_ttl: Duration::from_secs(10),
        }),
        RevocationSettings::default(),
    )
}

async fn review(a: &Authd) -> AuthenticateResponse {
    a.authenticate(AuthenticateRequest {
        token: "a-token".into(),
        ..Default::default()
    })
    .await
}

fn stale_serves(a: &Authd, level: &'static str) -> u64 {
    a.metrics()
        .stale_serves
        .get_or_create(&LevelLabels { level })
        .get()
}

async fn until(start: Instant, ms: u64) {
    tokio::time::sleep_until((start + Duration::from_millis(ms)).into()).await;
}

#[tokio::test]
async fn serves_a_positive_verdict_only_within_its_grace() {
    let redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::from_secs(2));
    let start = Instant::now();
    assert!(review(&a).await.authenticated);

    // Past the 1 s TTL, inside the 2 s grace, the source down: the stale verdict.
    until(start, 1300).await;
    source.set(down());
    let r = review(&a).await;
    assert!(r.authenticated && r.cached && r.error.is_empty(), "{r:?}");
    assert_eq!(source.calls(), 2, "the source was asked first");
    assert_eq!(stale_serves(&a, "local"), 1);

    // Past TTL + grace: could not decide.
    until(start, 3300).await;
    let r = review(&a).await;
    assert!(!r.authenticated && !r.error.is_empty(), "{r:?}");
    assert_eq!(stale_serves(&a, "local"), 1);
}

#[tokio::test]
async fn never_serves_a_negative_verdict_stale() {
    let redis = Redis::start();
    let source = Switch::new(Outcome::Rejected);
    let a = replica(&redis, &source, Duration::from_secs(5));
    let start = Instant::now();
    let r = review(&a).await;
    assert!(!r.authenticated && r.error.is_empty());
    until(start, 1300).await;
    source.set(down());
    let r = review(&a).await;
    assert!(!r.authenticated && !r.error.is_empty(), "{r:?}");
    assert_eq!(stale_serves(&a, "local") + stale_serves(&a, "shared"), 0);
}

#[tokio::test]
async fn off_unless_enabled() {
    let redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::ZERO);
    let start = Instant::now();
    assert!(review(&a).await.authenticated);
    until(start, 1300).await;
    source.set(down());
    let r = review(&a).await;
    assert!(!r.authenticated && !r.error.is_empty(), "{r:?}");
    assert_eq!(stale_serves(&a, "local") + stale_serves(&a, "shared"), 0);
}

#[tokio::test]
async fn a_replica_serves_another_replicas_verdict_stale_from_redis() {
    let redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::from_secs(2));
    let b = replica(&redis, &source, Duration::from_secs(2));
    let start = Instant::now();
    assert!(review(&a).await.authenticated);
    until(start, 1300).await;
    source.set(down());
    let r = review(&b).await;
    assert!(r.authenticated && r.cached, "{r:?}");
    assert_eq!(stale_serves(&b, "shared"), 1);
    until(start, 3300).await;
    let r = review(&b).await;
    assert!(!r.authenticated && !r.error.is_empty(), "{r:?}");
}

#[tokio::test]
async fn answers_from_the_source_while_redis_is_down() {
    let mut redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::ZERO);
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let r = review(&a).await;
    assert!(r.authenticated && !r.cached && r.error.is_empty(), "{r:?}");
    let errors: u64 = ["get", "put"]
        .iter()
        .map(|op| {
            a.metrics()
                .redis_errors
                .get_or_create(&authd::metrics::RedisOpLabels { op })
                .get()
        })
        .sum();
    assert!(errors >= 1, "Redis failures are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_source_call() {
    let redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::ZERO);
    source.close();
    let reviews: Vec<_> = (0..20)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { review(&a).await })
        })
        .collect();
    while source.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    source.open();
    for r in reviews {
        assert!(r.await.unwrap().authenticated);
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_a_revocation_is_refused_and_caches_nothing() {
    let redis = Redis::start();
    let source = Switch::new(alice());
    let a = replica(&redis, &source, Duration::ZERO);
    let b = replica(&redis, &source, Duration::ZERO);
    source.close();
    let pending = {
        let a = a.clone();
        tokio::spawn(async move { review(&a).await })
    };
    while source.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.revoke_token("a-token", None).await.unwrap();
    source.open();
    let r = pending.await.unwrap();
    assert!(!r.authenticated && r.error.is_empty(), "refused, {r:?}");
    // Neither level kept it: B asks the source again, and refuses what it says.
    let r = review(&b).await;
    assert!(!r.authenticated && !r.cached, "{r:?}");
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn without_redis_a_revocation_holds_in_this_process() {
    let source = Switch::new(alice());
    let a = Authd::new(
        Fingerprinter::random(),
        Pipeline {
            sources: vec![source.clone() as Arc<dyn Verifier>],
            clusters: any_cluster(),
            deadline: Duration::from_secs(5),
            digest: [0; 32],
            throttle: Default::default(),
        },
        Ttls {
            positive: Duration::from_secs(60),
            negative: Duration::from_secs(60),
            stale_grace: Duration::ZERO,
        },
        1000,
        Arc::new(Metrics::new()),
    );
    let with_audience = |a: &Authd| {
        let a = a.clone();
        async move {
            a.authenticate(AuthenticateRequest {
                token: "a-token".into(),
                audiences: vec!["https://kubernetes.default.svc".into()],
                ..Default::default()
            })
            .await
        }
    };
    review(&a).await;
    with_audience(&a).await;
    assert!(review(&a).await.cached && with_audience(&a).await.cached);
    let r = a.revoke_token("a-token", None).await.unwrap();
    assert_eq!(r.removed, 0, "no shared level");
    assert!(
        !review(&a).await.authenticated,
        "refused, with no audiences"
    );
    assert!(!with_audience(&a).await.authenticated, "and with audiences");
    assert!(a.unrevoke(r.denial.kind, r.denial.id).await.unwrap());
    assert!(review(&a).await.authenticated, "lifted");
    assert_eq!(a.revoke_user("alice", None).await.unwrap().removed, 0);
    assert!(!review(&a).await.authenticated);
    assert!(!with_audience(&a).await.authenticated);
}
