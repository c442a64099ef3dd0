//! Shared by the NBD fuzz targets (`nbd_client_replies`,
//! `nbd_server_requests`) and their seed generator (`examples/gen_nbd_seeds.rs`):
//! the client session the client target drives, and the server (with an
//! in-memory read-only export and a copy-on-write export) the server target feeds.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use cairn_disk::{DiskSource, Extent};
use cairn_nbd::{ClientOptions, CowExport, NbdClient, NbdServer, SourceExport};

/// Metadata contexts the client asks for, by mode bits 1–2.
pub const CONTEXTS: [&[&str]; 4] = [
    &[],
    &["base:allocation"],
    &["base:allocation", "qemu:dirty-bitmap:b"],
    &["qemu:dirty-bitmap:b"],
];

/// The client's part of a session: negotiate with export `ro` asking for the
/// contexts of `mode`, read up to 1 MiB from 0, ask block status of each
/// accepted context, write 4 KiB, flush, disconnect. Errors end it quietly.
pub fn client_session<R, W>(reader: R, writer: W, mode: u8)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let opts = ClientOptions {
        export: "ro".into(),
        meta_contexts: CONTEXTS[(mode as usize >> 1) & 3]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        timeout: None,
    };
    let Ok(mut c) = NbdClient::from_streams(reader, writer, "fuzz", &opts) else {
        return;
    };
    let size = c.size();
    let n = size.min(1 << 20) as usize;
    let mut buf = vec![0u8; n];
    let _ = c.read(0, &mut buf);
    for ctx in c.meta_contexts().to_vec() {
        if let Ok(extents) = c.block_status(&ctx, 0, size.min(1 << 30)) {
            let mut pos = 0;
            for e in &extents {
                assert_eq!(e.offset, pos, "block status extents must be contiguous");
                assert!(e.length > 0);
                pos = e.end();
            }
            assert_eq!(pos, size.min(1 << 30), "block status must cover the range");
        }
    }
    let _ = c.write(0, &buf[..n.min(4096)]);
    let _ = c.flush();
    let _ = c.disconnect();
}

/// An in-memory disk: bytes `i % 251 + 1` inside its allocation, zeros outside.
pub struct MemDisk {
    data: Vec<u8>,
    alloc: Vec<Extent>,
}

impl MemDisk {
    /// 1 MiB + 1000 bytes with data in three places.
    pub fn new() -> Self {
        let size = (1 << 20) + 1000;
        let alloc = vec![
            Extent {
                offset: 0,
                length: 5000,
            },
            Extent {
                offset: 65536,
                length: 8192,
            },
            Extent {
                offset: size - 3000,
                length: 3000,
            },
        ];
        let mut data = vec![0u8; size as usize];
        for e in &alloc {
            for i in e.offset..e.end() {
                data[i as usize] = (i % 251) as u8 + 1;
            }
        }
        MemDisk { data, alloc }
    }
}

impl DiskSource for MemDisk {
    fn describe(&self) -> String {
        "fuzz memory disk".into()
    }
    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }
    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(self.alloc.clone())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        buf.fill(0);
        let start = (offset as usize).min(self.data.len());
        let end = (start + buf.len()).min(self.data.len());
        buf[..end - start].copy_from_slice(&self.data[start..end]);
        Ok(())
    }
}

/// A server with export `ro` (read-only, [`MemDisk`]) and `rw` (copy-on-write
/// over it, clusters of 512 B, 4 KiB, 64 KiB or 1 MiB by mode bits 0–1; the
/// scratch file is one per process in the temp folder).
pub fn server(mode: u8) -> Arc<NbdServer> {
    // Built once per process: the disk is read-only, and building it per run
    // would dominate the run time.
    static DISK: OnceLock<Arc<MemDisk>> = OnceLock::new();
    let disk: Arc<dyn DiskSource> = DISK.get_or_init(|| Arc::new(MemDisk::new())).clone();
    let server = NbdServer::new();
    server.add_export(
        "ro",
        "read-only",
        Arc::new(SourceExport::new(Arc::clone(&disk)).expect("source export")),
    );
    let cluster = [512u32, 4096, 65536, 1 << 20][(mode & 3) as usize];
    let scratch = std::env::temp_dir().join(format!("cairn-fuzz-nbd-{}.scratch", std::process::id()));
    let cow = CowExport::create(disk, &scratch, cluster).expect("scratch file");
    server.add_export("rw", "copy-on-write", Arc::new(cow));
    server
}
