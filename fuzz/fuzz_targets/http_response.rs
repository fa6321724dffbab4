//! `http::ResponseParser` fed the same bytes whole, split at fuzzer-chosen points, and byte by
//! byte, then `eof`: the same responses and the same error every time, and buffering within
//! the limits. Input layout: `holdwire_fuzz::http_split` (limits, split points, then the bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(input) = holdwire_fuzz::http_split::split_input(data) {
        holdwire_fuzz::http_split::check_responses(&input);
    }
});
