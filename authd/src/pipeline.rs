//! The source pipeline: the identity sources in their configured order and the per-cluster
//! policies, swapped as one on reload.
//!
//! A token goes only to the sources that own its shape (`Verifier::owns`), in order; the
//! first definitive answer decides. Each source already sits behind its identity mapping
//! (`mapping::Mapped`, wrapped in `source::build_all`), so the verdict names the mapped
//! user. Cluster policy is not part of the cached verdict: the service applies it after the
//! cache (`policy::Cluster::admit`), so one cached verdict serves every cluster under its
//! own policy.
//!
//! Before a throttled source (`throttle.rs`) is asked, the failure budgets of the token's
//! subject and cluster are consulted; over budget, the source is not asked and the walk
//! ends with the throttle's marker (a definitive "no" the caches do not keep).
//!
//! A walk has a deadline of its own, the sum of the owning sources' timeouts and a margin:
//! the verdict cache runs it in a task no caller can cancel, so it must end by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::identity::{Identity, Outcome, Verdict};
use crate::mapping::{check_reserved, MappingError, DEFAULT_RESERVED};
use crate::metrics::{Metrics, SourceLabels};
use crate::policy::Clusters;
use crate::source::{self, Expiry, SourceConfig, Verifier};
use crate::throttle::{self, Admission, Throttle};

/// Added to the sources' timeouts: scheduling and the mapping, never a network wait.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The longest one source may take, from its configured timeouts: its own limit
/// (LDAP's search, bind and group searches share three timeouts), and for JWT and
/// PostgreSQL one more for the key-set fetch or the migration another lookup started.
fn source_deadline(source: &SourceConfig) -> Duration {
    match source {
        SourceConfig::TokenFile(_) => Duration::ZERO,
        SourceConfig::BasicAuth(c) => c.timeout,
        SourceConfig::Jwt(c) => c.jwks_timeout * 2,
        SourceConfig::Ldap(c) => c.timeout * 3,
        SourceConfig::Postgres(c) => c.timeout * 2,
    }
}

/// The parts of the configuration that a reload swaps as one.
pub struct Pipeline {
    pub sources: Vec<Arc<dyn Verifier>>,
    /// The clusters served: any other name is refused.
    pub clusters: Clusters,
    /// When a walk through the sources gives up: "could not decide".
    pub deadline: Duration,
    /// What the sources are: a hash of their configuration and of the files they read. The
    /// verdict cache keys every entry under it (`Fingerprint::within`), so after a reload no
    /// replica with the new content is answered from entries the old content wrote.
    pub digest: [u8; 32],
    /// How each source's failed verifications are throttled.
    pub throttle: throttle::Policy,
}

/// What a walk needs besides the token: where to count, the throttle's state, and the
/// label of the cluster whose review started the lookup (its failure budget).
pub struct Walk<'a> {
    pub metrics: &'a Metrics,
    pub throttle: &'a Throttle,
    pub cluster: &'a str,
}

