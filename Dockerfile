# densenet serve in a container: built in a Rust image, run from a distroless one that holds
# the binary and the C runtime it links, as a non-root user. The weights are not in the image:
# mount them (the Kubernetes manifests in deploy/ mount a volume at /models).
#
#   docker build -t densenet:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/weights:/models:ro" densenet:0.1.0
FROM rust:1.89-bookworm AS build
WORKDIR /src
# libjpeg-turbo is built from source (CMake; NASM for its SIMD) and linked statically.
RUN apt-get update -qq && apt-get install -y -qq cmake nasm && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin densenet

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/densenet /usr/local/bin/densenet
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/densenet", "serve", "--addr", "0.0.0.0:8080"]
CMD ["--weights", "/models/model.safetensors"]
