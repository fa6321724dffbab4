//! A `Server` (max 4 sessions, 8 connections, short timeouts) fed an arbitrary sequence of
//! connections, raw and well-formed requests, replays, closes, application commands and time,
//! beside two genuine clients whose deliveries the fuzzer schedules; then everything times out
//! and a fresh session must work end to end. See `holdwire_fuzz::server_target`.
#![no_main]

use holdwire_fuzz::server_target::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| run(&input));
