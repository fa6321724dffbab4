//! Async `smol` driver for holdwire (see the async driver issue).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use holdwire_proto as proto;
