//! Compiles `recommender/v1/recommender.proto` with the vendored protoc (no system protoc needed)
//! and writes the file descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("recommender_v1_descriptor.bin"))
        .compile_with_config(config, &["recommender/v1/recommender.proto"], &["."])?;
    println!("cargo:rerun-if-changed=recommender/v1/recommender.proto");
    Ok(())
}
