//! Stamps the source commit into the binary for `gateway_build_info{commit}`:
//! `GATEWAY_BUILD_COMMIT` when the build sets it (an image build without `.git`), else what
//! `git rev-parse` says, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_BUILD_COMMIT");
    // Any source change reruns this, so a new commit is picked up by the next build.
    println!("cargo:rerun-if-changed=src");
    let commit = std::env::var("GATEWAY_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=GATEWAY_COMMIT={}", commit.trim());
}
