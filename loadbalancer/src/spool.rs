//! The durable spool: response-log rows that Postgres could not take, on local disk until it can.
//!
//! Segments are JSON-lines files (`<seq>.jsonl`) in one directory; an append writes whole lines
//! and `fsync`s before it returns, so a row the writer counted as spooled survives a crash. The
//! spool is bounded (`max_bytes`): beyond it rows are refused and the caller counts them as
//! dropped. Draining reads the oldest segment, hands its rows to the caller, and deletes it
//! only after the caller has stored them (inserts are idempotent, so a crash between the two
//! repeats a segment without duplicating rows). A torn last line (a crash mid-append) is skipped
//! and counted. One process per directory: it is locked while open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Segment size at which a new segment starts.
const SEGMENT_BYTES: u64 = 8 << 20;

/// A spool failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the directory.
    #[error("spool directory {0} is in use by another load balancer (one per directory)")]
    Locked(PathBuf),
    /// The size limit is reached.
    #[error("spool full ({0} bytes)")]
    Full(u64),
    /// Disk trouble.
    #[error("spool {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// An open spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    _lock: Flock<File>,
    max_bytes: u64,
    bytes: u64,
    next_seq: u64,
    current: Option<(u64, File, u64)>,
}

/// The rows of one segment, to be acknowledged once stored.
#[derive(Debug)]
pub struct Segment<T> {
    seq: u64,
    /// The rows that parsed.
    pub rows: Vec<T>,
    /// Lines that did not parse (a torn write).
    pub corrupt: u64,
    bytes: u64,
}

fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, SpoolError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let len = entry.metadata().map_err(io(&entry.path()))?.len();
        out.push((seq, len));
    }
    out.sort_unstable();
    Ok(out)
}

impl Spool {
    /// Opens (creating) and locks `dir`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock_file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;
        let existing = segments(dir)?;
        let bytes = existing.iter().map(|s| s.1).sum();
        let next_seq = existing.last().map_or(1, |s| s.0 + 1);
        Ok(Self { dir: dir.to_path_buf(), _lock: lock, max_bytes, bytes, next_seq, current: None })
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:012}.jsonl"))
    }

    /// Appends `rows` durably (all or nothing with respect to the size limit).
    pub fn append<T: Serialize>(&mut self, rows: &[T]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(rows.len() * 400);
        for row in rows {
            serde_json::to_writer(&mut buf, row)
                .map_err(|e| SpoolError::Io { path: self.dir.clone(), source: e.into() })?;
            buf.push(b'\n');
        }
        let len = buf.len() as u64;
        if self.bytes + len > self.max_bytes {
            return Err(SpoolError::Full(self.bytes));
        }
        if self.current.as_ref().is_none_or(|c| c.2 >= SEGMENT_BYTES) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let path = self.path(seq);
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            // The new name must survive a crash too.
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
            self.current = Some((seq, file, 0));
        }
        let Some((seq, file, size)) = self.current.as_mut() else {
            return Err(SpoolError::Io { path: self.dir.clone(), source: std::io::Error::other("no open segment") });
        };
        let path = self.dir.join(format!("{seq:012}.jsonl"));
        file.write_all(&buf).and_then(|()| file.sync_data()).map_err(io(&path))?;
        *size += len;
        self.bytes += len;
        Ok(())
    }

    /// The oldest segment's rows, or None when the spool is empty. The segment being appended to
    /// is closed first, so new appends go to a new one.
    pub fn oldest<T: DeserializeOwned>(&mut self) -> Result<Option<Segment<T>>, SpoolError> {
        let Some(&(seq, bytes)) = segments(&self.dir)?.first() else { return Ok(None) };
        if self.current.as_ref().is_some_and(|c| c.0 == seq) {
            self.current = None;
        }
        let path = self.path(seq);
        let reader = BufReader::new(File::open(&path).map_err(io(&path))?);
        let mut rows = Vec::new();
        let mut corrupt = 0;
        for line in reader.split(b'\n') {
            let line = line.map_err(io(&path))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice(&line) {
                Ok(row) => rows.push(row),
                Err(_) => corrupt += 1,
            }
        }
        Ok(Some(Segment { seq, rows, corrupt, bytes }))
    }

    /// Deletes a segment whose rows are stored.
    pub fn ack<T>(&mut self, segment: Segment<T>) -> Result<(), SpoolError> {
        let path = self.path(segment.seq);
        std::fs::remove_file(&path).map_err(io(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        self.bytes = self.bytes.saturating_sub(segment.bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopen_are_bounded_and_torn_lines_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        assert!(matches!(Spool::open(dir.path(), 1 << 20), Err(SpoolError::Locked(_))), "one process per dir");
        spool.append(&[1u32, 2, 3]).expect("append");
        spool.append(&[4u32]).expect("append");
        drop(spool);
        // A crash mid-append leaves a torn line.
        let seg = dir.path().join(format!("{:012}.jsonl", 1));
        OpenOptions::new().append(true).open(&seg).and_then(|mut f| f.write_all(b"{\"tor")).expect("tear");

        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert!(!spool.is_empty());
        spool.append(&[5u32]).expect("append after reopen goes to a new segment");
        let first: Segment<u32> = spool.oldest().expect("read").expect("a segment");
        assert_eq!((first.rows.clone(), first.corrupt), (vec![1, 2, 3, 4], 1));
        // Not acknowledged → read again.
        let again: Segment<u32> = spool.oldest().expect("read").expect("a segment");
        assert_eq!(again.rows.len(), 4);
        spool.ack(again).expect("ack");
        let second: Segment<u32> = spool.oldest().expect("read").expect("a segment");
        assert_eq!(second.rows, vec![5]);
        spool.ack(second).expect("ack");
        assert!(spool.oldest::<u32>().expect("read").is_none());
        assert!(spool.is_empty());

        let big = vec![u64::MAX; 60_000];
        assert!(matches!(spool.append(&big), Err(SpoolError::Full(_))), "bounded");
    }
}
