//! The kubeconfig kube-apiserver's `--authentication-token-webhook-config-file` takes: one
//! cluster (the edge URL and its CA), one user (optional client certificate for mTLS), and
//! a current context selecting them.

use base64::Engine;

pub struct WebhookKubeconfig<'a> {
    /// Full URL of the TokenReview endpoint, e.g. `https://host:8443/authenticate`.
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub client_cert_pem: Option<&'a str>,
    pub client_key_pem: Option<&'a str>,
}

impl WebhookKubeconfig<'_> {
    pub fn render(&self) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let user = match (self.client_cert_pem, self.client_key_pem) {
            (Some(c), Some(k)) => format!(
                "    user:\n      client-certificate-data: {}\n      client-key-data: {}\n",
                b64(c),
                b64(k)
            ),
            _ => "    user: {}\n".to_string(),
        };
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             \x20 - name: kube-authd\n\
             \x20   cluster:\n\
             \x20     server: {server}\n\
             \x20     certificate-authority-data: {ca}\n\
             users:\n\
             \x20 - name: kube-apiserver\n\
             {user}\
             contexts:\n\
             \x20 - name: webhook\n\
             \x20   context:\n\
             \x20     cluster: kube-authd\n\
             \x20     user: kube-apiserver\n\
             current-context: webhook\n",
            server = self.server,
            ca = b64(self.ca_pem),
            user = user,
        )
    }
}
