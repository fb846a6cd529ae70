//! Compiles the vendored CRI `api.proto` (see `vendor/cri-api/README.md`).
//!
//! `protoc` comes from Debian's `protobuf-compiler` package, which the test
//! bed (`e2e/testbed/testbed.sh up`) and the README set-up install; set
//! `PROTOC` to use another one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "vendor/cri-api/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        return Err("protoc not found: install Debian's `protobuf-compiler` \
                    (`apt-get install protobuf-compiler`) or set PROTOC"
            .into());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["vendor/cri-api"])?;
    Ok(())
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(bin)).find(|candidate| candidate.is_file())
}
