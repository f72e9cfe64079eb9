//! Compiles kvpick's own protos (`proto/kvpick/v1`) with the pure-Rust `protox`: no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: cargo reuses a compiled build
    // script for the same package at another path (a second checkout sharing CARGO_TARGET_DIR),
    // which then compiled the other checkout's protos.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let file = root.join("kvpick/v1/index.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
