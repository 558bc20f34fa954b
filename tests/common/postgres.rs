//! A private PostgreSQL for tests: initdb in a temp dir owned by the `postgres` OS user
//! (PostgreSQL refuses to run as root), pg_ctl on a free loopback port with every statement
//! logged, a database `authd`, stopped (`-m immediate`) on drop. Never the shared 5432.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ldap::free_port;

/// PostgreSQL server binaries (initdb, pg_ctl, psql) from the newest installed version.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} not found under /usr/lib/postgresql/*/bin: install the Debian package postgresql")
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` user when we are root, as ourselves otherwise.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    data: PathBuf,
    running: bool,
}

impl Postgres {
    pub fn start(dir: &Path) -> Postgres {
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            // The test's temp dir is root's 0700; the server needs to reach its own dir.
            let parent = dir.parent().unwrap();
            run(
                {
                    let mut c = Command::new("chmod");
                    c.arg("755").arg(parent);
                    c
                },
                "chmod",
            );
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let mut initdb = as_pg(&pg_bin("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        let mut pg = Postgres {
            dir,
            port: free_port(),
            data,
            running: false,
        };
        pg.run();
        run(
            {
                let mut c = Command::new(pg_bin("createdb"));
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                    "authd",
                ]);
                c
            },
            "createdb",
        );
        pg
    }

    /// The URL authd uses.
    pub fn url(&self) -> String {
        self.url_as("postgres")
    }

    /// The URL of another role, without a password.
    pub fn url_as(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/authd", self.port)
    }

    /// Makes `role` prove its password (SCRAM) on loopback TCP; every other role stays
    /// trusted. pg_hba.conf is read top down, so the rule goes first; applied by a reload.
    pub fn require_password(&self, role: &str) {
        let hba = self.data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .expect("write pg_hba.conf");
        assert_eq!(self.psql("SELECT pg_reload_conf()").trim(), "t");
        // The reload is asynchronous: wait until a password-less login is refused.
        for _ in 0..100 {
            let out = Command::new(pg_bin("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", role])
                .args(["-d", "authd", "-w", "-At", "-c", "SELECT 1"])
                .output()
                .expect("run psql");
            if !out.status.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("PostgreSQL still lets {role} in without a password after the reload");
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub fn run(&mut self) {
        let mut c = as_pg(&pg_bin("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c log_statement=all -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "-t", "30", "start"]);
        run(c, "pg_ctl start");
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let mut c = as_pg(&pg_bin("pg_ctl"));
            c.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.stdin(Stdio::null()).output();
            self.running = false;
        }
    }

    /// The server log, with every statement (`log_statement = all`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with psql; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let mut c = Command::new(pg_bin("psql"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", "authd", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        run(c, "psql")
    }

    /// The postmaster and all its children (backends), for SIGSTOP/SIGCONT.
    pub fn pids(&self) -> Vec<i32> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pidfile.lines().next().and_then(|l| l.trim().parse().ok()) else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(postmaster) {
                if let Some(pid) = head.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    pub fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) on our own server's processes.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Opens a psql session that holds `sql` (e.g. a table lock) until dropped.
    pub fn hold(&self, sql: &str) -> Child {
        use std::io::Write;
        let mut child = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "authd", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        child
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            self.signal_all(libc::SIGCONT);
        }
        self.stop();
    }
}
