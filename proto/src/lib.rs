//! `authd-proto`: the only API boundary between kube-authd processes.
//!
//! Holds the `.proto` files and the tonic/prost code generated from them, nothing else, so
//! an internal gRPC client can depend on this crate alone.

/// Version 1 of the kube-authd API (`kubeauthd.v1`).
pub mod v1 {
    tonic::include_proto!("kubeauthd.v1");

    /// Encoded `FileDescriptorSet` for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kubeauthd_descriptor.bin"));
}
