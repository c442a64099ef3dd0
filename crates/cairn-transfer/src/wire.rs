//! The data channel's wire format: frames, their byte layout and a pure decoder.
//!
//! Every frame starts with a one-byte kind; all integers are big-endian. Layouts (`||` joins
//! fields, sizes in bytes):
//!
//! ```text
//! HELLO    0x01 || magic "CRNT" 4 || version u16 || transfer id 16 || stream u16 || streams u16
//!               || window u32 || max block len u32 || acked below u64                 (43 bytes)
//! HELLO_OK 0x02 || version u16 || status u8 (0 active, 1 complete) || received below u64 (12 bytes)
//! BLOCK    0x03 || seq u64 || disk u32 || offset u64 || len u32 || crc32c u32 || len bytes (29 + len)
//! ACK      0x04 || seq u64                                                             (9 bytes)
//! NACK     0x05 || seq u64 || reason u8                                                (10 bytes)
//! END      0x06 || total blocks u64                                                    (9 bytes)
//! ERROR    0x07 || code u16 || len u16 || len bytes of UTF-8 message (len <= 1024)    (5 + len)
//! ```
//!
//! The sender (TLS client) sends HELLO, BLOCK, END and ERROR; the receiver (TLS server) sends
//! HELLO_OK, ACK, NACK, END (confirming the sender's END) and ERROR. The decoder checks only
//! structure and caps (it never allocates more than the caps allow from a length a peer sent);
//! which frame may come when, and the CRC of a block, are checked by the connection code.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The four bytes after a HELLO's kind byte.
pub const MAGIC: [u8; 4] = *b"CRNT";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Hard cap on a block's payload length, whatever a configuration says (16 MiB).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;
/// Hard cap on the number of parallel streams of one transfer.
pub const MAX_STREAMS: u16 = 64;
/// Hard cap on the number of unacknowledged blocks a sender may have.
pub const MAX_WINDOW: u32 = 4096;
/// Hard cap on an ERROR frame's message, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Bytes of a BLOCK frame before its payload.
pub const BLOCK_HEADER_LEN: usize = 29;
/// Bytes of a HELLO frame.
pub const HELLO_LEN: usize = 43;

const KIND_HELLO: u8 = 0x01;
const KIND_HELLO_OK: u8 = 0x02;
const KIND_BLOCK: u8 = 0x03;
const KIND_ACK: u8 = 0x04;
const KIND_NACK: u8 = 0x05;
const KIND_END: u8 = 0x06;
const KIND_ERROR: u8 = 0x07;

/// Identifies one logical transfer (one task's data) across all its streams and reconnections.
///
/// Chosen by whoever plans the task (the backup server), told to both data movers, and
/// unguessable (random), so it also works as a capability: a receiver accepts streams only for
/// transfers it was told to expect.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    /// A new random transfer id (from the system's CSPRNG via aws-lc).
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        // aws-lc's RNG does not fail on Linux once initialised; fall back to the clock and a
        // counter rather than panicking if it ever did, since uniqueness is what matters most.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bytes[..8].copy_from_slice(&nanos.to_be_bytes());
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes[8..].copy_from_slice(&n.to_be_bytes());
        }
        Self(bytes)
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TransferId {
    type Err = String;

    /// Parses the 32 hex digits [`Display`](fmt::Display) prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "not a transfer id (32 hex digits): {:?}",
                s.chars().take(40).collect::<String>()
            )
        };
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferId({self})")
    }
}

/// The first frame on every connection, from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the sender speaks ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The transfer this stream belongs to.
    pub transfer: TransferId,
    /// This stream's index, `< streams`.
    pub stream: u16,
    /// How many parallel streams the sender uses (1..=[`MAX_STREAMS`]).
    pub streams: u16,
    /// The most blocks the sender keeps unacknowledged (1..=[`MAX_WINDOW`]).
    pub window: u32,
    /// The longest block payload the sender will send (1..=[`MAX_BLOCK_LEN`]).
    pub max_block_len: u32,
    /// Every block with a lower seq has been acknowledged to the sender.
    pub acked_below: u64,
}

/// The receiver's answer to a HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloOk {
    /// Protocol version the receiver will speak on this connection.
    pub version: u16,
    /// Whether the transfer is still running or already complete.
    pub status: TransferStatus,
    /// The receiver has every block with a lower seq; the sender may treat them as acknowledged.
    pub received_below: u64,
}

