//! NBD server: the input (after the mode byte) is everything a client sends:
//! client flags, options (`NBD_OPT_LIST`, `INFO`, `GO`, `EXPORT_NAME`,
//! structured replies, meta contexts, ...) and requests, served by
//! `NbdServer::serve_stream` against a read-only in-memory export `ro` and a
//! copy-on-write export `rw` over it; replies go to a sink.
//!
//! Mode byte: bits 0–1: the copy-on-write cluster size (512 B, 4 KiB, 64 KiB, 1 MiB).
#![no_main]

#[path = "nbd_common.rs"]
mod nbd_common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let server = nbd_common::server(mode);
    let _ = server.serve_stream(rest, std::io::sink());
});
