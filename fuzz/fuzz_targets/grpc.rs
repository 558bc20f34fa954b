//! The gRPC request path: an `AuthenticateRequest` decoded with prost from arbitrary bytes
//! and answered by an in-process authd (verdict cache, token-file and JWT sources, cluster
//! policy). Any request gets an answer; an authenticated one names a user; an error never
//! carries the token.
#![no_main]

use std::sync::OnceLock;

use authd::Authd;
use authd_proto::v1::AuthenticateRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const TOKENS: &str = include_str!("../corpus/token_file/tokens.csv");
const PUBLIC_PEM: &str = include_str!("../keys/rs256.pub.pem");

fn setup() -> &'static (tokio::runtime::Runtime, Authd) {
    static ONCE: OnceLock<(tokio::runtime::Runtime, Authd)> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kube-authd-fuzz-grpc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("tokens.csv"), TOKENS).expect("write tokens");
        std::fs::write(dir.join("rs256.pub.pem"), PUBLIC_PEM).expect("write key");
        let text = "listen = \"127.0.0.1:0\"\n\
            [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
            [[sources]]\nname = \"idp\"\ntype = \"jwt\"\nissuer = \"https://issuer.test\"\n\
            audiences = [\"k8s\"]\nalgorithms = [\"RS256\"]\nkeys = [\"rs256.pub.pem\"]\n\
            groups_claim = \"groups\"\n\
            [clusters.prod]\nallow_users = [\"alice\"]\n";
        let config = authd::config::Config::parse(text, &dir).expect("fuzz authd configuration");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let authd = rt
            .block_on(async { authd::server::build(&config) })
            .expect("authd");
        (rt, authd)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = AuthenticateRequest::decode(data) else {
        return;
    };
    let (rt, authd) = setup();
    let token = req.token.clone();
    let resp = rt.block_on(authd.authenticate(req));
    if resp.authenticated {
        assert!(
            resp.user.as_ref().is_some_and(|u| !u.username.is_empty()),
            "authenticated without a user name"
        );
        assert!(resp.error.is_empty());
    }
    if token.len() >= 8 {
        assert!(!resp.error.contains(&token), "error echoes the token");
    }
});
