//! Blocking `std::net` driver for holdwire (see the blocking driver issue).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use holdwire_proto as proto;
