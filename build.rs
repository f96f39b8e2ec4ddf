// Records the git commit and the target triple for `lbd version`.
use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LBD_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=LBD_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    // The commit changes with HEAD (detached) or with the branch it names.
    // Paths from git: in a worktree .git is a file and both live elsewhere,
    // and a path that does not exist makes cargo rerun this script, and
    // rebuild lbd, on every build.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]).unwrap_or_else(|| "refs/heads".into());
    for path in ["HEAD", branch.as_str()] {
        let at = git(&["rev-parse", "--git-path", path]).unwrap_or_else(|| format!(".git/{path}"));
        println!("cargo:rerun-if-changed={at}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}