/// State of a transfer as reported in HELLO_OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStatus {
    /// Blocks are still expected.
    Active,
    /// The receiver already confirmed the transfer's END (a reconnect after the last frame).
    Complete,
}

/// The fixed fields of a BLOCK frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Position of the block in the transfer, dense from 0.
    pub seq: u64,
    /// Which disk of the task the block belongs to.
    pub disk: u32,
    /// Byte offset of the block in that disk (or whatever the consumer's addressing is).
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// CRC-32C (Castagnoli) of the payload as the sender computed it.
    pub crc32c: u32,
}

/// Why a receiver asks for a block again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// The payload's CRC-32C did not match the header.
    Crc,
}

/// Codes of ERROR frames; unknown codes are kept as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer broke the protocol.
    Protocol,
    /// The receiver does not expect this transfer.
    UnknownTransfer,
    /// A HELLO asked for more than the receiver allows (streams, window, block length).
    Limits,
    /// The receiver's consumer failed to take a block; the transfer is over.
    Consumer,
    /// The transfer was cancelled by the side sending the error.
    Cancelled,
    /// Protocol version not supported.
    Version,
    /// The same block failed its CRC too many times.
    TooManyResends,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::Protocol => 1,
            Self::UnknownTransfer => 2,
            Self::Limits => 3,
            Self::Consumer => 4,
            Self::Cancelled => 5,
            Self::Version => 6,
            Self::TooManyResends => 7,
            Self::Other(n) => n,
        }
    }

    fn from_u16(n: u16) -> Self {
        match n {
            1 => Self::Protocol,
            2 => Self::UnknownTransfer,
            3 => Self::Limits,
            4 => Self::Consumer,
            5 => Self::Cancelled,
            6 => Self::Version,
            7 => Self::TooManyResends,
            n => Self::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol => f.write_str("protocol violation"),
            Self::UnknownTransfer => f.write_str("unknown transfer"),
            Self::Limits => f.write_str("limits exceeded"),
            Self::Consumer => f.write_str("consumer failed"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Version => f.write_str("unsupported version"),
            Self::TooManyResends => f.write_str("too many re-sends"),
            Self::Other(n) => write!(f, "error code {n}"),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Sender → receiver, first on every connection.
    Hello(Hello),
    /// Receiver → sender, answer to HELLO.
    HelloOk(HelloOk),
    /// Sender → receiver: one block and its payload.
    Block(BlockHeader, Bytes),
    /// Receiver → sender: the consumer has taken block `seq` (per block, not cumulative).
    Ack(u64),
    /// Receiver → sender: send block `seq` again.
    Nack(u64, NackReason),
    /// Sender → receiver: all `n` blocks are acknowledged; receiver → sender: confirmed.
    End(u64),
    /// Either way: the transfer failed; the connection closes after it.
    Error(ErrorCode, String),
}

impl Frame {
    /// Short name of the frame kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "HELLO",
            Self::HelloOk(_) => "HELLO_OK",
            Self::Block(..) => "BLOCK",
            Self::Ack(_) => "ACK",
            Self::Nack(..) => "NACK",
            Self::End(_) => "END",
            Self::Error(..) => "ERROR",
        }
    }

    /// Appends the whole frame (a BLOCK's payload included) to `out`.
    ///
    /// An ERROR message longer than [`MAX_ERROR_MESSAGE`] is cut at a character boundary.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::Hello(h) => {
                out.reserve(HELLO_LEN);
                out.put_u8(KIND_HELLO);
                out.put_slice(&MAGIC);
                out.put_u16(h.version);
                out.put_slice(&h.transfer.0);
                out.put_u16(h.stream);
                out.put_u16(h.streams);
                out.put_u32(h.window);
                out.put_u32(h.max_block_len);
                out.put_u64(h.acked_below);
            }
            Self::HelloOk(h) => {
                out.put_u8(KIND_HELLO_OK);
                out.put_u16(h.version);
                out.put_u8(match h.status {
                    TransferStatus::Active => 0,
                    TransferStatus::Complete => 1,
                });
                out.put_u64(h.received_below);
            }
            Self::Block(header, payload) => {
                encode_block_header(header, out);
                out.put_slice(payload);
            }
            Self::Ack(seq) => {
                out.put_u8(KIND_ACK);
                out.put_u64(*seq);
            }
            Self::Nack(seq, reason) => {
                out.put_u8(KIND_NACK);
                out.put_u64(*seq);
                out.put_u8(match reason {
                    NackReason::Crc => 1,
                });
            }
            Self::End(total) => {
                out.put_u8(KIND_END);
                out.put_u64(*total);
            }
            Self::Error(code, message) => {
                let message = truncate_utf8(message, MAX_ERROR_MESSAGE);
                out.put_u8(KIND_ERROR);
                out.put_u16(code.to_u16());
                // Cannot overflow: truncated to MAX_ERROR_MESSAGE above.
                out.put_u16(message.len() as u16);
                out.put_slice(message.as_bytes());
            }
        }
    }
}

