//! Which authd replicas exist and which may take calls: a fixed list or a DNS name (a
//! headless Service) re-resolved periodically; each replica's gRPC health is probed, and a
//! replica enters the balancer's rotation when healthy and leaves it when a probe fails or
//! a call to it fails at the transport (passive ejection, so a retry goes elsewhere). The
//! rotation is fed to the balancer as a `tower::discover` stream of changes.
//!
//! A reload of `edge.toml` may point the edge elsewhere (`Discovery::retarget`): replicas
//! no longer configured leave, new ones join, and a replica kept at the same address
//! under new connection settings (CA, client certificate, timeouts) stays in rotation on
//! its old connection until its new one's first health check answers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use authd_runtime::Reloading;
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tower::discover::Change;

use crate::backend::{BackendError, Reachability};
use crate::balance::Upstream;
use crate::channel;
use crate::config::{Replicas, Target};

/// The one RPC the edge calls.
const AUTHENTICATE_PATH: &str = "/kubeauthd.v1.Authenticator/Authenticate";

/// The gRPC health service name authd reports NOT_SERVING for while it drains.
const HEALTH_SERVICE: &str = "kubeauthd.v1.Authenticator";

/// How replicas are reached and probed.
#[derive(Clone)]
pub struct Settings {
    pub tls: Option<Reloading<ClientConfig>>,
    pub connect_timeout: Duration,
    pub health_interval: Duration,
}

struct Slot {
    client: Grpc<Channel>,
    in_rotation: bool,
    /// The rotation holds a client on this replica's previous connection (the settings
    /// changed); the first healthy probe of the new one replaces it.
    stale: bool,
    /// Where and under which settings (`Registry::generation`) `client` connects.
    target: Target,
    generation: u64,
    prober: tokio::task::AbortHandle,
    /// When a failing probe of a replica out of rotation was last logged: a replica that
    /// never becomes healthy (a wrong port, a TLS mismatch) is said so, once a minute.
    last_complaint: Option<std::time::Instant>,
}

/// Between log lines about a replica that stays out of rotation.
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);

