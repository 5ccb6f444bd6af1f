//! With the `serve` feature: the gRPC service's code, generated from proto/grpc_inference.proto
//! by protox (a protobuf compiler in Rust, so that no `protoc` need be installed): the server
//! and the messages for the library, and a client of its own for the tests and benchmarks.

fn main() {
    #[cfg(feature = "serve")]
    grpc::generate();
}

#[cfg(feature = "serve")]
mod grpc {
    use std::path::PathBuf;

    const PROTO: &str = "proto/grpc_inference.proto";

    pub fn generate() {
        println!("cargo:rerun-if-changed={PROTO}");
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let descriptors =
            protox::compile([PROTO], ["proto"]).unwrap_or_else(|e| panic!("{PROTO}: {e}"));
        for (dir, server) in [("grpc_server", true), ("grpc_client", false)] {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
            tonic_prost_build::configure()
                .build_server(server)
                .build_client(!server)
                .out_dir(&dir)
                .compile_fds(descriptors.clone())
                .unwrap_or_else(|e| panic!("generating the gRPC code of {PROTO}: {e}"));
        }
    }
}
