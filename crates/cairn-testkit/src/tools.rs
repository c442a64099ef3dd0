//! External tools: whether one is installed, and running commands that must succeed.

use std::path::Path;
use std::process::Command;

/// Whether `tool` is an executable file in a folder of `PATH` or in one of `extra` folders.
pub fn installed(tool: &str, extra: &[&str]) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || extra.iter().any(|d| Path::new(d).join(tool).is_file())
}

/// Runs `cmd`, asserts it succeeded, returns its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
