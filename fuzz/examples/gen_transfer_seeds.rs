//! Writes the seed inputs of the `transfer_frames` fuzz target under
//! `fuzz/seeds/transfer_frames/`: `cargo run --example gen_transfer_seeds` (from `fuzz/`).
//! Each seed is a mode byte followed by a short conversation of data channel frames.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use cairn_transfer::wire::{
    BlockHeader, ErrorCode, Frame, Hello, HelloOk, NackReason, PROTOCOL_VERSION, TransferId, TransferStatus, block_crc,
};

fn write(name: &str, mode: u8, frames: &[Frame]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join("transfer_frames");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&[mode]);
    for f in frames {
        f.encode(&mut bytes);
    }
    std::fs::write(dir.join(name), &bytes[..]).unwrap();
}

fn block(seq: u64, data: &'static [u8]) -> Frame {
    let data = Bytes::from_static(data);
    Frame::Block(
        BlockHeader {
            seq,
            disk: (seq % 2) as u32,
            offset: seq << 20,
            len: data.len() as u32,
            crc32c: block_crc(&data),
        },
        data,
    )
}

fn main() {
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        transfer: TransferId([0x42; 16]),
        stream: 1,
        streams: 5,
        window: 64,
        max_block_len: 1 << 20,
        acked_below: 3,
    });
    let sender = [
        hello,
        block(3, b"first block payload"),
        block(4, b""),
        block(5, b"x"),
        Frame::End(6),
    ];
    write("sender-whole", 0, &sender);
    write("sender-pieces", 4 | 1, &sender);
    let receiver = [
        Frame::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            status: TransferStatus::Active,
            received_below: 3,
        }),
        Frame::Ack(3),
        Frame::Nack(4, NackReason::Crc),
        Frame::Ack(4),
        Frame::End(6),
        Frame::Error(ErrorCode::Consumer, "disk full on /srv/backups".into()),
    ];
    write("receiver-pieces", 4 | 2, &receiver);
    write(
        "complete-and-errors",
        3,
        &[
            Frame::HelloOk(HelloOk {
                version: PROTOCOL_VERSION,
                status: TransferStatus::Complete,
                received_below: 9,
            }),
            Frame::Error(ErrorCode::Other(77), "é".into()),
        ],
    );
}
