//! The agent's identity in its data folder: the folder made private, the key, certificate, CA
//! and enrolment loaded (a half identity refused), an interrupted renewal finished, private
//! files written atomically.

use super::*;

/// Creates the data folder (0700) or makes it and everything in it private (folders 0700,
/// files 0600).
pub(super) fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the agent's data folder {}", dir.display()))?;
    let changed =
        cairn_server::bootstrap::make_private(dir).with_context(|| format!("making {} private", dir.display()))?;
    if changed > 0 {
        eprintln!(
            "cairn agent: {changed} entries of {} could be read by other users; they are private now",
            dir.display()
        );
    }
    Ok(())
}

/// The stored identity, `None` before the first enrolment. Half an identity is an error. A
/// renewal interrupted after its certificate was written is finished first.
pub(super) fn load_identity(dir: &Path) -> anyhow::Result<Option<Identity>> {
    finish_renewal(dir)?;
    let files = [STATE_FILE, KEY_FILE, CERT_FILE, CA_FILE];
    let present: Vec<&str> = files.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if present.is_empty() {
        return Ok(None);
    }
    if present.len() != files.len() {
        let missing: Vec<&str> = files.iter().copied().filter(|f| !present.contains(f)).collect();
        bail!(
            "{} holds part of an agent identity ({} missing): restore the folder from a backup, or empty it \
             and enrol again with a new token",
            dir.display(),
            missing.join(", ")
        );
    }
    let read = |f: &str| fs::read_to_string(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()));
    let enrolment: Enrolment = serde_json::from_str(&read(STATE_FILE)?)
        .with_context(|| format!("{} is damaged", dir.join(STATE_FILE).display()))?;
    Ok(Some(Identity {
        enrolment,
        key_pem: read(KEY_FILE)?,
        cert_pem: read(CERT_FILE)?,
        ca_pem: read(CA_FILE)?,
    }))
}

/// Puts a renewed key and certificate in place when a renewal stopped after writing them (the
/// certificate is written last, so its presence means both are complete); drops a renewed key
/// whose certificate never came.
fn finish_renewal(dir: &Path) -> anyhow::Result<()> {
    let (next_key, next_cert) = (dir.join(NEXT_KEY_FILE), dir.join(NEXT_CERT_FILE));
    if !next_cert.exists() {
        if next_key.exists() {
            fs::remove_file(&next_key)
                .with_context(|| format!("removing {} of an unfinished renewal", next_key.display()))?;
        }
        return Ok(());
    }
    let rename = |from: &Path, to: &str| {
        fs::rename(from, dir.join(to)).with_context(|| format!("renaming {} to {to}", from.display()))
    };
    if next_key.exists() {
        rename(&next_key, KEY_FILE)?;
    }
    rename(&next_cert, CERT_FILE)?;
    let cert_pem = fs::read_to_string(dir.join(CERT_FILE))
        .with_context(|| format!("reading {}", dir.join(CERT_FILE).display()))?;
    let fingerprint = cairn_server::agent_tls::pem_fingerprint(&cert_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(CERT_FILE).display()))?;
    let state = dir.join(STATE_FILE);
    let mut enrolment: Enrolment =
        serde_json::from_str(&fs::read_to_string(&state).with_context(|| format!("reading {}", state.display()))?)
            .with_context(|| format!("{} is damaged", state.display()))?;
    enrolment.cert_fingerprint = fingerprint;
    write_private(&state, serde_json::to_string_pretty(&enrolment)?.as_bytes())?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::private_file::write(path, &path.with_extension("tmp"), bytes)
        .with_context(|| format!("writing {}", path.display()))
}
