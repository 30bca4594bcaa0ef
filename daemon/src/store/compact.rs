//! Store step, on disk: what the embedded store writes (journal frames, redb values, the
//! snapshot file) is JSON compressed with LZ4 when that makes it smaller. JSON repeats every
//! key and a commit repeats the conversation in its record, its timeline entries, its stream
//! events and its outbound CloudEvent, so a journal frame shrinks to well under half; bytes
//! written per event are what a platform team's disks pay on every event (measured by the
//! load tool's `--daemon-pid`, docs/benchmarks.md). LZ4 because it is cheap: about 4.5 % of
//! the daemon's CPU end to end, for half the bytes (same page); `lz4_flex` because it is pure
//! Rust.
//!
//! A compressed value is [`MARK`], the JSON's length and the block's length (each u32, little
//! endian), then the LZ4 block. `MARK` is never the first byte of JSON text, so values written
//! before (plain JSON) and small values kept plain read as they are. Both lengths are stored so
//! that a reader of the raw files (the tests' search for leaked credentials) can expand every
//! compressed value it finds without knowing where redb put it.

use std::borrow::Cow;

/// The first byte of a compressed value: a control character, which JSON text never starts
/// with.
pub(super) const MARK: u8 = 0x01;
const HEADER: usize = 1 + 4 + 4;
/// Below this, JSON is kept as it is: LZ4 finds little to share in a short value, and what it
/// saves is smaller than the header.
const SMALLEST: usize = 96;
/// The largest JSON a compressed value may claim, so that a corrupt length fails instead of
/// allocating gigabytes.
const LARGEST: usize = 1 << 31;

/// Appends `json` to `out`, compressed when that is smaller.
pub(super) fn append(json: &[u8], out: &mut Vec<u8>) {
    if json.len() < SMALLEST || json.len() >= LARGEST {
        out.extend_from_slice(json);
        return;
    }
    let start = out.len();
    out.resize(
        start + HEADER + lz4_flex::block::get_maximum_output_size(json.len()),
        0,
    );
    let block = &mut out[start + HEADER..];
    match lz4_flex::block::compress_into(json, block) {
        Ok(written) if HEADER + written < json.len() => {
            out[start] = MARK;
            out[start + 1..start + 5].copy_from_slice(&(json.len() as u32).to_le_bytes());
            out[start + 5..start + 9].copy_from_slice(&(written as u32).to_le_bytes());
            out.truncate(start + HEADER + written);
        }
        _ => {
            out.truncate(start);
            out.extend_from_slice(json);
        }
    }
}

/// `json`, compressed when that is smaller.
pub(super) fn compress(json: Vec<u8>) -> Vec<u8> {
    if json.len() < SMALLEST {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() / 2);
    append(&json, &mut out);
    out
}

/// The JSON a stored value holds: the value itself when it is plain JSON.
pub(super) fn expand(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if bytes.first() != Some(&MARK) {
        return Ok(Cow::Borrowed(bytes));
    }
    let length = |at: usize| -> Result<usize, String> {
        bytes
            .get(at..at + 4)
            .map(|field| u32::from_le_bytes(field.try_into().expect("four bytes")) as usize)
            .ok_or_else(|| "a compressed value cut short".to_owned())
    };
    let (json_len, block_len) = (length(1)?, length(5)?);
    if json_len >= LARGEST {
        return Err(format!("a compressed value claims {json_len} bytes"));
    }
    let block = bytes
        .get(HEADER..HEADER + block_len)
        .filter(|block| block.len() == bytes.len() - HEADER)
        .ok_or_else(|| "a compressed value whose length is wrong".to_owned())?;
    let mut json = vec![0; json_len];
    match lz4_flex::block::decompress_into(block, &mut json) {
        Ok(written) if written == json_len => Ok(Cow::Owned(json)),
        Ok(written) => Err(format!(
            "a compressed value expands to {written} bytes, not {json_len}"
        )),
        Err(error) => Err(format!("a compressed value does not expand: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_as_written_compressed_or_not() {
        let long = br#"{"conversation":"c-1","text":"hello"}"#.repeat(20);
        let compressed = compress(long.clone());
        assert_eq!(compressed[0], MARK);
        assert!(compressed.len() < long.len() / 4, "{}", compressed.len());
        assert_eq!(expand(&compressed).unwrap(), long.as_slice());

        // Short values and values LZ4 cannot shrink stay plain JSON, as do values written
        // before compression.
        let short = br#"{"a":1}"#.to_vec();
        assert_eq!(compress(short.clone()), short);
        // xorshift: bytes with no repeats for LZ4 to find.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let random: Vec<u8> = (0..200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        let mut incompressible = b"\"".to_vec();
        incompressible.extend(random);
        assert_eq!(compress(incompressible.clone()), incompressible);
        assert_eq!(expand(&incompressible).unwrap(), incompressible.as_slice());

        // Appended behind what a buffer already holds (a journal frame's header).
        let mut frame = vec![7; 12];
        append(&long, &mut frame);
        assert_eq!(&frame[..12], &[7; 12]);
        assert_eq!(expand(&frame[12..]).unwrap(), long.as_slice());
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_panic() {
        let compressed = compress(br#"{"conversation":"c-1","text":"hello"}"#.repeat(20));
        for cut in [1, 4, 8, 12, compressed.len() - 1] {
            assert!(expand(&compressed[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = compressed.clone();
        longer.push(0);
        assert!(expand(&longer).is_err());
        let mut claims_more = compressed.clone();
        claims_more[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(expand(&claims_more).is_err());
        let mut claims_less = compressed;
        claims_less[1] = claims_less[1].wrapping_sub(1);
        assert!(expand(&claims_less).is_err());
    }
}
