//! Generates the gRPC code of the example and tests, only with the internal `grpc-example`
//! feature: users of the library never build protoc or run code generation.

fn main() {
    #[cfg(feature = "grpc-example")]
    {
        println!("cargo:rerun-if-changed=examples/proto/users.proto");
        // The vendored protoc, unless the environment names one.
        if std::env::var_os("PROTOC").is_none() {
            let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
            std::env::set_var("PROTOC", protoc);
        }
        tonic_prost_build::compile_protos("examples/proto/users.proto")
            .expect("generate the gRPC code of examples/proto/users.proto");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
