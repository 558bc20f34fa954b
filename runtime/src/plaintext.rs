//! The one rule for transports without TLS, shared by authd's sources and caches, the
//! edge's connection to authd and the CLI: plaintext is accepted to this machine (loopback;
//! unix sockets are the caller's business) or with an explicit opt-out, and the refusal
//! names the field and the opt-out.

use crate::config::FieldError;

/// Whether `host` (a URL host: a name, an IPv4 address or a bracketed IPv6 address) is
/// this machine: `localhost`, 127.0.0.0/8 or ::1 (also IPv4-mapped). Names other than
/// `localhost` are remote: what they resolve to is not known at load.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_prefix('[').unwrap_or(host);
    let host = host.strip_suffix(']').unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A plaintext connection to `host` (an on-path attacker reads and rewrites it) is refused
/// at load unless `host` is loopback or the opt-out `allowed` is set; the error names
/// `field` and the opt-out `opt_out`: a setting (`allow_plaintext`, written `= true`) or a
/// command-line flag (`--allow-plaintext`).
pub fn check_plaintext(
    field: &str,
    host: &str,
    why: &str,
    opt_out: &str,
    allowed: bool,
) -> Result<(), FieldError> {
    if allowed || is_loopback_host(host) {
        return Ok(());
    }
    let opt_out = if opt_out.starts_with("--") {
        format!("pass {opt_out}")
    } else {
        format!("set {opt_out} = true")
    };
    Err(FieldError::new(
        field,
        format!(
            "{why} to the remote host {host:?}: use TLS, or {opt_out} to accept plaintext \
             (an on-path attacker can read and change the traffic)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for local in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(local), "{local}");
        }
        for remote in [
            "idp.example.com",
            "localhost.example.com",
            "10.0.0.1",
            "[fe80::1]",
            "0.0.0.0",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(remote), "{remote}");
        }
        let e = check_plaintext("url", "idp", "http://", "allow_plaintext", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("url") && e.contains("allow_plaintext = true"),
            "{e}"
        );
        assert!(check_plaintext("url", "idp", "http://", "allow_plaintext", true).is_ok());
        let e = check_plaintext("--url", "idp", "http://", "--allow-plaintext", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass --allow-plaintext to accept"), "{e}");
        assert!(check_plaintext("url", "127.0.0.1", "http://", "allow_plaintext", false).is_ok());
    }
}
