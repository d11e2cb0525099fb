//! Link-time settings for the static (musl) image binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=AI_SIDECAR_KEEP_SYMBOLS");
    println!("cargo:rerun-if-env-changed=AI_SIDECAR_BENCH_WITHOUT");
    // `make bench-sidecar-tuning` builds the sidecar without each tuning below, one at a time, to
    // measure what it saves; never set for an image.
    let without = std::env::var("AI_SIDECAR_BENCH_WITHOUT").unwrap_or_default();
    let without = |tuning: &str| without.split(',').any(|t| t.trim() == tuning);
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("musl") {
        return;
    }
    // A static-pie binary relocates itself at start: packed relative relocations (DT_RELR, musl
    // 1.2.4+) are a small fraction of the RELA entries otherwise read into memory on every start.
    println!("cargo:rustc-link-arg-bin=ai-sidecar=-Wl,-z,pack-relative-relocs");
    // Stripped here, not by the profile (see its `strip`); `make sidecar-symbol-order` keeps them.
    if std::env::var_os("AI_SIDECAR_KEEP_SYMBOLS").is_none() {
        println!("cargo:rustc-link-arg-bin=ai-sidecar=-Wl,--strip-all");
    }
    // The kernel maps code 64 KiB or more around each page run: the functions a sidecar runs,
    // spread over all its code by default, would keep most of it resident; rust-lld lays them out
    // together.
    if without("symbol-order") {
        return;
    }
    match (rust_lld_dir(), symbol_order()) {
        (Some(dir), Some(order)) => {
            println!("cargo:rustc-link-arg-bin=ai-sidecar=-B{}", dir.display());
            println!("cargo:rustc-link-arg-bin=ai-sidecar=-fuse-ld=lld");
            println!(
                "cargo:rustc-link-arg-bin=ai-sidecar=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bin=ai-sidecar=-Wl,--no-warn-symbol-ordering");
            // Names that no longer resolve are skipped silently: the link map beside the binary
            // (mangled names) lets `e2e/bench/symbol_order.py check` count them.
            if let Some(map) = link_map() {
                println!("cargo:rustc-link-arg-bin=ai-sidecar=-Wl,--no-demangle");
                println!(
                    "cargo:rustc-link-arg-bin=ai-sidecar=-Wl,-Map={}",
                    map.display()
                );
            }
        }
        (None, _) => {
            println!("cargo:warning=rust-lld not found: ai-sidecar links in default order");
        }
        (_, None) => {
            println!(
                "cargo:warning=no sidecar/symbol-order.txt: ai-sidecar links in default order"
            );
        }
    }
}

/// A copy of symbol-order.txt named by its content: cargo relinks when a link argument changes,
/// not when a file one names does.
fn symbol_order() -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    // The directory at run time, not `env!` at compile time: cargo reuses a compiled build
    // script across checkouts of the same source (a CI clone's binary named the clone's file).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let order = std::fs::read(Path::new(&manifest_dir).join("symbol-order.txt")).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    order.hash(&mut hasher);
    let copy = Path::new(&std::env::var_os("OUT_DIR")?)
        .join(format!("symbol-order-{:016x}.txt", hasher.finish()));
    std::fs::write(&copy, order).ok()?;
    Some(copy)
}

/// `<target>/<triple>/<profile>/ai-sidecar.map`: beside the binary, where a script finds it (a
/// build script's own directory, `<profile>/build/ai-sidecar-<hash>/out`, has a hash in its name).
fn link_map() -> Option<PathBuf> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR")?);
    Some(out_dir.ancestors().nth(3)?.join("ai-sidecar.map"))
}

/// The toolchain's `ld.lld` for `cc -fuse-ld=lld` (the way rustc links with its own rust-lld).
fn rust_lld_dir() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").ok()?;
    let host = std::env::var("HOST").ok()?;
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}
