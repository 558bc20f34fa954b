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

/// `bench/run.sh` runs the benchmark binary from the target folder cargo builds into, so a
/// `CARGO_TARGET_DIR` elsewhere is honoured. The release build is stood in for (a `cargo`
/// ahead on PATH that skips `build` and passes everything else to the real one), and the
/// benchmark binary in the other folder only reports how it was called.
#[test]
fn bench_run_sh_honours_cargo_target_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::temp_dir();
    let exe = |path: &std::path::Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let real_cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    exe(
        &dir.path().join("bin/cargo"),
        &format!("#!/bin/sh\n[ \"$1\" = build ] && exit 0\nexec '{real_cargo}' \"$@\"\n"),
    );
    let target = dir.path().join("elsewhere");
    exe(
        &target.join("release/kube-authd-bench"),
        "#!/bin/sh\necho \"elsewhere: $*\"\n",
    );
    let path = format!(
        "{}:{}",
        dir.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/run.sh"))
        .args(["--smoke", "--only", "warm"])
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run bench/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "elsewhere: suite --smoke --only warm",
        "bench/run.sh did not run $CARGO_TARGET_DIR/release/kube-authd-bench:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