impl Pipeline {
    /// Builds every configured source (nothing remote is contacted) with the cluster
    /// policies; errors name the source and its field.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            sources: source::build_all(&config.sources)?,
            clusters: Clusters::new(&config.clusters),
            deadline: config.sources.iter().map(source_deadline).sum::<Duration>()
                + DEADLINE_MARGIN,
            digest: digest(&config.sources),
            throttle: config.throttle.policy(&config.sources),
        })
    }

    /// The first owning source's id for the token's credential, if it names one.
    pub fn credential_id<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.sources
            .iter()
            .filter(|s| s.owns(token))
            .find_map(|s| s.credential_id(token))
    }

    /// What the first owning source that keeps token ends says of this token's (see
    /// `Verifier::expiry`); bounded by the pipeline's deadline.
    pub async fn expiry(&self, token: &str) -> Expiry {
        let ask = async {
            for source in self.sources.iter().filter(|s| s.owns(token)) {
                match source.expiry(token).await {
                    Expiry::Unknown => continue,
                    known => return known,
                }
            }
            Expiry::Unknown
        };
        tokio::time::timeout(self.deadline, ask)
            .await
            .unwrap_or(Expiry::Unknown)
    }

    /// Asks, in order, only the sources that own the token; the first definitive answer
    /// wins. "Could not decide" stops the walk: a later source's "no" must not stand in
    /// for an earlier source's unknown answer. No owning source at all is a definitive "no"
    /// with an empty source name. The error is a message safe to log and to return. Gives up
    /// ("could not decide") at the pipeline's deadline. A throttled token ends the walk
    /// with `throttle::throttled()` before its source is asked.
    pub async fn decide(
        &self,
        token: &str,
        audiences: &[String],
        with: Walk<'_>,
    ) -> Result<Verdict, Arc<str>> {
        match tokio::time::timeout(self.deadline, self.walk(token, audiences, with)).await {
            Ok(decided) => decided,
            Err(_) => Err(format!(
                "the identity sources did not answer within {:?}",
                self.deadline
            )
            .into()),
        }
    }

    async fn walk(
        &self,
        token: &str,
        audiences: &[String],
        with: Walk<'_>,
    ) -> Result<Verdict, Arc<str>> {
        let metrics = with.metrics;
        for (index, source) in self.sources.iter().enumerate() {
            if !source.owns(token) {
                continue;
            }
            let subject = source.throttle_subject(token);
            let admission = with
                .throttle
                .admit(&self.throttle, index, token, subject, with.cluster)
                .await;
            if let Admission::Throttled(_) = admission {
                return Err(throttle::throttled());
            }
            let started = Instant::now();
            let outcome = source.verify(token, audiences).await;
            if matches!(outcome, Outcome::WrongSecret) {
                with.throttle.theft(&self.throttle, index, subject);
            }
            with.throttle.settle(admission, &outcome);
            let labels = SourceLabels {
                source: source.name().to_owned(),
                outcome: outcome_label(&outcome),
            };
            metrics.source_calls.get_or_create(&labels).inc();
            metrics
                .source_latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let source_name = source.name().to_owned();
            match outcome {
                Outcome::Authenticated(identity) => {
                    return Ok(Verdict {
                        identity: Some(identity),
                        source: source_name,
                    })
                }
                Outcome::Rejected | Outcome::WrongSecret => {
                    return Ok(Verdict {
                        identity: None,
                        source: source_name,
                    })
                }
                Outcome::NotMine => continue,
                Outcome::Undecided(why) => {
                    return Err(
                        format!("identity source {source_name:?} could not decide: {why}").into(),
                    )
                }
            }
        }
        Ok(Verdict {
            identity: None,
            source: String::new(),
        })
    }

    /// The reserved-prefix guard on an answer from any level: the deciding source (by name,
    /// in this pipeline) must be allowed to mint it; an answer naming no configured source
    /// gets the default prefixes. Cheap: a name lookup and prefix compares, no decryption.
    pub fn may_serve(&self, source: &str, identity: &Identity) -> Result<(), MappingError> {
        match self.sources.iter().find(|s| s.name() == source) {
            Some(s) => s.may_mint(identity),
            None => check_reserved(DEFAULT_RESERVED, identity),
        }
    }
}

/// The sources' configuration (in order) and the content of every file they read, hashed.
/// Replicas with the same configuration and files agree on it; a file that cannot be read
/// counts as its own content.
fn digest(sources: &[SourceConfig]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for s in sources {
        let config = format!("{s:?}");
        hash.update((config.len() as u64).to_be_bytes());
        hash.update(config.as_bytes());
        for file in s.files() {
            match std::fs::read(file) {
                Ok(bytes) => {
                    hash.update((bytes.len() as u64).to_be_bytes());
                    hash.update(&bytes);
                }
                Err(_) => hash.update(u64::MAX.to_be_bytes()),
            }
        }
    }
    hash.finalize().into()
}

/// The `outcome` label of a source call.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Authenticated(_) => "authenticated",
        Outcome::Rejected => "rejected",
        Outcome::WrongSecret => "wrong_secret",
        Outcome::NotMine => "not_mine",
        Outcome::Undecided(_) => "undecided",
    }
}
