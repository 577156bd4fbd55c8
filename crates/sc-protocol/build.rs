//! Declares the `fuzzing` cfg that cargo-fuzz sets, under which the crate exposes its reference
//! decoder to the fuzz target.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    println!("cargo::rerun-if-changed=build.rs");
}