/// Appends a BLOCK frame's header (everything but the payload) to `out`.
///
/// The sender writes the payload right after it, straight from the block's buffer.
pub fn encode_block_header(header: &BlockHeader, out: &mut BytesMut) {
    out.reserve(BLOCK_HEADER_LEN);
    out.put_u8(KIND_BLOCK);
    out.put_u64(header.seq);
    out.put_u32(header.disk);
    out.put_u64(header.offset);
    out.put_u32(header.len);
    out.put_u32(header.crc32c);
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps the decoder enforces besides the hard ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest block payload accepted; clamped to [`MAX_BLOCK_LEN`].
    pub max_block_len: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_block_len: MAX_BLOCK_LEN,
        }
    }
}

/// What [`decode_frame`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, removed from the buffer.
    Frame(Frame),
    /// Not a whole frame yet: at least `needed` bytes in total must be buffered (nothing was
    /// removed). `needed` never exceeds a frame's largest possible size under the limits.
    Incomplete {
        /// Total buffered bytes needed before the next call can make progress.
        needed: usize,
    },
}

/// A structurally invalid frame. The connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte is not a known frame kind.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A HELLO without the magic bytes: not a cairn data channel peer.
    #[error("HELLO without the CRNT magic (got {0:02x?}): not a cairn data channel")]
    BadMagic([u8; 4]),
    /// A BLOCK longer than the limit.
    #[error("BLOCK seq {seq} of {len} bytes exceeds the limit of {max} bytes")]
    BlockTooLong {
        /// The block's seq.
        seq: u64,
        /// Its announced length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// An ERROR message longer than [`MAX_ERROR_MESSAGE`].
    #[error("ERROR message of {0} bytes exceeds the limit of {MAX_ERROR_MESSAGE} bytes")]
    MessageTooLong(u16),
    /// A field outside its allowed range.
    #[error("{frame} field {field} has invalid value {value}")]
    InvalidField {
        /// Frame kind.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// The value received.
        value: u64,
    },
}

