//! The benchmark suite in smoke mode (a second per scenario, a few connections): every
//! server starts, every scenario available on this build runs, and no review fails. It
//! measures nothing; figures come from `bench/run.sh`.

mod common;

use std::process::Command;

#[test]
fn bench_suite_smoke_runs_with_zero_errors() {
    let dir = common::temp_dir();
    let bench = common::bin("kube-authd-bench");
    let bins = bench.parent().expect("binary folder").to_owned();
    let report = dir.path().join("report.md");
    let out = Command::new(&bench)
        .args(["suite", "--smoke", "--out"])
        .arg(&report)
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .expect("run kube-authd-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench smoke failed:\n{stderr}");
    let text = std::fs::read_to_string(&report).expect("report written");
    for name in [
        "seed-gunicorn/warm/h1",
        "seed-flask/warm/h1",
        "ceiling-https/warm/h1",
        "ceiling-split/warm/h2",
        "split-local/warm/h1",
        "aio-local/cold-file/h1",
        "authd-grpc-local/warm/grpc",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no row {name} in the report:\n{text}"));
        assert!(!row.contains("skipped"), "{row}");
    }
    // The ceiling comparisons run again interleaved (one round in smoke mode), and the
    // targets say they used those rounds.
    for pair in [
        "| `split-redis/warm/h1` vs `ceiling-split/warm/h1` | 1 |",
        "| `aio-local/warm/h1` vs `ceiling-https/warm/h1` | 1 |",
    ] {
        assert!(
            text.contains(pair),
            "no round {pair} in the report:\n{text}"
        );
    }
    assert!(
        text.contains("interleaved rounds (main table:"),
        "targets do not use the rounds:\n{text}"
    );
}
