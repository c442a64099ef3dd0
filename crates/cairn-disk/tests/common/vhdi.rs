//! libvhdi's `vhdimount`: the reference reader of VHD and VHDX files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require, run};

/// Mounts an image with `vhdimount` while the guard lives. For a differencing chain vhdimount
/// shows one disk per layer, `vhdi1` being the base and the highest number the file given.
pub struct VhdiMount {
    dir: tempfile::TempDir,
}

impl VhdiMount {
    /// Mounts `img` in a new temporary folder.
    pub fn new(img: &Path) -> VhdiMount {
        require("vhdimount");
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("vhdimount").arg(img).arg(dir.path()));
        VhdiMount { dir }
    }

    /// The disk of the file given (the top of its chain).
    pub fn top(&self) -> PathBuf {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| n.trim_start_matches("vhdi").parse::<u32>().unwrap_or(0));
        self.dir.path().join(names.last().expect("vhdimount shows no disk"))
    }
}

impl Drop for VhdiMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(self.dir.path()).status();
    }
}
