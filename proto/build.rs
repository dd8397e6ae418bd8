//! Compiles `proto/pitcrew/v1/pitcrew.proto` with protox (pure Rust, no system `protoc`): the
//! messages always, the gRPC clients and servers only with the `grpc` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["pitcrew/v1/pitcrew.proto"], ["proto"])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(false)
        // Small per-call buffers: the coordinator holds one agent session call per host.
        .codec_path("crate::codec::SmallBufferCodec")
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
