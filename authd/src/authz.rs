//! Who is calling: the identity of a gRPC client, taken from its TLS client certificate and
//! carried on every request as a tonic request extension.

/// The caller's certificate identity (CN, or the first DNS SAN without a CN). Absent on
/// plaintext listeners, where callers count as [`ANONYMOUS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// The name used for callers without a client certificate.
pub const ANONYMOUS: &str = "anonymous";

impl ClientIdentity {
    /// The identity the TLS layer attached to `request`, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ClientIdentity> {
        request.extensions().get::<ClientIdentity>()
    }

    /// The caller's name for logs and metrics: its identity or "anonymous".
    pub fn name_of<T>(request: &tonic::Request<T>) -> &str {
        Self::of(request).map_or(ANONYMOUS, |c| c.0.as_str())
    }
}
