//! The verified byte streams. Stream `seed` repeats a 64 KiB block of pseudo-random words
//! (its own per seed), and the first 8 bytes of block `k` are a hash of `seed` and `k`. So a
//! receiver checks every byte with a plain compare (no per-byte arithmetic), and a lost,
//! duplicated or reordered piece shows as a mismatch: by the content, or when it is a whole
//! number of blocks, at the next block's stamp (or in the byte count at the end).

/// Bytes per block.
const BLOCK: usize = 64 * 1024;

/// Word `index` (8 bytes, little endian) of the hash sequence `seed`.
fn word(seed: u64, index: u64) -> u64 {
    let mut v = index.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    v ^= v >> 31;
    v.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The stamp of block `block`.
fn stamp(seed: u64, block: u64) -> [u8; 8] {
    word(seed ^ 0x5354_414D_5053_5354, block).to_le_bytes()
}

/// One stream's content.
pub struct Pattern {
    seed: u64,
    block: Vec<u8>,
}

impl Pattern {
    /// Stream `seed`.
    pub fn new(seed: u64) -> Pattern {
        let mut block = vec![0u8; BLOCK];
        for (i, chunk) in block.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&word(seed, i as u64).to_le_bytes());
        }
        Pattern { seed, block }
    }

    /// Calls `piece(start, expected_bytes)` for consecutive pieces covering
    /// `pos..pos + len` of the stream, `start` counted from `pos`.
    fn pieces(&self, pos: u64, len: usize, mut piece: impl FnMut(usize, &[u8]) -> bool) -> bool {
        let mut at = 0;
        while at < len {
            let p = pos + at as u64;
            let block = p / BLOCK as u64;
            let off = (p % BLOCK as u64) as usize;
            let n = (BLOCK - off).min(len - at);
            // The stamp covers the block's first 8 bytes.
            let in_stamp = 8usize.saturating_sub(off).min(n);
            if in_stamp > 0 {
                let stamp = stamp(self.seed, block);
                if !piece(at, &stamp[off..off + in_stamp]) {
                    return false;
                }
            }
            if !piece(at + in_stamp, &self.block[off + in_stamp..off + n]) {
                return false;
            }
            at += n;
        }
        true
    }

    /// Fills `buf` with bytes `pos..pos + buf.len()` of the stream.
    pub fn fill(&self, pos: u64, buf: &mut [u8]) {
        let len = buf.len();
        self.pieces(pos, len, |at, expected| {
            buf[at..at + expected.len()].copy_from_slice(expected);
            true
        });
    }

    /// Whether `data` equals bytes `pos..pos + data.len()` of the stream.
    pub fn matches(&self, pos: u64, data: &[u8]) -> bool {
        self.pieces(pos, data.len(), |at, expected| {
            &data[at..at + expected.len()] == expected
        })
    }
}

/// Checks a received stream piece by piece.
pub struct Verifier {
    pattern: Pattern,
    /// Bytes verified so far.
    pub pos: u64,
}

impl Verifier {
    /// A verifier for stream `seed` from its start.
    pub fn new(seed: u64) -> Verifier {
        Verifier {
            pattern: Pattern::new(seed),
            pos: 0,
        }
    }

    /// Whether `data` is the next piece of the stream; advances past it if so.
    pub fn check(&mut self, data: &[u8]) -> bool {
        if !self.pattern.matches(self.pos, data) {
            return false;
        }
        self.pos += data.len() as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_at_any_offset_match_the_whole_and_errors_show() {
        let p = Pattern::new(7);
        let total = 3 * BLOCK + 100;
        let mut whole = vec![0u8; total];
        p.fill(0, &mut whole);
        let mut v = Verifier::new(7);
        let mut at = 0;
        for n in [1, 7, 8, 13, 64, 3, BLOCK - 96, 20, BLOCK, BLOCK + 3] {
            let mut piece = vec![0u8; n];
            p.fill(at as u64, &mut piece);
            assert_eq!(piece, whole[at..at + n]);
            assert!(v.check(&whole[at..at + n]));
            at += n;
        }
        assert!(at + 16 <= total);
        // A flipped bit, another stream, and a whole block skipped are all caught.
        let mut wrong = whole[at..at + 10].to_vec();
        wrong[3] ^= 1;
        assert!(!v.check(&wrong));
        let mut other = vec![0u8; 16];
        Pattern::new(8).fill(at as u64, &mut other);
        assert!(!v.check(&other));
        let mut v = Verifier::new(7);
        assert!(v.check(&whole[..10]));
        // A skip of exactly one block shows at the next block's stamp.
        assert!(!v.check(&whole[BLOCK + 10..2 * BLOCK + 10]));
        assert!(v.check(&whole[10..30]));
    }
}
