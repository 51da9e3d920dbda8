//! A small STOMP 1.2 client for ActiveMQ: receipts, transactions, heart-beats,
//! client-individual acknowledgements.
//!
//! Invariant: a receipted frame resolves exactly once: `Ok` on the broker's
//! RECEIPT, `Rejected` on an ERROR naming it, `Closed` if the connection dies
//! first. "Closed" and a caller's timeout both mean "unknown", never "lost".

mod args;
mod broker_url;
mod client;
mod codec;
mod stats;

pub use args::{BrokerArgs, HEARTBEAT_MS, ORDER_QUEUE};
pub use broker_url::{BrokerUrl, UrlError};

pub use client::{Client, Config, Receipt, StompError};
pub use codec::{
    BODY_PREFIX_BYTES, CodecError, Cut, Frame, HEADER_COST, Item, MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_HEADER_BYTES,
    MAX_PROTOCOL_LINE, StompCodec,
};
pub use stats::{QueueStats, queue_stats};
