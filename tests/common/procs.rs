//! Child processes for tests: real binaries from the workspace's target dir, stdout read
//! for a ready line, stderr kept in a file for log assertions, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable's deps folder.
/// `KUBE_AUTHD_TEST_BIN_DIR` overrides the folder, to run a suite against other builds
/// (e.g. main's binaries, to show an attacker test failed before a change).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("KUBE_AUTHD_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_owned()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "binary {} not found: build the workspace binaries first (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}

pub struct Proc {
    pub name: String,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    pub stderr_path: PathBuf,
    ready_line: String,
}

impl Proc {
    pub fn start(binary: &str, args: &[&str], dir: &Path, ready_prefix: &str) -> Proc {
        Self::start_named(binary, binary, args, dir, ready_prefix)
    }

    pub fn start_named(
        name: &str,
        binary: &str,
        args: &[&str],
        dir: &Path,
        ready_prefix: &str,
    ) -> Proc {
        Self::start_env(name, binary, args, dir, ready_prefix, &[])
    }

    pub fn start_env(
        name: &str,
        binary: &str,
        args: &[&str],
        dir: &Path,
        ready_prefix: &str,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut p = Self::spawn(name, binary, args, dir, env);
        p.wait_ready(ready_prefix);
        p
    }

    /// Spawns without waiting for a ready line (for start-up failure tests).
    pub fn spawn(
        name: &str,
        binary: &str,
        args: &[&str],
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let mut cmd = Command::new(bin(binary));
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout_lines: lines,
            stderr_path,
            ready_line: String::new(),
        }
    }

    pub fn wait_ready(&mut self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self
                .stdout_lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                self.ready_line = l.clone();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before it was ready; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30s; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `key=value` field of the ready line.
    pub fn ready_field(&self, key: &str) -> String {
        self.ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{} ready line has no {key}: {}", self.name, self.ready_line))
            .to_owned()
    }

    pub fn stdout(&self) -> String {
        self.stdout_lines.lock().unwrap().join("\n")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Runs `binary serve --config CONFIG`, which must refuse the configuration at start-up:
    /// exit code 1 within 10 s, no ready line. Returns the process, for its stderr.
    pub fn refusing(name: &str, binary: &str, config: &Path, dir: &Path) -> Proc {
        let mut p = Self::spawn(
            name,
            binary,
            &["serve", "--config", config.to_str().unwrap()],
            dir,
            &[],
        );
        assert_eq!(
            p.wait_exit(Duration::from_secs(10)),
            Some(1),
            "{}",
            p.stderr()
        );
        assert!(!p.stdout().contains(" ready"), "{}", p.stdout());
        p
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGCONT first in case a test left it stopped, then kill.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `kube-authd revoke ARGS` against the authd whose gRPC address is `grpc` (plaintext,
/// loopback), with the admin secret in `dir/admin.token`; `stdin` is the token for
/// `--token-stdin`. Returns its stdout; it must succeed.
pub fn kube_authd_revoke(
    dir: &Path,
    grpc: impl std::fmt::Display,
    args: &[&str],
    stdin: Option<&str>,
) -> String {
    let authd = format!("http://{grpc}");
    let secret = dir.join("admin.token");
    let conn = [
        "--authd",
        &authd,
        "--admin-token-file",
        secret.to_str().unwrap(),
    ];
    kube_authd_revoke_with(&conn, args, stdin)
}

/// Runs `kube-authd revoke CONN ARGS` (`CONN`: how to reach authd, `--authd …` and its
/// credentials); `stdin` is the token for `--token-stdin`. Returns its stdout; it must
/// succeed.
pub fn kube_authd_revoke_with(conn: &[&str], args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(bin("kube-authd"))
        .arg("revoke")
        .args(conn)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kube-authd revoke");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kube-authd revoke failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}
