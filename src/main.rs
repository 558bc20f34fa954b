//! `kube-authd`: the all-in-one binary and the operator's tool.

mod kubeconfig;
mod login;
mod pki;
mod revoke;
mod throttle;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use authd_runtime::process::{self, LogArgs};

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived
/// buffers on several threads, where glibc's arenas cost ≈ 15% of the CPU (perf, warm path).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kube-authd",
    version,
    about = "Kubernetes webhook token authentication"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run edge and authd in one process (generates certificates, a demo token file and
    /// the webhook kubeconfig on first start).
    Up {
        /// Where certificates, tokens and the kubeconfig are kept.
        #[arg(long, default_value = ".kube-authd")]
        state_dir: PathBuf,
        /// HTTPS address kube-apiserver calls.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Host name or IP put in the certificate and kubeconfig (default: the listen IP).
        #[arg(long)]
        advertise: Option<String>,
        /// Token file in --token-auth-file CSV format (default: a generated demo file).
        #[arg(long, conflicts_with = "config")]
        token_file: Option<PathBuf>,
        /// A full authd configuration (TOML) instead of the single token file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// authd gRPC address for internal clients (ignored with --config: its `listen` is used).
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_listen: SocketAddr,
        /// Plain-HTTP /healthz, /readyz and /metrics.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// HTTPS address of the login routes (`kube-authd login`; default: --listen's
        /// port + 1).
        #[arg(long)]
        login_listen: Option<SocketAddr>,
        #[command(flatten)]
        limits: up::EdgeLimits,
    },
    /// Print a kubeconfig for kube-apiserver's --authentication-token-webhook-config-file.
    WebhookConfig {
        /// The edge URL, e.g. https://authn.example.com:8443/authenticate
        #[arg(long)]
        server: String,
        /// PEM CA that signed the edge's certificate.
        #[arg(long)]
        ca: PathBuf,
        /// kube-apiserver's client certificate, for mTLS.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// PEM private key of --client-cert.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Revoke one token (read from stdin), one user or one credential id on every authd
    /// replica, through authd's Admin gRPC service: refused until it would have expired
    /// (a token), until lifted (a user) or until --until. `revoke lift` lifts one,
    /// `revoke list` lists them (keyed ids only).
    Revoke {
        #[command(flatten)]
        conn: revoke::AdminConn,
        #[command(flatten)]
        target: revoke::Target,
        /// End of the revocation: an RFC 3339 time or a duration from now (e.g. 2h).
        #[arg(long)]
        until: Option<String>,
        #[command(subcommand)]
        action: Option<RevokeCommand>,
    },
    /// Failed-verification throttling: `throttle status --user NAME` shows a user's
    /// budgets (or a token id's, --credential-id), `throttle reset --user NAME` empties
    /// them, through authd's Admin gRPC service.
    Throttle {
        #[command(subcommand)]
        command: ThrottleCommand,
    },
    /// Certificate management.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Tokens of the `postgres` identity source.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Login sessions at authd (Admin service): list a user's, end one.
    Sessions {
        #[command(flatten)]
        conn: revoke::AdminConn,
        #[command(subcommand)]
        action: SessionsCommand,
    },
    /// Sign in with your directory password (a session for the day) and print a short-lived
    /// token for the cluster: the client-go exec credential plugin the kubeconfig from
    /// `kube-authd kubeconfig` runs. Without a cluster, only logs in.
    Login(login::LoginArgs),
    /// End the session (its tokens are refused at once) and clear the local cache.
    Logout {
        #[command(flatten)]
        endpoint: login::Endpoint,
    },
    /// Print the user of the cached session.
    Whoami {
        #[command(flatten)]
        endpoint: login::Endpoint,
    },
    /// Print a kubeconfig for one cluster with no credential in it: it runs `kube-authd
    /// login` (interactiveMode IfAvailable); clusters of one login endpoint share its user.
    Kubeconfig {
        /// The cluster's API server, e.g. https://prod.example.com:6443
        #[arg(long)]
        server: String,
        /// The cluster's name, as authd serves it (the token is bound to it).
        #[arg(long)]
        cluster: String,
        /// The login endpoint (the edge), e.g. https://authn.example.com:8443
        #[arg(long)]
        login: String,
        /// PEM CA of the API server, also trusted for the login endpoint.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// The open sessions of a user (as authd maps names).
    List {
        /// The username, as authd maps it (what kube-apiserver sees).
        #[arg(long)]
        user: String,
    },
    /// End one session (by the id `list` shows): its tokens are refused on every replica.
    End {
        /// The session id (32 hex digits, from `sessions list`).
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Read a token from stdin and print its keyed id, as the audit log's `token_id` (and
    /// `kube-authd revoke`) name it: grep the audit log for it.
    Hash {
        /// The authd configuration whose `cache.hmac_key_file` keys the ids (during a key
        /// rotation, one more line per key of `cache.previous_hmac_key_files`).
        #[arg(long, required_unless_present = "hmac_key_file")]
        config: Option<PathBuf>,
        /// The key file itself, instead of --config.
        #[arg(long, conflicts_with = "config")]
        hmac_key_file: Option<PathBuf>,
    },
}

/// Where the `postgres` source's tokens live.
#[derive(clap::Args)]
struct TokenDb {
    /// e.g. postgres://authd@db.example:5432/authd
    #[arg(long, env = "AUTHD_DATABASE_URL")]
    database_url: String,
    /// File holding the database password (instead of putting it in the URL).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Allow a connection that may fall back to plaintext (sslmode disable, allow or prefer,
    /// the default) to a host other than this machine: the password and the new token's
    /// hash then cross the network without TLS. With `disable --authd`, also http:// to a
    /// remote authd (the admin secret then crosses without TLS).
    #[arg(long)]
    allow_plaintext: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token (applies the schema migrations first) and print it once on stdout.
    Create {
        #[command(flatten)]
        db: TokenDb,
        /// The source's `secret_key_file` (HMAC key for stored secrets).
        #[arg(long)]
        secret_key_file: PathBuf,
        /// The source's `prefix`.
        #[arg(long, default_value = "kad_")]
        prefix: String,
        /// The Kubernetes username the token authenticates as.
        #[arg(long)]
        user: String,
        /// The user's uid (empty by default).
        #[arg(long, default_value = "")]
        uid: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// `KEY=VALUE` for the user's extra (repeat).
        #[arg(long = "extra")]
        extra: Vec<String>,
        /// Lifetime, e.g. 24h; no expiry without it.
        #[arg(long, value_parser = authd::source::postgres::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Disable a token by its id (the 16 hex digits after the prefix). With --authd, also
    /// revokes it on every authd replica at once (cached verdicts included); without, a
    /// replica may serve a cached verdict of it for up to its cache TTL.
    Disable {
        #[command(flatten)]
        db: TokenDb,
        /// The token's id (the 16 hex digits after the prefix, as `token create` printed).
        #[arg(long)]
        id: String,
        /// authd's gRPC URL, to revoke the token id there too.
        #[arg(long, requires = "admin_token_file")]
        authd: Option<String>,
        /// File holding the admin secret (authd's admin.token_file).
        #[arg(long, requires = "authd")]
        admin_token_file: Option<PathBuf>,
        /// PEM CA that signed authd's certificate, for https://. Plaintext to a remote
        /// authd takes the same --allow-plaintext as the database.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Count live tokens (neither disabled nor expired) by the secret key that hashed them,
    /// for a key rotation: the previous key can go once no live token is hashed under it
    /// (authd re-hashes a token under the current key when it is used).
    Keys {
        #[command(flatten)]
        db: TokenDb,
        /// The source's `secret_key_file` (the current key).
        #[arg(long)]
        secret_key_file: PathBuf,
        /// The source's `previous_secret_key_files` (repeat).
        #[arg(long = "previous-secret-key-file")]
        previous_secret_key_files: Vec<PathBuf>,
        /// The source's `next_secret_key_files` (repeat).
        #[arg(long = "next-secret-key-file")]
        next_secret_key_files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RevokeCommand {
    /// Lift one revocation (by --id from `revoke list`, --user, --token-stdin or
    /// --credential-id), on every replica.
    Lift {
        #[command(flatten)]
        target: revoke::Target,
        /// A keyed id as `revoke` and `revoke list` print it.
        #[arg(long)]
        id: Option<String>,
    },
    /// List the revocations in force: kind, keyed id, end.
    List,
}

#[derive(Subcommand)]
enum ThrottleCommand {
    /// Show the budgets: failures allowed now, when the next is, when it is full again.
    Status {
        #[command(flatten)]
        conn: revoke::AdminConn,
        #[command(flatten)]
        subject: throttle::Subject,
        #[command(flatten)]
        filter: throttle::Filter,
    },
    /// Empty the budgets (in Redis and in the called replica's memory).
    Reset {
        #[command(flatten)]
        conn: revoke::AdminConn,
        #[command(flatten)]
        subject: throttle::Subject,
        #[command(flatten)]
        filter: throttle::Filter,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate an authd configuration (builds every source without contacting remote
    /// services) and run its [[examples]] through mapping and cluster policy; with --edge,
    /// validate an edge configuration instead.
    Check {
        /// The configuration (TOML): authd's, or the edge's with --edge.
        file: PathBuf,
        /// FILE is an edge.toml: check it exactly as `authd-edge serve` does at start-up
        /// (fields, [authd], every certificate, key and CA file); the ports are not bound.
        #[arg(long)]
        edge: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a CA and the certificates of a deployment into a folder: edge server,
    /// authd server, edge client (CN "edge"), one client per --client NAME (CN NAME), and
    /// per --cluster NAME a cluster CA (cluster-NAME-ca.crt, for the edge's
    /// clusters.NAME.client_ca) with the kube-apiserver client certificate it signs
    /// (apiserver-NAME.crt, CN "kube-apiserver:NAME"). Existing CAs are reused.
    Init {
        /// Folder the CA and certificates are written to (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Host names / IPs of the edge and authd (repeat).
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
        /// Clusters to issue kube-apiserver client certificates for (repeat).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        /// Internal gRPC clients to issue client certificates for (repeat).
        #[arg(long = "client")]
        clients: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    process::main("kube-authd", cli.log, run(cli.command)).await
}

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}

/// Names become file names: letters, digits, '-', '_' and '.' only.
fn check_name(flag: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        anyhow::bail!("{flag} {name:?}: use letters, digits, '-', '_' and '.' only");
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login(args) => login::login(args).await,
        Command::Sessions { conn, action } => {
            let action = match action {
                SessionsCommand::List { user } => revoke::SessionsAction::List { user },
                SessionsCommand::End { id } => revoke::SessionsAction::End { id },
            };
            revoke::sessions(conn, action).await
        }
        Command::Logout { endpoint } => login::logout(endpoint).await,
        Command::Whoami { endpoint } => login::whoami(endpoint),
        Command::Kubeconfig {
            server,
            cluster,
            login,
            ca,
        } => {
            print!(
                "{}",
                login::kubeconfig(&server, &cluster, &login, ca.as_deref())?
            );
            Ok(())
        }
        Command::Up {
            state_dir,
            listen,
            advertise,
            token_file,
            config,
            grpc_listen,
            admin_listen,
            login_listen,
            limits,
        } => {
            up::run(up::UpArgs {
                state_dir,
                listen,
                advertise,
                token_file,
                authd_config: config,
                grpc_listen,
                admin_listen,
                login_listen,
                limits,
            })
            .await
        }
        Command::Revoke {
            conn,
            target,
            until,
            action,
        } => {
            let action = match action {
                None => revoke::Action::Revoke { target, until },
                Some(RevokeCommand::Lift { target, id }) => revoke::Action::Lift { target, id },
                Some(RevokeCommand::List) => revoke::Action::List,
            };
            revoke::run(conn, action).await
        }
        Command::Throttle { command } => match command {
            ThrottleCommand::Status {
                conn,
                subject,
                filter,
            } => throttle::run(conn, subject, filter, throttle::Action::Status).await,
            ThrottleCommand::Reset {
                conn,
                subject,
                filter,
            } => throttle::run(conn, subject, filter, throttle::Action::Reset).await,
        },
        Command::WebhookConfig {
            server,
            ca,
            client_cert,
            client_key,
        } => {
            if !server.starts_with("https://") {
                anyhow::bail!("--server {server:?}: must be an https:// URL");
            }
            let ca_pem = read(&ca, "--ca")?;
            pki::check_certificates(ca_pem.as_bytes()).with_context(|| {
                format!("--ca {}: must be the PEM CA certificate", ca.display())
            })?;
            let cert = client_cert.map(|p| read(&p, "--client-cert")).transpose()?;
            let key = client_key.map(|p| read(&p, "--client-key")).transpose()?;
            if let (Some(c), Some(k)) = (&cert, &key) {
                pki::check_key_pair(c.as_bytes(), k.as_bytes())
                    .context("--client-cert/--client-key")?;
            }
            let ca = ca_pem;
            print!(
                "{}",
                kubeconfig::WebhookKubeconfig {
                    server: &server,
                    ca_pem: &ca,
                    client_cert_pem: cert.as_deref(),
                    client_key_pem: key.as_deref(),
                }
                .render()
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file, edge: true },
        } => edge_config_check(&file),
        Command::Config {
            command: ConfigCommand::Check { file, edge: false },
        } => config_check(&file),
        Command::Audit {
            command:
                AuditCommand::Hash {
                    config,
                    hmac_key_file,
                },
        } => audit_hash(config, hmac_key_file),
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    hosts,
                    clusters,
                    clients,
                },
        } => {
            // Every name first: a bad one must not leave some certificates rewritten.
            for c in &clients {
                check_name("--client", c)?;
            }
            for c in &clusters {
                check_name("--cluster", c)?;
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--dir {}: cannot create", dir.display()))?;
            let ca = pki::Ca::load_or_create(&dir)?;
            ca.issue_server("kube-authd edge", &hosts)?
                .write(&dir, "edge")?;
            ca.issue_server("kube-authd authd", &hosts)?
                .write(&dir, "authd")?;
            ca.issue_client("edge")?.write(&dir, "edge-client")?;
            for c in &clients {
                ca.issue_client(c)?.write(&dir, &format!("client-{c}"))?;
            }
            // One CA per cluster: the edge accepts a kube-apiserver certificate only on the
            // endpoint of the cluster whose CA issued it.
            for c in &clusters {
                let cluster_ca = pki::Ca::load_or_create_named(
                    &dir,
                    &format!("cluster-{c}-ca"),
                    &format!("kube-authd cluster {c} CA"),
                )?;
                cluster_ca
                    .issue_client(&format!("kube-apiserver:{c}"))?
                    .write(&dir, &format!("apiserver-{c}"))?;
            }
            println!("wrote certificates to {}", dir.display());
            Ok(())
        }
        Command::Token { command } => token(command).await,
    }
}

/// The same rule as the `postgres` source's `database_url`: TLS, this machine, or the
/// explicit `--allow-plaintext`. Checked before anything is read or sent.
fn check_token_db(db: &TokenDb) -> anyhow::Result<()> {
    authd::source::postgres::check_database_tls(
        "--database-url",
        &db.database_url,
        "--allow-plaintext",
        db.allow_plaintext,
    )?;
    Ok(())
}

fn token_pool(db: &TokenDb) -> anyhow::Result<authd::source::postgres::PgPoolHandle> {
    use authd::source::postgres;
    let timeout = std::time::Duration::from_secs(10);
    let options = postgres::connect_options(&db.database_url, db.password_file.as_deref(), timeout)
        .context("--database-url")?;
    Ok(postgres::pool(options, 1, timeout))
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    use authd::source::postgres;
    let (TokenCommand::Create { db, .. }
    | TokenCommand::Disable { db, .. }
    | TokenCommand::Keys { db, .. }) = &command;
    check_token_db(db)?;
    let target = postgres::describe(&db.database_url);
    let db_hint = || {
        format!(
            "PostgreSQL at {target} (--database-url): is it running, reachable from here, and \
             do the user and password (--password-file) match?"
        )
    };
    match command {
        TokenCommand::Create {
            db,
            secret_key_file,
            prefix,
            user,
            uid,
            groups,
            extra,
            ttl,
        } => {
            if user.is_empty() {
                anyhow::bail!("--user: must not be empty");
            }
            if ttl.is_some_and(|t| t.is_zero()) {
                anyhow::bail!("--ttl: must be more than zero (leave it out for no expiry)");
            }
            let mut extra_map = std::collections::BTreeMap::<String, Vec<String>>::new();
            for kv in &extra {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--extra {kv:?}: expected KEY=VALUE"))?;
                extra_map
                    .entry(k.to_owned())
                    .or_default()
                    .push(v.to_owned());
            }
            let key = postgres::read_key(&secret_key_file).context("--secret-key-file")?;
            let pool = token_pool(&db)?;
            postgres::migrate(&pool).await.with_context(db_hint)?;
            let new = postgres::NewToken {
                username: user,
                uid,
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                extra: extra_map,
                ttl,
            };
            let (id, token) = postgres::create_token(&pool, &key, &prefix, &new)
                .await
                .with_context(db_hint)?;
            eprintln!(
                "created token id {id} for user {:?}; it is shown only once",
                new.username
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::Disable {
            db,
            id,
            authd,
            admin_token_file,
            ca,
        } => {
            let pool = token_pool(&db)?;
            if !postgres::disable_token(&pool, &id)
                .await
                .with_context(db_hint)?
            {
                anyhow::bail!("--id {id:?}: no such token");
            }
            eprintln!("disabled token id {id}");
            match (authd, admin_token_file) {
                (Some(authd), Some(admin_token_file)) => {
                    let conn = revoke::AdminConn {
                        authd,
                        admin_token_file: Some(admin_token_file),
                        ca,
                        client_cert: None,
                        client_key: None,
                        allow_plaintext: db.allow_plaintext,
                    };
                    let mut admin = revoke::Admin::connect(&conn).await?;
                    let line = admin.revoke_credential(&id, 0).await.context(
                        "the token is disabled in the database, but revoking it in authd failed; \
                         run `kube-authd revoke --credential-id` again",
                    )?;
                    println!("{line}");
                }
                _ => eprintln!(
                    "not revoked in authd (no --authd): a replica may answer from a cached \
                     verdict until it expires"
                ),
            }
            Ok(())
        }
        TokenCommand::Keys {
            db,
            secret_key_file,
            previous_secret_key_files,
            next_secret_key_files,
        } => {
            let keys = postgres::SecretKeys::read(
                &secret_key_file,
                &previous_secret_key_files,
                &next_secret_key_files,
            )?;
            let pool = token_pool(&db)?;
            postgres::migrate(&pool).await.with_context(db_hint)?;
            let counts = postgres::count_by_key(&pool).await.with_context(db_hint)?;
            let ring = keys.ids();
            let count = |id: &str| {
                counts
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(id))
                    .map_or(0, |(_, n)| *n)
            };
            // One line per key: `<key id> <current|previous|next|not-in-ring> <live tokens>`.
            for (id, role) in &ring {
                println!("{id} {} {}", role.label(), count(id));
            }
            for (id, n) in &counts {
                match id {
                    Some(id) if ring.iter().any(|(k, _)| k == id) => {}
                    Some(id) => println!("{id} not-in-ring {n}"),
                    None => println!("unrecorded unrecorded {n}"),
                }
            }
            Ok(())
        }
    }
}

/// `audit hash`: the keyed id of the token on stdin.
fn audit_hash(config: Option<PathBuf>, hmac_key_file: Option<PathBuf>) -> anyhow::Result<()> {
    let ring = match (config, hmac_key_file) {
        (_, Some(k)) => authd::fingerprint::Fingerprinter::new(&authd::server::read_hmac_key(
            "--hmac-key-file",
            &k,
        )?),
        (Some(c), None) => {
            let cache = authd::config::Config::load(&c)?.cache;
            if cache.hmac_key_file.is_none() {
                anyhow::bail!(
                    "{}: no cache.hmac_key_file (authd then keys ids with a random key that \
                     no one can reproduce)",
                    c.display()
                );
            }
            authd::server::cache_fingerprinter(&cache)?
        }
        (None, None) => anyhow::bail!("give --config or --hmac-key-file"),
    };
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .context("reading the token from stdin")?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        anyhow::bail!("no token on stdin");
    }
    // The current key's id first; during a key rotation, one more line per previous key
    // (lines written before the rotation carry those): `grep -F -f` takes them all.
    for f in ring.ring() {
        println!("{}", f.token_id(token).to_hex());
    }
    Ok(())
}

/// `config check --edge`: the edge's own start-up loading, so it cannot call valid a file
/// `authd-edge serve` refuses.
fn edge_config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = authd_edge::load_for_serve(file)?;
    let authd = config.authd.as_ref().context("[authd]")?;
    println!(
        "{}: valid edge configuration (default cluster {:?}, {} more clusters, authd {})",
        file.display(),
        config.default_cluster,
        config.clusters.len(),
        authd.replicas
    );
    Ok(())
}

/// `config check`: exits non-zero (an error) on an invalid file or any failing example.
fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = authd::config::Config::load(file)?;
    authd::server::preflight(&config).with_context(|| format!("config file {}", file.display()))?;
    println!(
        "{}: valid ({} sources, {} clusters)",
        file.display(),
        config.sources.len(),
        config.clusters.len()
    );
    let results = authd::check::run(&config.examples, &config.sources, &config.clusters);
    let mut failed = Vec::new();
    for r in &results {
        match &r.outcome {
            Ok(what) => println!("ok   {}: {what}", r.label),
            Err(why) => {
                println!("FAIL {}: {why}", r.label);
                failed.push(r.label.clone());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} examples failed: {}",
            failed.len(),
            results.len(),
            failed.join("; ")
        );
    }
    println!("{} examples passed", results.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks over every subcommand (two flags of one name in
    /// `token disable` passed the build and panicked only when the command was used).
    #[test]
    fn command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Every option and subcommand of every subcommand says what it is for in --help.
    #[test]
    fn every_option_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "kube-authd",
            &mut missing,
        );
        assert!(missing.is_empty(), "no --help text: {missing:#?}");
    }

    fn db(url: &str, allow_plaintext: bool) -> TokenDb {
        TokenDb {
            database_url: url.into(),
            password_file: None,
            allow_plaintext,
        }
    }

    /// `token create/disable` send the database password and write tokens: plaintext to a
    /// remote database needs `--allow-plaintext`, as the source's `allow_plaintext`.
    #[test]
    fn token_database_plaintext_needs_the_flag() {
        for remote in [
            "postgres://authd@db.example:5432/authd",
            "postgres://authd@10.0.0.5/authd?sslmode=prefer",
            "postgres://authd@db.example/authd?sslmode=disable",
        ] {
            let e = check_token_db(&db(remote, false)).unwrap_err().to_string();
            assert!(e.starts_with("--database-url"), "{remote}: {e}");
            assert!(e.contains("pass --allow-plaintext"), "{remote}: {e}");
            assert!(check_token_db(&db(remote, true)).is_ok(), "{remote}");
        }
        for ok in [
            "postgres://authd@127.0.0.1:5432/authd",
            "postgres://authd@localhost/authd",
            "postgres://authd@db.example/authd?sslmode=verify-full",
            "postgres://authd@db.example/authd?sslmode=require",
            "postgres://authd@%2Frun%2Fpostgresql/authd",
        ] {
            assert!(check_token_db(&db(ok, false)).is_ok(), "{ok}");
        }
    }
}
