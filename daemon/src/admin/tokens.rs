//! Unguessable one-off names for the admin API (page cursors, stream tickets): SHA-256 of a
//! per-process key read from the operating system's random source and a counter. No random
//! number crate for this one use.

use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

pub(super) struct TokenSource {
    key: [u8; 32],
    counter: AtomicU64,
}

impl TokenSource {
    pub(super) fn new() -> Self {
        let mut key = [0_u8; 32];
        // Linux always has it; were it missing, a key from the hasher's own random seed and
        // the clock is still unknown to clients.
        let read =
            std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut key));
        if read.is_err() {
            use std::hash::{BuildHasher as _, Hasher as _};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            key[..8].copy_from_slice(&hasher.finish().to_le_bytes());
        }
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh token: 32 hex digits.
    pub(super) fn next(&self) -> String {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update(count.to_le_bytes())
            .finalize();
        digest[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}
