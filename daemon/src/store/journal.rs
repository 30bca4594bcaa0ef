//! Store step, fast path: each group commit is one checksummed frame appended to a journal
//! segment file and one `fdatasync`, all a commit must wait for before the transport
//! acknowledges. The embedded store (`embedded`) folds the frames into its redb tables later,
//! in large batches, and deletes a segment once redb holds all of it durably; on start it
//! replays the segments left behind.
//!
//! Why: a durable redb commit costs ~0.5–0.65 ms of CPU whatever its size (page flush,
//! freed-page bookkeeping, checksums), measured at ~40 % of the daemon's CPU at moderate
//! rates, where batches hold 4–6 messages. An append and an `fdatasync` cost a fraction of it.
//!
//! A segment is `journal-<n>.log`, `n` increasing. A frame is the payload's length (u32, little
//! endian), its XXH3-64 (u64, little endian), then the payload (the commit's JSON, compressed
//! as `compact` says). A crash can leave the newest segment with a torn last frame: nothing
//! after it was acknowledged, so replay stops there. A bad frame anywhere else is corruption
//! and is reported.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::StoreError;

const PREFIX: &str = "journal-";
const SUFFIX: &str = ".log";
const HEADER: usize = 4 + 8;

/// The segment being appended to.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    segment: u64,
    /// Bytes of whole frames in the file.
    len: u64,
    /// An append failed: what follows in the file is unknown, so no frame may follow it.
    broken: bool,
}

impl Journal {
    /// Creates segment `segment` in `dir`, its name made durable (a directory `fsync`) before
    /// any frame in it is acknowledged.
    pub(super) fn create(dir: &Path, segment: u64) -> Result<Self, StoreError> {
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, segment))
            .map_err(|error| write_error(format!("creating journal segment {segment}"), error))?;
        sync_dir(dir)?;
        Ok(Self {
            file,
            segment,
            len: 0,
            broken: false,
        })
    }

    pub(super) fn segment(&self) -> u64 {
        self.segment
    }

    /// Whether no frame was appended yet.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one frame and waits until it is on disk.
    pub(super) fn append(&mut self, frame: &Frame) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::Write(
                "an earlier journal write failed; restart to recover from the store".to_owned(),
            ));
        }
        let frame = &frame.0;
        // After a failed write or sync the file's state is unknown (and a failed fsync cannot
        // be retried safely): this segment takes no more frames. What a failed write left is
        // cut off if possible, so that the segment ends with a whole frame even once a newer
        // one follows it (replay accepts a torn frame only at the end of the newest).
        let written = self
            .file
            .write_all(frame)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.broken = true;
            let _ = self.file.set_len(self.len);
            return Err(write_error(
                format!("appending to journal segment {}", self.segment),
                error,
            ));
        }
        self.len += frame.len() as u64;
        Ok(())
    }
}

/// One frame, header included, built before the journal is locked.
#[derive(Debug)]
pub(super) struct Frame(Vec<u8>);

impl Frame {
    /// `value` as JSON, compressed (`compact`) behind room for the header.
    pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<Self, StoreError> {
        let json =
            serde_json::to_vec(value).map_err(|error| StoreError::Write(error.to_string()))?;
        let mut bytes = Vec::with_capacity(HEADER + json.len() / 2);
        bytes.resize(HEADER, 0);
        super::compact::append(&json, &mut bytes);
        Self::seal(bytes)
    }

    #[cfg(test)]
    fn of_payload(payload: &[u8]) -> Self {
        let mut bytes = vec![0; HEADER];
        bytes.extend_from_slice(payload);
        Self::seal(bytes).unwrap()
    }

    /// Fills in the header of `bytes`, a header's room followed by the payload.
    fn seal(mut bytes: Vec<u8>) -> Result<Self, StoreError> {
        let len = u32::try_from(bytes.len() - HEADER)
            .map_err(|_| StoreError::Write("a commit of more than 4 GiB".to_owned()))?;
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[HEADER..]);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..HEADER].copy_from_slice(&checksum.to_le_bytes());
        Ok(Self(bytes))
    }
}

