//! Compiles the .proto files with protox (pure Rust), so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kubeauthd");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(["kubeauthd/v1/authd.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kubeauthd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // BTreeMap for map fields (`User.extra`): a verdict carries one or two entries, for which
    // a sorted vector-backed map decodes without hashing, and serialises in a stable order.
    // The messages carrying a raw token, password or session get a hand-written Debug (src/lib.rs) that redacts it.
    tonic_prost_build::configure()
        .btree_map(".")
        .skip_debug([
            "kubeauthd.v1.AuthenticateRequest",
            "kubeauthd.v1.RevokeTokenRequest",
            "kubeauthd.v1.UnrevokeRequest",
            "kubeauthd.v1.LoginRequest",
            "kubeauthd.v1.LoginResponse",
            "kubeauthd.v1.TokenRequest",
            "kubeauthd.v1.TokenResponse",
            "kubeauthd.v1.LogoutRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
