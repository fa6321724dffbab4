//! `wire::decode` on arbitrary bytes.
//!
//! Input: a mode byte, then the bundle. Mode bit 0 set: the CRC-32C trailer is computed and
//! appended to the rest (so the fuzzer gets past the checksum and into the header, SACK and
//! frame rules); clear: the rest is decoded as it is. Mode bit 1 set: tight limits (so every
//! limit error is reachable with small inputs).
//!
//! Properties: decoding never panics; `peek_header` agrees with `decode` (same envelope error,
//! same header); a decoded bundle re-encodes byte for byte from its parts (header, SACK ranges,
//! frames through `BundleEncoder::frame`, tag copied), `bundle_len` predicts its size, and the
//! re-encoded bundle decodes to the same parts.
#![no_main]

use bytes::Bytes;
use holdwire_proto::wire::{self, BundleEncoder, DecodeError, Frame, WireLimits};
use libfuzzer_sys::fuzz_target;

fn limits(tight: bool) -> WireLimits {
    if tight {
        WireLimits {
            max_bundle_len: 512,
            max_message_len: 16,
            max_sack_ranges: 2,
            max_frames: 4,
            max_reason_len: 8,
        }
    } else {
        WireLimits::default()
    }
}

fn is_envelope_error(e: &DecodeError) -> bool {
    matches!(
        e,
        DecodeError::TooShort
            | DecodeError::TooLong
            | DecodeError::ChecksumMismatch
            | DecodeError::BadMagic
            | DecodeError::UnsupportedVersion(_)
            | DecodeError::ReservedFlags(_)
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = rest.to_vec();
    if mode & 1 != 0 {
        let crc = wire::crc32c(&input);
        input.extend_from_slice(&crc.to_be_bytes());
    }
    let limits = limits(mode & 2 != 0);
    let input = Bytes::from(input);

    let peeked = wire::peek_header(&input, &limits);
    let decoded = wire::decode(input.clone(), &limits);
    let bundle = match (&peeked, decoded) {
        (Err(pe), Err(de)) => {
            assert_eq!(*pe, de, "peek_header and decode disagree");
            assert!(is_envelope_error(pe), "peek_header returned {pe:?}");
            return;
        }
        (Err(pe), Ok(_)) => panic!("peek_header failed ({pe:?}) where decode succeeded"),
        (Ok(_), Err(de)) => {
            assert!(
                !is_envelope_error(&de),
                "decode failed the envelope ({de:?}) that peek_header passed"
            );
            return;
        }
        (Ok(h), Ok(b)) => {
            assert_eq!(
                h,
                b.header(),
                "peek_header and decode read different headers"
            );
            b
        }
    };

    // Re-encode from the parts.
    let header = *bundle.header();
    let sacks: Vec<_> = bundle.sacks().collect();
    assert_eq!(sacks.len(), bundle.sack_count());
    let frames: Vec<Frame> = bundle.frames().collect();
    assert_eq!(frames.len(), bundle.frame_count());
    let tag = bundle.tag().to_vec();
    assert!(tag.len() <= wire::MAX_TAG_LEN);
    let frames_len: usize = frames.iter().map(Frame::encoded_len).sum();
    assert_eq!(
        wire::bundle_len(sacks.len(), frames_len, tag.len()),
        input.len(),
        "bundle_len disagrees with the decoded size"
    );
    assert_eq!(
        bundle.signed_bytes(),
        &input[..input.len() - wire::CRC_LEN - tag.len()]
    );
    assert_eq!(bundle.as_bytes(), &input);

    let mut out = Vec::with_capacity(input.len());
    let mut enc = BundleEncoder::new(&mut out, &header, &sacks, tag.len() as u8);
    for f in &frames {
        enc.frame(f);
    }
    let len = enc.finish(|_, t| t.copy_from_slice(&tag));
    assert_eq!(len, out.len());
    assert!(
        out[..] == input[..],
        "re-encoding differs from the decoded bytes"
    );

    // The re-encoding decodes to the same parts (it is the same bytes, but through a fresh
    // buffer: nothing in `Bundle` may depend on where the input came from).
    let again = wire::decode(Bytes::from(out), &limits).expect("re-encoded bundle decodes");
    assert_eq!(again.header(), bundle.header());
    assert!(again.sacks().eq(bundle.sacks()));
    assert!(again.frames().eq(frames.iter().cloned()));
    assert_eq!(again.tag(), bundle.tag());
});