/// The replicas and the channel of rotation changes to the balancer.
struct Registry {
    changes: mpsc::UnboundedSender<Change<String, Replica>>,
    slots: HashMap<String, Slot>,
    reachability: Reachability,
    /// How replicas are reached now, and its number (bumped by every retarget).
    settings: Settings,
    generation: u64,
    /// The DNS re-resolution task, when replicas come from DNS.
    resolver: Option<tokio::task::AbortHandle>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Puts a replica into or out of rotation; `why` is logged on transitions.
    fn set(&mut self, key: &str, healthy: bool, why: &str, me: &Weak<Mutex<Registry>>) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !healthy
            && !slot.in_rotation
            && slot
                .last_complaint
                .is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY)
        {
            slot.last_complaint = Some(std::time::Instant::now());
            tracing::warn!(
                replica = key,
                reason = why,
                "authd replica not healthy; not in rotation (logged again in a minute if it stays so)"
            );
        }
        if slot.in_rotation == healthy && !(healthy && slot.stale) {
            return;
        }
        let replaced = slot.in_rotation && slot.stale;
        slot.in_rotation = healthy;
        slot.stale = false;
        let change = if healthy {
            if replaced {
                tracing::info!(
                    replica = key,
                    "authd replica healthy on its new connection settings; in rotation"
                );
            } else {
                tracing::info!(replica = key, "authd replica healthy; in rotation");
            }
            Change::Insert(
                key.to_owned(),
                Replica {
                    key: key.to_owned(),
                    client: slot.client.clone(),
                    registry: me.clone(),
                },
            )
        } else {
            tracing::warn!(
                replica = key,
                reason = why,
                "authd replica ejected from rotation"
            );
            Change::Remove(key.to_owned())
        };
        let _ = self.changes.send(change);
        let up = self.slots.values().filter(|s| s.in_rotation).count();
        if self.reachability.get() != (up > 0) {
            if up > 0 {
                tracing::info!("authd reachable: a replica is in rotation; readiness on");
            } else {
                tracing::warn!("no healthy authd replica; readiness off");
            }
        }
        self.reachability.set(up > 0);
    }

    /// Adds a replica, or reconnects one whose target or settings changed (it stays in
    /// rotation on its old connection until the new one is found healthy).
    fn add(&mut self, key: String, target: &Target, me: &Weak<Mutex<Registry>>) {
        if let Some(slot) = self.slots.get(&key) {
            if slot.generation == self.generation && slot.target == *target {
                return;
            }
        }
        let settings = &self.settings;
        let channel = match channel::connect(target, settings.tls.clone(), settings.connect_timeout)
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(replica = key, error = %format!("{e:#}"), "cannot use authd replica");
                return;
            }
        };
        let prober = tokio::spawn(probe(
            key.clone(),
            self.generation,
            channel.clone(),
            settings.health_interval,
            me.clone(),
        ))
        .abort_handle();
        match self.slots.get_mut(&key) {
            Some(slot) => {
                slot.prober.abort();
                slot.client = Grpc::new(channel);
                slot.prober = prober;
                slot.stale = slot.in_rotation;
                slot.target = target.clone();
                slot.generation = self.generation;
                tracing::info!(
                    replica = key,
                    "authd replica reconnecting with new settings"
                );
            }
            None => {
                tracing::info!(replica = key, "authd replica discovered");
                self.slots.insert(
                    key,
                    Slot {
                        last_complaint: None,
                        client: Grpc::new(channel),
                        in_rotation: false,
                        stale: false,
                        target: target.clone(),
                        generation: self.generation,
                        prober,
                    },
                );
            }
        }
    }

    fn remove(&mut self, key: &str, why: &str, me: &Weak<Mutex<Registry>>) {
        self.set(key, false, why, me);
        if let Some(slot) = self.slots.remove(key) {
            slot.prober.abort();
            tracing::info!(replica = key, reason = why, "authd replica removed");
        }
    }

    /// Follows `replicas` from now on, under new `settings` if given (every replica then
    /// reconnects): a fixed list is applied at once (replicas not in it leave); DNS
    /// replaces the resolver task, whose first answer does the same.
    fn retarget(&mut self, replicas: Replicas, settings: Option<Settings>, me: &Shared) {
        if let Some(settings) = settings {
            self.settings = settings;
            self.generation += 1;
        }
        if let Some(r) = self.resolver.take() {
            r.abort();
        }
        let weak = Arc::downgrade(me);
        match replicas {
            Replicas::Static(list) => {
                let keep: Vec<&str> = list.iter().map(|t| t.addr.as_str()).collect();
                let gone: Vec<String> = self
                    .slots
                    .keys()
                    .filter(|k| !keep.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for k in gone {
                    self.remove(&k, "no longer configured", &weak);
                }
                for t in &list {
                    self.add(t.addr.clone(), t, &weak);
                }
            }
            Replicas::Dns {
                host,
                port,
                refresh,
            } => {
                let task = tokio::spawn(resolve(host, port, refresh, me.clone(), system_lookup));
                self.resolver = Some(task.abort_handle());
            }
        }
    }
}

/// Points a running discovery elsewhere (a reload of `[authd]`).
#[derive(Clone)]
pub struct Discovery {
    registry: Weak<Mutex<Registry>>,
}

impl Discovery {
    /// From now on the replicas are `replicas`, reached under `settings` when given (else
    /// as before).
    pub fn retarget(&self, replicas: Replicas, settings: Option<Settings>) {
        if let Some(r) = self.registry.upgrade() {
            lock(&r).retarget(replicas, settings, &r);
        }
    }
}

/// Probes one replica's health every `interval` while the registry lives; `generation`
/// is the settings' number the channel was made under (a verdict on an older connection
/// is not applied to a replaced one).
async fn probe(
    key: String,
    generation: u64,
    channel: Channel,
    interval: Duration,
    registry: Weak<Mutex<Registry>>,
) {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: HEALTH_SERVICE.into(),
        });
        let limit = interval.max(Duration::from_millis(500));
        req.set_timeout(limit);
        let verdict = match tokio::time::timeout(limit, client.check(req)).await {
            Err(_) => Err(format!("health check timed out after {limit:?}")),
            Ok(Err(status)) => Err(format!(
                "health check failed: {:?}: {}",
                status.code(),
                status.message()
            )),
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(_)) => Err("health check says NOT_SERVING (draining)".to_owned()),
        };
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let why = verdict.as_ref().err().map_or("", String::as_str);
        {
            let mut r = lock(&registry);
            if r.slots.get(&key).map(|s| s.generation) != Some(generation) {
                return;
            }
            r.set(&key, verdict.is_ok(), why, &Arc::downgrade(&registry));
        }
        drop(registry);
        tokio::time::sleep(interval).await;
    }
}

