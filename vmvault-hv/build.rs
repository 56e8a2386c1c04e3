//! Builds the vault guest image (the `vault-guest` bin of `vault-vm`) for the host
//! target with a linker script, flattens it with `objcopy -O binary` and hands the
//! path to the crate as `VAULT_GUEST_IMAGE` (embedded with `include_bytes!`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Features of the guest image: this crate's `test-api` builds a test image (it honours
/// the test-only boot flags of `vault_vm::abi`); normal builds never do.
fn guest_features() -> &'static str {
    if env::var_os("CARGO_FEATURE_TEST_API").is_some() {
        "guest,test-api"
    } else {
        "guest"
    }
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let vault_vm = root.join("vault-vm");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("guest-target");
    let linker_script = vault_vm.join("guest").join("link.ld");
    for p in ["src", "guest", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", vault_vm.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=OBJCOPY");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let flags = [
        "-C".to_string(),
        "relocation-model=static".into(),
        "-C".into(),
        "link-arg=-nostdlib".into(),
        "-C".into(),
        "link-arg=-static".into(),
        "-C".into(),
        "link-arg=-no-pie".into(),
        "-C".into(),
        format!("link-arg=-Wl,-T,{}", linker_script.display()),
        "-C".into(),
        "link-arg=-Wl,--build-id=none".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new(cargo);
    // The outer build's flags, wrappers and target dir must not leak into the guest
    // build (clippy-driver, coverage flags, another target dir...).
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .args([
            "-p",
            "vault-vm",
            "--bin",
            "vault-guest",
            "--features",
            guest_features(),
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--config", "profile.release.panic=\"abort\""])
        .args(["--config", "profile.release.lto=true"])
        .args(["--config", "profile.release.codegen-units=1"])
        .args(["--config", "profile.release.debug=0"])
        .args(["--config", "profile.release.opt-level=3"])
        .args(["--config", "profile.release.overflow-checks=false"])
        .args(["--config", "profile.release.debug-assertions=false"]);
    let status = cmd
        .status()
        .expect("running cargo to build the vault guest");
    assert!(status.success(), "building the vault guest image failed");

    let elf = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("vault-guest");
    let bin = out.join("vault-guest.bin");
    let objcopy = env::var_os("OBJCOPY").unwrap_or_else(|| "objcopy".into());
    let status = Command::new(&objcopy)
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("running {objcopy:?} (binutils) failed: {e}"));
    assert!(
        status.success(),
        "objcopy -O binary of the vault guest failed"
    );
    println!("cargo:rustc-env=VAULT_GUEST_IMAGE={}", bin.display());
}