/// Decodes the frame at the front of `buf`, removing its bytes when it is complete.
///
/// Pure: no I/O, no allocation beyond what the caps allow (a BLOCK's payload is split off the
/// buffer without copying). Errors leave the buffer in an unspecified state; the caller closes
/// the connection.
pub fn decode_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, WireError> {
    let Some(&kind) = buf.first() else {
        return Ok(Decoded::Incomplete { needed: 1 });
    };
    let fixed = match kind {
        KIND_HELLO => HELLO_LEN,
        KIND_HELLO_OK => 12,
        KIND_BLOCK => BLOCK_HEADER_LEN,
        KIND_ACK | KIND_END => 9,
        KIND_NACK => 10,
        KIND_ERROR => 5,
        other => return Err(WireError::UnknownKind(other)),
    };
    if buf.len() < fixed {
        return Ok(Decoded::Incomplete { needed: fixed });
    }
    let mut b = &buf[1..fixed];
    let frame = match kind {
        KIND_HELLO => {
            let mut magic = [0u8; 4];
            b.copy_to_slice(&mut magic);
            if magic != MAGIC {
                return Err(WireError::BadMagic(magic));
            }
            let version = b.get_u16();
            let mut transfer = [0u8; 16];
            b.copy_to_slice(&mut transfer);
            let hello = Hello {
                version,
                transfer: TransferId(transfer),
                stream: b.get_u16(),
                streams: b.get_u16(),
                window: b.get_u32(),
                max_block_len: b.get_u32(),
                acked_below: b.get_u64(),
            };
            let invalid = |field, value: u64| WireError::InvalidField {
                frame: "HELLO",
                field,
                value,
            };
            if hello.streams == 0 || hello.streams > MAX_STREAMS {
                return Err(invalid("streams", hello.streams.into()));
            }
            if hello.stream >= hello.streams {
                return Err(invalid("stream", hello.stream.into()));
            }
            if hello.window == 0 || hello.window > MAX_WINDOW {
                return Err(invalid("window", hello.window.into()));
            }
            if hello.max_block_len == 0 || hello.max_block_len > MAX_BLOCK_LEN {
                return Err(invalid("max_block_len", hello.max_block_len.into()));
            }
            buf.advance(fixed);
            Frame::Hello(hello)
        }
        KIND_HELLO_OK => {
            let version = b.get_u16();
            let status = match b.get_u8() {
                0 => TransferStatus::Active,
                1 => TransferStatus::Complete,
                other => {
                    return Err(WireError::InvalidField {
                        frame: "HELLO_OK",
                        field: "status",
                        value: other.into(),
                    });
                }
            };
            let received_below = b.get_u64();
            buf.advance(fixed);
            Frame::HelloOk(HelloOk {
                version,
                status,
                received_below,
            })
        }
        KIND_BLOCK => {
            let header = BlockHeader {
                seq: b.get_u64(),
                disk: b.get_u32(),
                offset: b.get_u64(),
                len: b.get_u32(),
                crc32c: b.get_u32(),
            };
            let max = limits.max_block_len.min(MAX_BLOCK_LEN);
            if header.len > max {
                return Err(WireError::BlockTooLong {
                    seq: header.seq,
                    len: header.len,
                    max,
                });
            }
            let total = fixed + header.len as usize;
            if buf.len() < total {
                return Ok(Decoded::Incomplete { needed: total });
            }
            buf.advance(fixed);
            let payload = buf.split_to(header.len as usize).freeze();
            Frame::Block(header, payload)
        }
        KIND_ACK => {
            let seq = b.get_u64();
            buf.advance(fixed);
            Frame::Ack(seq)
        }
        KIND_NACK => {
            let seq = b.get_u64();
            let reason = match b.get_u8() {
                1 => NackReason::Crc,
                other => {
                    return Err(WireError::InvalidField {
                        frame: "NACK",
                        field: "reason",
                        value: other.into(),
                    });
                }
            };
            buf.advance(fixed);
            Frame::Nack(seq, reason)
        }
        KIND_END => {
            let total = b.get_u64();
            buf.advance(fixed);
            Frame::End(total)
        }
        KIND_ERROR => {
            let code = ErrorCode::from_u16(b.get_u16());
            let len = b.get_u16();
            if usize::from(len) > MAX_ERROR_MESSAGE {
                return Err(WireError::MessageTooLong(len));
            }
            let total = fixed + usize::from(len);
            if buf.len() < total {
                return Ok(Decoded::Incomplete { needed: total });
            }
            let message = String::from_utf8_lossy(&buf[fixed..total]).into_owned();
            buf.advance(total);
            Frame::Error(code, message)
        }
        _ => unreachable!("kind checked above"),
    };
    Ok(Decoded::Frame(frame))
}

/// CRC-32C of a payload, as carried in BLOCK frames.
pub fn block_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

#[cfg(test)]
mod tests {
    #[test]
    fn transfer_ids_parse_what_they_print() {
        let id = TransferId::random();
        assert_eq!(id.to_string().parse::<TransferId>(), Ok(id));
        assert!("abc".parse::<TransferId>().is_err());
        assert!("zz".repeat(16).parse::<TransferId>().is_err());
        assert!("é".repeat(16).parse::<TransferId>().is_err());
    }

    use super::*;
    use proptest::prelude::*;