/// A replica in rotation: one `Authenticate` call per review, the review's remaining time
/// sent as the gRPC timeout. A transport failure ejects the replica before the error is
/// returned, so a retry is balanced over the others. The caller bounds the wait (the edge's
/// handler times the whole review out at the same deadline).
pub struct Replica {
    key: String,
    client: Grpc<Channel>,
    registry: Weak<Mutex<Registry>>,
}

/// `left` rounded down to whole milliseconds, for the `grpc-timeout` header: the time left
/// differs by microseconds from review to review, and an exact value would be a new header
/// value every time, which HPACK adds to its table and compares on every call (+2.5k
/// instructions per review, measured); in whole milliseconds it repeats and is indexed.
/// Rounding down never gives authd more time than the review has.
fn whole_millis(left: Duration) -> Duration {
    Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
}

impl Upstream for Replica {
    /// One `Authenticate` call with `left` of the review's time, sent as its gRPC timeout.
    async fn authenticate(
        &self,
        request: Arc<AuthenticateRequest>,
        left: Duration,
    ) -> Result<AuthenticateResponse, BackendError> {
        let left = whole_millis(left);
        if left.is_zero() {
            return Err(BackendError::Timeout(Duration::ZERO));
        }
        let mut request = tonic::Request::new(SharedRequest(request));
        request.set_timeout(left);
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "kubeauthd.v1.Authenticator",
            "Authenticate",
        ));
        let mut client = self.client.clone();
        let call = async {
            client
                .ready()
                .await
                .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
            client
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static(AUTHENTICATE_PATH),
                    tonic_prost::ProstCodec::<SharedRequest, AuthenticateResponse>::default(),
                )
                .await
        };
        let status = match call.await {
            Ok(resp) => return Ok(resp.into_inner()),
            Err(status) => status,
        };
        let message = format!("{}: {:?}: {}", self.key, status.code(), status.message());
        Err(match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
                BackendError::Refused(message)
            }
            tonic::Code::DeadlineExceeded => BackendError::Timeout(left),
            tonic::Code::ResourceExhausted => BackendError::Overloaded(message),
            // Transport failures (UNAVAILABLE; CANCELLED or UNKNOWN when a connection
            // closes under the call, as when authd drains): the replica or the way to it
            // is down, so it leaves the rotation before the retry is balanced.
            _ => {
                if let Some(r) = self.registry.upgrade() {
                    lock(&r).set(&self.key, false, &message, &Arc::downgrade(&r));
                }
                BackendError::Unavailable(message)
            }
        })
    }
}

/// The running replica set: its rotation changes (for the balancer), readiness, and the
/// handle that points it elsewhere.
pub struct ReplicaSet {
    pub changes: mpsc::UnboundedReceiver<Change<String, Replica>>,
    pub reachability: Reachability,
    pub discovery: Discovery,
}

/// Starts discovery and health probing; the tasks stop when the balancer (the holder of
/// `changes`) and every replica are dropped.
pub fn start(replicas: Replicas, settings: Settings) -> ReplicaSet {
    let (tx, rx) = mpsc::unbounded_channel();
    let reachability = Reachability::never();
    let registry: Shared = Arc::new(Mutex::new(Registry {
        changes: tx,
        slots: HashMap::new(),
        reachability: reachability.clone(),
        settings,
        generation: 0,
        resolver: None,
    }));
    lock(&registry).retarget(replicas, None, &registry);
    let discovery = Discovery {
        registry: Arc::downgrade(&registry),
    };
    // Replicas and probers hold weak references; the registry lives as long as the
    // balancer's change stream is open.
    let keep = registry;
    let closed = lock(&keep).changes.clone();
    tokio::spawn(async move {
        closed.closed().await;
        drop(keep);
    });
    ReplicaSet {
        changes: rx,
        reachability,
        discovery,
    }
}

/// The system resolver (a headless Service's A/AAAA records in Kubernetes).
async fn system_lookup(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
}

