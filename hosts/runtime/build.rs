//! Builds the core component from source for `wasm32-wasip2` and embeds it, so every host
//! binary carries a default component and tests always run the component of this checkout.
//!
//! The nested cargo gets its own target directory (as wasmtime does for its test guests) and a
//! clean environment: flags and wrappers meant for the host build (clippy's, coverage's) must
//! not leak into the guest build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for watched in [
        "core-wasm",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
        "rust-toolchain.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=TRIPFLOW_COMPONENT_TARGET_DIR");

    // <target>/<profile>/build/<crate>-<hash>/out → share <target>/component-build between
    // profiles so dev and release builds compile the guest once.
    let target_dir = env::var_os("TRIPFLOW_COMPONENT_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            out_dir
                .ancestors()
                .nth(4)
                .unwrap_or(&out_dir)
                .join("component-build")
        });

    ensure_wasm_target();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--package",
            "tripflow-component",
            "--target",
            "wasm32-wasip2",
        ])
        .args(["--profile", "component", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the component");
    assert!(
        status.success(),
        "building tripflow-component for wasm32-wasip2 failed; is the target installed? \
         (`rustup target add wasm32-wasip2`; rust-toolchain.toml lists it)"
    );
    let built = target_dir.join("wasm32-wasip2/component/tripflow_component.wasm");
    copy(&built, &out_dir.join("tripflow_component.wasm"));
}

/// rust-toolchain.toml lists wasm32-wasip2, but rustup installs listed targets only when it
/// installs the toolchain itself; on a machine that already had the toolchain, add the target
/// here so that `cargo build` works on a fresh clone.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib/wasm32-wasip2").is_dir()) {
        return;
    }
    println!(
        "cargo:warning=installing the wasm32-wasip2 target with rustup (needed to build the core component)"
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        cmd.arg("--toolchain").arg(toolchain);
    }
    match cmd.status() {
        Ok(status) if status.success() => {}
        _ => println!(
            "cargo:warning=`rustup target add wasm32-wasip2` failed; install the target by hand"
        ),
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}
