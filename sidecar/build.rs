//! Link-time settings for the static (musl) image binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // A static-pie binary relocates itself at start: packed relative relocations (DT_RELR, musl
    // 1.2.4+) are ~8 KiB instead of ~650 KiB of RELA entries read into memory on every start.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        println!("cargo:rustc-link-arg-bin=ai-sidecar=-Wl,-z,pack-relative-relocs");
    }
}
