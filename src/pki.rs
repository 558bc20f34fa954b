//! Certificates for kube-authd deployments, generated with rcgen: a CA and the leaf
//! certificates it signs (edge server, kube-apiserver client, authd server, edge client).

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A PEM certificate and its PEM private key.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `NAME.crt` and `NAME.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, &self.cert).with_context(|| format!("writing {}", crt.display()))?;
        write_private(&key, self.key.as_bytes())
    }
}

/// Checks that `pem` holds certificates only (one or more, each parseable) and no private
/// key: a CA bundle that is about to be copied somewhere (a kubeconfig) or trusted.
pub fn check_certificates(pem: &[u8]) -> anyhow::Result<()> {
    let mut certs = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| anyhow::anyhow!("not PEM: {e}"))?;
        if block.label.contains("PRIVATE KEY") {
            anyhow::bail!("holds a private key ({}), not a certificate", block.label);
        }
        if block.label != "CERTIFICATE" {
            anyhow::bail!("holds a {} block, not a certificate", block.label);
        }
        block
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("a certificate that does not parse: {e}"))?;
        certs += 1;
    }
    if certs == 0 {
        anyhow::bail!("no PEM certificate in it");
    }
    Ok(())
}

/// Checks that `key_pem` is the private key of the (first) certificate in `cert_pem`.
pub fn check_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<()> {
    use rcgen::PublicKeyData;
    check_certificates(cert_pem).context("the certificate file")?;
    let block = x509_parser::pem::Pem::iter_from_buffer(cert_pem)
        .next()
        .context("no certificate")?
        .map_err(|e| anyhow::anyhow!("not PEM: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
    let key_text = std::str::from_utf8(key_pem).context("the key file is not PEM text")?;
    let key = KeyPair::from_pem(key_text).context("the key file holds no usable private key")?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        anyhow::bail!("the private key does not belong to the certificate");
    }
    Ok(())
}

/// Writes a secret file readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` only applies to a new file; one written by an older version may be wider.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kube-authd");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl Ca {
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let key = KeyPair::generate().context("generating CA key")?;
        let cert = params.self_signed(&key).context("self-signing CA")?;
        Self::from_pem(cert.pem(), key.serialize_pem())
    }

    pub fn from_pem(cert: String, key: String) -> anyhow::Result<Self> {
        let kp = KeyPair::from_pem(&key).context("CA key is not a valid PEM private key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert, kp).context("CA certificate is not valid PEM")?;
        Ok(Self {
            pem: Pem { cert, key },
            issuer,
        })
    }

    /// Loads `DIR/ca.crt` + `DIR/ca.key`, or creates and writes them.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        Self::load_or_create_named(dir, "ca", "kube-authd CA")
    }

    /// Loads `DIR/NAME.crt` + `DIR/NAME.key`, or creates a CA called `common_name` there.
    pub fn load_or_create_named(dir: &Path, name: &str, common_name: &str) -> anyhow::Result<Self> {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if crt.exists() && key.exists() {
            let cert = std::fs::read_to_string(&crt)
                .with_context(|| format!("reading {}", crt.display()))?;
            let k = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            return Self::from_pem(cert, k)
                .with_context(|| format!("loading CA from {}", dir.display()));
        }
        let ca = Self::generate(common_name)?;
        ca.pem.write(dir, name)?;
        Ok(ca)
    }

    /// A server certificate for these host names and IP addresses.
    pub fn issue_server(&self, common_name: &str, hosts: &[String]) -> anyhow::Result<Pem> {
        self.issue(common_name, hosts, ExtendedKeyUsagePurpose::ServerAuth, 365)
    }

    /// A client certificate whose CN is the client's identity.
    pub fn issue_client(&self, common_name: &str) -> anyhow::Result<Pem> {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth, 365)
    }

    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .with_context(|| format!("{h:?} is not a valid host name")),
            })
            .collect::<anyhow::Result<_>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        validity(&mut params, days);
        let key = KeyPair::generate().context("generating key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing certificate for {common_name}"))?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
