//! Compiles `proto/medrelay/v1/*.proto` with protox (no system `protoc`) and prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/medrelay/v1/relay.proto",
        "proto/medrelay/v1/e2e.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
