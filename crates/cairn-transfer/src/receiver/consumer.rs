//! What the receiver hands blocks to: [`ReceivedBlock`], the [`BlockConsumer`] that the owner
//! of a transfer provides, and the object-safe form the receiver stores it in.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A block as the receiver hands it to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBlock {
    /// The block's position in the transfer (dense from 0, unique: each seq arrives once).
    pub seq: u64,
    /// Which disk of the task.
    pub disk: u32,
    /// Byte offset in that disk.
    pub offset: u64,
    /// The payload, its CRC-32C checked.
    pub data: Bytes,
}

/// What a consumer's failure carries.
pub type ConsumerError = Box<dyn std::error::Error + Send + Sync>;

/// Takes the blocks of one transfer on the target (think: the repository writer).
///
/// Blocks come in any order and, with several streams, concurrently; each seq exactly once.
/// A block is acknowledged to the sender only after `consume` returned `Ok`, so a block that was
/// acknowledged must be durable enough for the caller's purpose. An `Err` fails the transfer on
/// both sides.
pub trait BlockConsumer: Send + Sync + 'static {
    /// Takes one block.
    fn consume(&self, block: ReceivedBlock) -> impl Future<Output = Result<(), ConsumerError>> + Send;
}

impl<F, Fut> BlockConsumer for F
where
    F: Fn(ReceivedBlock) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ConsumerError>> + Send,
{
    fn consume(&self, block: ReceivedBlock) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        self(block)
    }
}

/// A boxed future, for the object-safe [`DynConsumer`].
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`BlockConsumer`], so transfers with different consumers share a map.
pub(super) trait DynConsumer: Send + Sync {
    /// [`BlockConsumer::consume`], boxed.
    fn consume_boxed(&self, block: ReceivedBlock) -> BoxFuture<'_, Result<(), ConsumerError>>;
}

impl<C: BlockConsumer> DynConsumer for C {
    fn consume_boxed(&self, block: ReceivedBlock) -> BoxFuture<'_, Result<(), ConsumerError>> {
        Box::pin(self.consume(block))
    }
}
