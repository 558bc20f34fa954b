//! The names in a peer's certificate: one parser for the subject common name and the
//! identity a caller is known by. The edge binds kube-apiserver certificates to clusters by
//! common name; authd names its gRPC callers by identity (the common name, else the first
//! DNS subject alternative name).

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The first subject common name that is a string; `None` if there is none or the
/// certificate does not parse.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    cn(&parsed).map(str::to_owned)
}

/// The name a client is known by: its subject common name, else its first DNS subject
/// alternative name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = cn(&parsed) {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

fn cn<'a>(parsed: &'a X509Certificate<'_>) -> Option<&'a str> {
    parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    /// The edge's case: a kube-apiserver certificate is bound to its cluster by its CN, and
    /// a certificate without a CN has none (its SAN does not stand in for it).
    #[test]
    fn common_name_for_cluster_binding() {
        let c = cert(Some("kube-apiserver:prod"), &["apiserver.prod"]);
        assert_eq!(common_name(&c).as_deref(), Some("kube-apiserver:prod"));
        let no_cn = cert(None, &["apiserver.prod"]);
        assert_eq!(common_name(&no_cn), None);
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    /// authd's case: a caller is named by its CN, else its first DNS SAN.
    #[test]
    fn identity_for_grpc_callers() {
        let c = cert(Some("edge"), &["edge.internal"]);
        assert_eq!(identity(&c).as_deref(), Some("edge"));
        let no_cn = cert(None, &["ops.internal", "ops2.internal"]);
        assert_eq!(identity(&no_cn).as_deref(), Some("ops.internal"));
        let nameless = cert(None, &["10.0.0.1"]);
        assert_eq!(identity(&nameless), None);
        assert_eq!(identity(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
