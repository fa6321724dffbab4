//! A `Client` fed arbitrary response sequences (raw bytes, or well-formed HTTP responses around
//! arbitrary or well-formed bundles of its session), closes and time. See
//! `holdwire_fuzz::client_target`.
#![no_main]

use holdwire_fuzz::client_target::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
