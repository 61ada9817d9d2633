//! Generates the Rust types of `proto/maicivy_analytics.proto` (see `src/proto.rs`).
//! `protox` compiles the file in pure Rust: no `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = dir.join("maicivy_analytics.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
