//! `kube-authd up` sheds load exactly like the split edge: above its in-flight limit a
//! review is answered at once with the retryable 500 ("overloaded", no Retry-After), and
//! the identity source never sees it (ARCHITECTURE.md: "overload is a fast 500").

mod common;

use std::time::{Duration, Instant};

use common::basic_auth::{BasicAuthServer, Mode};
use common::*;

/// The in-flight limit given to `up`.
const LIMIT: usize = 2;

#[tokio::test(flavor = "multi_thread")]
async fn up_answers_the_fast_retryable_500_above_its_in_flight_limit() {
    let users: Vec<(String, String)> = (0..8)
        .map(|i| (format!("u{i}"), format!("pw{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let ba = BasicAuthServer::start(&pairs);
    // Every source call takes 3 s: the first reviews hold the edge's permits meanwhile.
    ba.http.set_mode(Mode::Slow(Duration::from_secs(3)));
    let dir = temp_dir();
    let d = dir.path();
    let config = write(
        d,
        "authd.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n[clusters.default]\n[[sources]]\nname = \"corp\"\ntype = \"basic_auth\"\n\
             url = \"{}\"\ntimeout = \"20s\"\n",
            ba.template()
        ),
    );
    let up = Proc::start(
        "kube-authd",
        &[
            "up",
            "--state-dir",
            d.join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--max-in-flight-reviews",
            &LIMIT.to_string(),
        ],
        d,
        "kube-authd ready",
    );
    register_up(&d.join("state"));
    let kc = Kubeconfig::load(&d.join("state/webhook-kubeconfig.yaml"));
    let c = client(&kc.ca_pem, Proto::H2, None);

    // LIMIT reviews reach the slow source and hold every permit.
    let held: Vec<_> = users[..LIMIT]
        .iter()
        .map(|(u, p)| {
            let (c, url, token) = (c.clone(), kc.server.clone(), format!("{u}:{p}"));
            tokio::spawn(async move { review(&c, &url, V1, &token).await })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(10);
    while ba.http.requests().len() < LIMIT {
        assert!(
            Instant::now() < until,
            "the first reviews never reached the source"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every review above the limit is answered at once, without reaching the source.
    let extra: Vec<_> = users[LIMIT..]
        .iter()
        .map(|(u, p)| {
            let (c, url, token) = (c.clone(), kc.server.clone(), format!("{u}:{p}"));
            tokio::spawn(async move {
                let started = Instant::now();
                let a = review(&c, &url, V1, &token).await;
                (a, started.elapsed())
            })
        })
        .collect();
    for e in extra {
        let (a, took) = e.await.unwrap();
        a.assert_undecided();
        let message = a.body["message"].as_str().unwrap_or_default();
        assert!(message.contains("overloaded"), "{a:?}");
        assert!(
            took < Duration::from_secs(1),
            "the overload answer took {took:?}: it waited for the source"
        );
    }
    assert_eq!(
        ba.http.requests().len(),
        LIMIT,
        "reviews above the limit reached the identity source"
    );

    // The held reviews finish normally, and their permits come back.
    for h in held {
        let a = h.await.unwrap();
        assert!(a.authenticated(), "{a:?}");
    }
    ba.http.set_mode(Mode::Normal);
    let (u, p) = &users[LIMIT];
    let a = review(&c, &kc.server, V1, &format!("{u}:{p}")).await;
    assert!(a.authenticated(), "after the overload: {a:?}");
    assert!(
        ba.http.requests().len() <= LIMIT + 1,
        "{} source calls",
        ba.http.requests().len()
    );

    let (_, metrics) = admin_get(&up.ready_field("admin"), "/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "edge_reviews_total",
            &[("result", "undecided"), ("code", "500")]
        ),
        (users.len() - LIMIT) as f64,
        "{metrics}"
    );
}
