//! A private slapd for tests: slapd.conf with the mdb backend in a temp dir, an LDIF fixture
//! loaded with slapadd, served on a free loopback port (plain LDAP with StartTLS, and
//! ldaps on a second port), stats logging to a file so tests can count binds and searches.
//! Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const SERVICE_DN: &str = "cn=authd,ou=services,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "svc-secret";
/// A user name full of LDAP filter metacharacters.
pub const WEIRD_USER: &str = "we*ird)(name\\";

/// Users in nested OUs, groups (one nested in another), a service account, a user name with
/// filter metacharacters and a uid shared by two entries. slapadd bypasses the memberof
/// overlay, so alice's `memberOf` values are written here.
pub fn fixture() -> String {
    format!(
        "dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: authd
userPassword: {SERVICE_PASSWORD}

dn: ou=eng,{SUFFIX}
objectClass: organizationalUnit
ou: eng

dn: ou=people,ou=eng,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=ops,{SUFFIX}
objectClass: organizationalUnit
ou: ops

dn: ou=people,ou=ops,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

{alice}
{bob}
{weird}
{dup_eng}
{dup_ops}
dn: cn=platform,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: platform
member: uid=alice,ou=people,ou=eng,{SUFFIX}

dn: cn=engineering,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: engineering
member: cn=platform,ou=groups,{SUFFIX}

dn: cn=everyone,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: everyone
member: cn=engineering,ou=groups,{SUFFIX}

dn: cn=sre,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: sre
member: uid=bob,ou=people,ou=ops,{SUFFIX}
member: uid=we*ird)(name\\5C,ou=people,ou=ops,{SUFFIX}
",
        alice = person("alice", "eng", "alice-pw", 1001, Some("alice@example.org"))
            + &format!(
                "memberOf: cn=platform,ou=groups,{SUFFIX}\nmemberOf: cn=a\\2Cb team,ou=groups,{SUFFIX}\n"
            ),
        bob = person("bob", "ops", "bob-pw", 1002, None),
        weird = person(WEIRD_USER, "ops", "weird-pw", 1003, None),
        dup_eng = person("dup", "eng", "dup-pw", 1004, None),
        dup_ops = person("dup", "ops", "dup-pw", 1005, None),
    )
}

fn person(uid: &str, ou: &str, password: &str, number: u32, mail: Option<&str>) -> String {
    let rdn = uid.replace('\\', "\\5C");
    let mail = mail.map(|m| format!("mail: {m}\n")).unwrap_or_default();
    format!(
        "dn: uid={rdn},ou=people,ou={ou},{SUFFIX}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: {uid}
cn: {uid}
sn: {uid}
uidNumber: {number}
gidNumber: {number}
homeDirectory: /home/{number}
userPassword: {password}
{mail}"
    )
}

fn need(cmd: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!("{cmd} not found: install the Debian package {package} (apt-get install {package})");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Slapd {
    pub dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Slapd {
    /// Configures and starts slapd in `dir/slapd`; `tls` names a PEM cert and key
    /// (e.g. from `kube-authd certs init`) for StartTLS and ldaps.
    pub fn start(dir: &Path, tls: (&Path, &Path)) -> Slapd {
        need("slapd", "slapd");
        let slapadd = need("slapadd", "slapd");
        need("ldapsearch", "ldap-utils");
        let dir = dir.join("slapd");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
loglevel stats
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
database mdb
maxsize 10485760
suffix \"{SUFFIX}\"
rootdn \"{ROOT_DN}\"
rootpw root-secret
directory {dir}/db
index objectClass,uid,member eq
overlay memberof
",
                dir = dir.display(),
                cert = tls.0.display(),
                key = tls.1.display(),
            ),
        )
        .unwrap();
        let ldif = dir.join("fixture.ldif");
        std::fs::write(&ldif, fixture()).unwrap();
        let out = Command::new(slapadd)
            .args(["-f", conf.to_str().unwrap(), "-l", ldif.to_str().unwrap()])
            .output()
            .expect("run slapadd");
        assert!(out.status.success(), "slapadd: {out:?}");
        let mut s = Slapd {
            dir,
            port: free_port(),
            tls_port: free_port(),
            conf,
            child: None,
        };
        s.run();
        s
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The stats log (connections, binds, searches).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    /// Binds that failed with invalidCredentials (err=49): the wrong passwords that reached
    /// the directory, each of which counts toward a directory's own lockout.
    pub fn failed_binds(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(" RESULT tag=97 err=49"))
            .count()
    }

    /// Binds as `dn` (requests, whatever their result).
    pub fn binds_as(&self, dn: &str) -> usize {
        let dn = dn.to_lowercase();
        self.log()
            .lines()
            // slapd logs each bind twice: the request (`method=`) and the result (`mech=`).
            .filter(|l| l.contains("BIND dn=") && l.contains(" method="))
            .filter(|l| l.to_lowercase().contains(&dn))
            .count()
    }

    /// Sets the password of the entry `dn`, as the directory's administrator.
    pub fn set_password(&self, dn: &str, password: &str) {
        use std::io::Write;
        let mut child = Command::new(need("ldapmodify", "ldap-utils"))
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", "root-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ldapmodify");
        let change = format!(
            "dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n"
        );
        child
            .stdin
            .take()
            .unwrap()
            .write_all(change.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {out:?}");
    }

    /// Starts slapd (again) on the same ports and waits until it answers a search.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "slapd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("slapd.log"))
            .unwrap();
        let child = Command::new(need("slapd", "slapd"))
            .args([
                "-f",
                self.conf.to_str().unwrap(),
                "-h",
                &format!("{} {}/", self.url(), self.ldaps_url()),
                "-d",
                "stats",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn slapd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new(need("ldapsearch", "ldap-utils"))
                .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", "root-secret"])
                .args(["-b", SUFFIX, "-s", "base", "dn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slapd exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "slapd not answering within 20s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills slapd (the data stays, so `run` brings the same directory back).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("slapd running").id() as i32;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Slapd {
    /// Applies an LDIF change as the directory's root (ldapmodify).
    pub fn modify(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new(need("ldapmodify", "ldap-utils"))
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", "root-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ldapmodify");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {out:?}\n{ldif}");
    }
}