/// Re-resolves `host` every `refresh` with `lookup`; replicas whose address disappears
/// leave, new ones join. A failed lookup keeps the current set (DNS trouble is not replica
/// trouble).
async fn resolve<L, F>(host: String, port: u16, refresh: Duration, registry: Shared, lookup: L)
where
    L: Fn(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let me = Arc::downgrade(&registry);
    let mut last: Option<Vec<String>> = None;
    loop {
        match lookup(host.clone(), port).await {
            Ok(addrs) => {
                let mut keys: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                keys.sort();
                keys.dedup();
                if last.as_ref() != Some(&keys) {
                    tracing::info!(dns = %host, addresses = ?keys, "authd addresses resolved");
                    let mut r = lock(&registry);
                    let gone: Vec<String> = r
                        .slots
                        .keys()
                        .filter(|k| !keys.contains(k))
                        .cloned()
                        .collect();
                    for k in gone {
                        r.remove(&k, "no longer in DNS", &me);
                    }
                    for k in &keys {
                        let target = Target {
                            addr: k.clone(),
                            server_name: host.clone(),
                        };
                        r.add(k.clone(), &target, &me);
                    }
                    last = Some(keys);
                }
            }
            Err(e) => {
                tracing::warn!(dns = %host, error = %e, "cannot resolve authd; keeping the current replicas")
            }
        }
        if lock(&registry).changes.is_closed() {
            return;
        }
        tokio::time::sleep(refresh).await;
    }
}

/// An `AuthenticateRequest` behind an `Arc`, encoded as the request itself: what the
/// generated client would send, without owning (and so copying) the message.
#[derive(Default)]
struct SharedRequest(Arc<AuthenticateRequest>);

/// Without the token (prost's `Message` requires `Debug`; nothing here should print one).
impl std::fmt::Debug for SharedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRequest")
            .field("cluster", &self.0.cluster)
            .field("request_id", &self.0.request_id)
            .finish_non_exhaustive()
    }
}

impl prost::Message for SharedRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        self.0.encode_raw(buf)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Arc::make_mut(&mut self.0).merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        *self = SharedRequest(Arc::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_timeout_is_whole_milliseconds_rounded_down() {
        assert_eq!(
            whole_millis(Duration::from_micros(9_999_987)),
            Duration::from_millis(9_999)
        );
        assert_eq!(whole_millis(Duration::from_micros(999)), Duration::ZERO);
        assert_eq!(
            whole_millis(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    /// Replica membership follows the DNS answer: addresses that appear join, addresses
    /// that disappear leave, and a failed lookup changes nothing.
    #[tokio::test]
    async fn membership_follows_re_resolution() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let settings = Settings {
            tls: None,
            connect_timeout: Duration::from_millis(100),
            health_interval: Duration::from_secs(60),
        };
        let registry: Shared = Arc::new(Mutex::new(Registry {
            changes: tx,
            slots: HashMap::new(),
            reachability: Reachability::never(),
            settings,
            generation: 0,
            resolver: None,
        }));
        let answer: Arc<Mutex<std::io::Result<Vec<SocketAddr>>>> =
            Arc::new(Mutex::new(Ok(vec!["127.0.0.1:1".parse().unwrap()])));
        let dns = answer.clone();
        let lookup = move |_host: String, _port: u16| {
            let now = match &*dns.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            async move { now }
        };
        tokio::spawn(resolve(
            "authd.example".into(),
            1,
            Duration::from_millis(20),
            registry.clone(),
            lookup,
        ));
        let members = || {
            let mut k: Vec<String> = lock(&registry).slots.keys().cloned().collect();
            k.sort();
            k
        };
        wait_for(&members, &["127.0.0.1:1"]).await;
        *answer.lock().unwrap() = Ok(vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.2:1".parse().unwrap(),
        ]);
        wait_for(&members, &["127.0.0.1:1", "127.0.0.2:1"]).await;
        *answer.lock().unwrap() = Ok(vec!["127.0.0.2:1".parse().unwrap()]);
        wait_for(&members, &["127.0.0.2:1"]).await;
        *answer.lock().unwrap() = Err(std::io::Error::other("SERVFAIL"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            members(),
            vec!["127.0.0.2:1"],
            "a failed lookup keeps the set"
        );
    }

    async fn wait_for(members: &impl Fn() -> Vec<String>, want: &[&str]) {
        for _ in 0..200 {
            if members() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("members {:?}, expected {want:?}", members());
    }

    /// On the wire a shared request is exactly the request, both ways.
    #[test]
    fn shared_request_encodes_as_the_request() {
        use prost::Message;
        let request = AuthenticateRequest {
            token: "t0ken".into(),
            audiences: vec!["https://a".into(), "b".into()],
            cluster: "prod".into(),
            request_id: "0123456789abcdef".into(),
        };
        let shared = SharedRequest(Arc::new(request.clone()));
        assert_eq!(shared.encoded_len(), request.encoded_len());
        let bytes = shared.encode_to_vec();
        assert_eq!(bytes, request.encode_to_vec());
        let back = SharedRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(*back.0, request);
        assert!(!format!("{shared:?}").contains("t0ken"));
    }
}