    fn all_kinds() -> Vec<Frame> {
        let payload = Bytes::from_static(b"hello block");
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                transfer: TransferId([7; 16]),
                stream: 2,
                streams: 5,
                window: 64,
                max_block_len: 1 << 20,
                acked_below: 99,
            }),
            Frame::HelloOk(HelloOk {
                version: 1,
                status: TransferStatus::Complete,
                received_below: 12,
            }),
            Frame::Block(
                BlockHeader {
                    seq: 3,
                    disk: 1,
                    offset: 4096,
                    len: payload.len() as u32,
                    crc32c: block_crc(&payload),
                },
                payload,
            ),
            Frame::Ack(u64::MAX),
            Frame::Nack(5, NackReason::Crc),
            Frame::End(1000),
            Frame::Error(ErrorCode::Consumer, "disk full on /srv/backups".into()),
            Frame::Error(ErrorCode::Other(999), String::new()),
        ]
    }

    #[test]
    fn every_frame_round_trips_and_partial_input_is_incomplete() {
        for frame in all_kinds() {
            let mut encoded = BytesMut::new();
            frame.encode(&mut encoded);
            for cut in 0..encoded.len() {
                let mut partial = BytesMut::from(&encoded[..cut]);
                match decode_frame(&mut partial, &Limits::default()).unwrap() {
                    Decoded::Incomplete { needed } => {
                        assert!(
                            needed > cut && needed <= encoded.len(),
                            "{frame:?} cut {cut} needed {needed}"
                        )
                    }
                    Decoded::Frame(f) => panic!("decoded {f:?} from {cut} of {} bytes", encoded.len()),
                }
                assert_eq!(partial.len(), cut, "incomplete decode consumed bytes");
            }
            encoded.put_u8(0xee); // the next frame's first byte stays in the buffer
            let decoded = decode_frame(&mut encoded, &Limits::default()).unwrap();
            assert_eq!(decoded, Decoded::Frame(frame));
            assert_eq!(&encoded[..], &[0xee]);
        }
    }

    #[test]
    fn caps_are_enforced_before_allocation() {
        let mut buf = BytesMut::new();
        encode_block_header(
            &BlockHeader {
                seq: 1,
                disk: 0,
                offset: 0,
                len: 4097,
                crc32c: 0,
            },
            &mut buf,
        );
        let err = decode_frame(&mut buf, &Limits { max_block_len: 4096 }).unwrap_err();
        assert_eq!(
            err,
            WireError::BlockTooLong {
                seq: 1,
                len: 4097,
                max: 4096
            }
        );
        let mut buf = BytesMut::from(&[KIND_ERROR, 0, 1, 0x04, 0x01][..]);
        assert_eq!(
            decode_frame(&mut buf, &Limits::default()).unwrap_err(),
            WireError::MessageTooLong(1025)
        );
        let mut buf = BytesMut::from(&[0x42][..]);
        assert_eq!(
            decode_frame(&mut buf, &Limits::default()).unwrap_err(),
            WireError::UnknownKind(0x42)
        );
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let mut buf = BytesMut::new();
        Frame::Error(ErrorCode::Protocol, long).encode(&mut buf);
        let Decoded::Frame(Frame::Error(_, message)) = decode_frame(&mut buf, &Limits::default()).unwrap() else {
            panic!("not an error frame");
        };
        assert_eq!(message.len(), MAX_ERROR_MESSAGE);
    }

    #[test]
    fn hello_fields_are_validated() {
        let base = Hello {
            version: 1,
            transfer: TransferId([1; 16]),
            stream: 0,
            streams: 1,
            window: 1,
            max_block_len: 1,
            acked_below: 0,
        };
        for (bad, field) in [
            (Hello { streams: 0, ..base }, "streams"),
            (Hello { stream: 1, ..base }, "stream"),
            (
                Hello {
                    window: MAX_WINDOW + 1,
                    ..base
                },
                "window",
            ),
            (
                Hello {
                    max_block_len: MAX_BLOCK_LEN + 1,
                    ..base
                },
                "max_block_len",
            ),
        ] {
            let mut buf = BytesMut::new();
            Frame::Hello(bad).encode(&mut buf);
            match decode_frame(&mut buf, &Limits::default()) {
                Err(WireError::InvalidField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut buf = BytesMut::new();
        Frame::Hello(base).encode(&mut buf);
        buf[1] = b'X';
        assert!(matches!(
            decode_frame(&mut buf, &Limits::default()),
            Err(WireError::BadMagic(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&data[..]);
            let limits = Limits { max_block_len: 64 };
            while let Ok(Decoded::Frame(_)) = decode_frame(&mut buf, &limits) {}
        }
    }
}
