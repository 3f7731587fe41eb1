//! Records the git revision the binaries are built from, for `--version`.
//!
//! `OUTPOST_GIT_REVISION` in the environment wins (builds from a source archive); otherwise git
//! is asked, and without git the revision is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo::rerun-if-env-changed=OUTPOST_GIT_REVISION");
    let revision = std::env::var("OUTPOST_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself (a branch switch), the branch it names (a
            // commit) and packed-refs (a gc).
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
                    println!("cargo::rerun-if-changed={p}");
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(p) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
            {
                println!("cargo::rerun-if-changed={p}");
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=OUTPOST_GIT_REVISION={revision}");
}
