//! Stamps the build with its git sha (`LAZYREC_GIT_SHA` from the environment wins, e.g. in CI),
//! which becomes part of the served model version.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LAZYREC_GIT_SHA");
    let sha = std::env::var("LAZYREC_GIT_SHA").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    });
    if let Ok(out) = Command::new("git").args(["rev-parse", "--git-dir"]).output() {
        let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !git_dir.is_empty() {
            println!("cargo:rerun-if-changed={git_dir}/HEAD");
            println!("cargo:rerun-if-changed={git_dir}/refs/heads");
        }
    }
    println!("cargo:rustc-env=LAZYREC_GIT_SHA={sha}");
}