/// The segments in `dir`, oldest first.
pub(super) fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|error| StoreError::Read(error.to_string()))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| StoreError::Read(error.to_string()))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .and_then(|number| number.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(number);
    }
    segments.sort_unstable();
    Ok(segments)
}

/// The payloads of a segment's frames, in order. `newest` is whether it is the last segment,
/// the only one a crash can leave with a torn last frame.
pub(super) fn read_segment(
    dir: &Path,
    segment: u64,
    newest: bool,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let bytes = std::fs::read(segment_path(dir, segment))
        .map_err(|error| StoreError::Read(format!("journal segment {segment}: {error}")))?;
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        match split_frame(rest) {
            Some((payload, after)) => {
                frames.push(payload.to_vec());
                rest = after;
            }
            None if newest => {
                tracing::warn!(
                    segment,
                    bytes = rest.len(),
                    "the journal ends with a torn frame (a crash while committing); it was never acknowledged and is ignored"
                );
                break;
            }
            None => {
                return Err(StoreError::Corrupt {
                    what: format!("journal segment {segment}"),
                    reason: format!(
                        "a bad frame {} bytes into the file",
                        bytes.len() - rest.len()
                    ),
                });
            }
        }
    }
    Ok(frames)
}

/// Deletes segment `segment` (its frames are durable elsewhere).
pub(super) fn remove_segment(dir: &Path, segment: u64) -> Result<(), StoreError> {
    match std::fs::remove_file(segment_path(dir, segment)) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(write_error(
            format!("removing journal segment {segment}"),
            error,
        )),
    }
}

/// One whole frame at the start of `bytes` and what follows it, or `None` when the start is
/// not a whole, intact frame.
fn split_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let checksum = u64::from_le_bytes(bytes.get(4..HEADER)?.try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    (xxhash_rust::xxh3::xxh3_64(payload) == checksum).then(|| (payload, &bytes[HEADER + len..]))
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{segment:020}{SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| write_error("syncing the store directory".to_owned(), error))
}

fn write_error(what: String, error: std::io::Error) -> StoreError {
    StoreError::Write(format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    fn append(journal: &mut Journal, payload: &[u8]) {
        journal.append(&Frame::of_payload(payload)).unwrap();
    }

    #[test]
    fn frames_come_back_in_order_across_segments() {
        let dir = temp_dir("journal-order");
        let mut first = Journal::create(&dir, 3).unwrap();
        append(&mut first, b"one");
        append(&mut first, b"");
        let mut second = Journal::create(&dir, 4).unwrap();
        append(&mut second, b"two");
        assert_eq!(segments(&dir).unwrap(), vec![3, 4]);
        assert_eq!(
            read_segment(&dir, 3, false).unwrap(),
            vec![b"one".to_vec(), Vec::new()]
        );
        assert_eq!(read_segment(&dir, 4, true).unwrap(), vec![b"two".to_vec()]);
        remove_segment(&dir, 3).unwrap();
        remove_segment(&dir, 3).unwrap();
        assert_eq!(segments(&dir).unwrap(), vec![4]);
        assert!(
            Journal::create(&dir, 4).is_err(),
            "a segment is never reused"
        );
    }

    #[test]
    fn a_torn_tail_ends_the_newest_segment_and_is_corruption_in_an_older_one() {
        let dir = temp_dir("journal-torn");
        let mut journal = Journal::create(&dir, 0).unwrap();
        append(&mut journal, b"whole");
        append(&mut journal, b"torn frame");
        let path = segment_path(&dir, 0);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [1, 5, HEADER + 3] {
            std::fs::write(&path, &bytes[..bytes.len() - cut]).unwrap();
            assert_eq!(
                read_segment(&dir, 0, true).unwrap(),
                vec![b"whole".to_vec()]
            );
            assert!(matches!(
                read_segment(&dir, 0, false),
                Err(StoreError::Corrupt { .. })
            ));
        }
        // A flipped bit in a payload fails its checksum.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(
            read_segment(&dir, 0, true).unwrap(),
            vec![b"whole".to_vec()]
        );
    }
}
