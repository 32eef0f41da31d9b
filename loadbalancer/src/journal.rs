//! The response log's write-ahead journal: every response's row is appended here *before* the
//! response is sent, and shipped to Postgres from here.
//!
//! - **Layout.** One directory, locked by one process. Segments `<base>.wal` hold JSON lines;
//!   `<base>` is the segment's first byte in one global, ever-growing byte position, so a
//!   position names a row across segments and restarts. A new segment starts past
//!   [`SEGMENT_BYTES`] and at every start (an old segment is never appended to again, so a
//!   torn line after a crash stays where it was). `shipped` holds the shipper's checkpoint.
//! - **Append** ([`Journal::append`]): one `write(2)` of whole lines under a mutex. Once it
//!   returns, the row is in the kernel's page cache: it survives a crash of the process
//!   (SIGKILL, panic, OOM kill). Surviving a crash of the machine is the [`FsyncPolicy`]'s job:
//!   `always` makes the caller wait for an `fdatasync` that covers its row (group commit: one
//!   sync thread, every waiting row shares the next sync), `interval` syncs in the background
//!   every few milliseconds (a power loss loses at most that window), `never` leaves it to the
//!   OS.
//! - **Ship** ([`Reader`]): the single consumer reads complete lines up to the committed
//!   position; after they are stored (idempotently: `ON CONFLICT (request_id, ts) DO NOTHING`) it
//!   [`Journal::release`]s them: the checkpoint moves and fully shipped segments are deleted.
//!   A crash between the insert and the checkpoint ships a few rows twice, which stores nothing
//!   twice.
//! - **Bounded** by `max_bytes` of unshipped data: beyond it an append is refused and the
//!   caller counts the row as dropped (the response still goes out).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Segment size at which the next append starts a new segment.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// The longest row (line) an append accepts; the reader reads lines up to four times this
/// long, so an accepted row can never wedge it. Rows are far smaller: every field the load
/// balancer records is clipped (ids, inputs, reasons; backend bodies are read up to 64 KiB).
pub const MAX_ROW_BYTES: usize = 256 << 10;

/// When journaled rows are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// The response waits until an `fdatasync` covers its row (group commit): nothing is lost
    /// even when the machine loses power; costs about one sync of latency per response.
    Always,
    /// A background `fdatasync` every `fsync_interval_ms`: a process crash loses nothing, a
    /// machine crash at most the last interval.
    Interval,
    /// No explicit sync: a process crash loses nothing, a machine crash what the OS had not
    /// written back.
    Never,
}

impl FsyncPolicy {
    /// The configuration's name for the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process holds the directory.
    #[error("journal directory {0} is in use by another load balancer (one per directory)")]
    Locked(PathBuf),
    /// The unshipped data reached the size limit.
    #[error("journal full ({0} unshipped bytes)")]
    Full(u64),
    /// A row longer than [`MAX_ROW_BYTES`] was refused.
    #[error("row of {0} bytes refused (the limit is {MAX_ROW_BYTES})")]
    RowTooLong(usize),
    /// Disk trouble.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

struct Tail {
    base: u64,
    file: Arc<File>,
    len: u64,
    /// Segments closed since the last sync (synced before the next sync reports progress).
    closed: Vec<Arc<File>>,
}

#[derive(Default)]
struct SyncRequest {
    requested: bool,
    stop: bool,
}

/// An open journal directory.
pub struct Journal {
    dir: PathBuf,
    lock: Mutex<Option<Flock<File>>>,
    tail: Mutex<Tail>,
    /// The segments' bases, oldest first (kept in memory: the reader and `release` need no
    /// directory listing).
    bases: Mutex<Vec<u64>>,
    committed: AtomicU64,
    shipped: AtomicU64,
    pending_rows: AtomicU64,
    max_bytes: u64,
    policy: FsyncPolicy,
    interval: Duration,
    sync_request: Mutex<SyncRequest>,
    sync_wake: Condvar,
    synced_tx: tokio::sync::watch::Sender<u64>,
    synced_rx: tokio::sync::watch::Receiver<u64>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("committed", &self.committed())
            .field("shipped", &self.shipped())
            .finish()
    }
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.wal")
}

/// The segments in `dir`: (base, length), oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let len = entry.metadata().map_err(io(&entry.path()))?.len();
        out.push((base, len));
    }
    out.sort_unstable();
    Ok(out)
}

/// What a journal holds that Postgres does not have yet (see [`backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// The `ts` of the oldest unshipped row.
    pub oldest: chrono::DateTime<chrono::Utc>,
    /// Unshipped bytes.
    pub bytes: u64,
}

/// The unshipped rows of the journal in `dir`, read without its lock (the load balancer that owns
/// it may be running): the oldest row's time and the bytes left. `None` when everything is
/// shipped (or the directory holds no journal). For `lazyrec-provenance prune`, which must not
/// cut history that is still on its way.
pub fn backlog(dir: &Path) -> Result<Option<Backlog>, JournalError> {
    #[derive(Deserialize)]
    struct Stamp {
        ts: chrono::DateTime<chrono::Utc>,
    }
    if !dir.is_dir() {
        return Ok(None);
    }
    let existing = segments(dir)?;
    let (Some(first), Some(last)) = (existing.first(), existing.last()) else { return Ok(None) };
    let committed = last.0 + last.1;
    let checkpoint = std::fs::read_to_string(dir.join("shipped")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let shipped = checkpoint.unwrap_or(first.0).clamp(first.0, committed);
    for &(base, len) in &existing {
        if base + len <= shipped {
            continue;
        }
        let path = dir.join(segment_name(base));
        let file = File::open(&path).map_err(io(&path))?;
        let mut buf = vec![0u8; READ_BYTES.min(len as usize)];
        let from = shipped.saturating_sub(base);
        let n = file.read_at(&mut buf, from).map_err(io(&path))?;
        // The first row that decodes (a torn line is skipped as the shipper skips it).
        for line in buf[..n].split(|b| *b == b'\n') {
            if let Ok(stamp) = serde_json::from_slice::<Stamp>(line) {
                return Ok(Some(Backlog { oldest: stamp.ts, bytes: committed - shipped }));
            }
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Journal {
    /// Opens (creating) and locks `dir`, finds what earlier runs left unshipped, starts a new
    /// segment and, unless the policy is `never`, the sync thread.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        policy: FsyncPolicy,
        interval: Duration,
    ) -> Result<Arc<Journal>, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock_file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| JournalError::Locked(dir.into()))?;
        let existing = segments(dir)?;
        let first = existing.first().map_or(0, |s| s.0);
        let committed = existing.last().map_or(0, |s| s.0 + s.1);
        let checkpoint = std::fs::read_to_string(dir.join("shipped")).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let shipped = checkpoint.unwrap_or(first).clamp(first, committed);
        // Rows left by earlier runs: complete lines, plus one for each torn tail.
        let mut pending_rows = 0;
        for &(base, len) in &existing {
            let end = base + len;
            if end <= shipped || len == 0 {
                continue;
            }
            let path = dir.join(segment_name(base));
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let from = shipped.saturating_sub(base) as usize;
            let part = &bytes[from.min(bytes.len())..];
            pending_rows += part.iter().filter(|&&b| b == b'\n').count() as u64;
            if part.last().is_some_and(|&b| b != b'\n') {
                pending_rows += 1;
            }
        }
        let path = dir.join(segment_name(committed));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        sync_dir(dir)?;
        let mut bases: Vec<u64> = existing.iter().map(|s| s.0).collect();
        if bases.last() != Some(&committed) {
            bases.push(committed);
        }
        let (synced_tx, synced_rx) = tokio::sync::watch::channel(committed);
        let journal = Arc::new(Journal {
            dir: dir.to_path_buf(),
            lock: Mutex::new(Some(lock)),
            tail: Mutex::new(Tail { base: committed, file: Arc::new(file), len: 0, closed: Vec::new() }),
            bases: Mutex::new(bases),
            committed: AtomicU64::new(committed),
            shipped: AtomicU64::new(shipped),
            pending_rows: AtomicU64::new(pending_rows),
            max_bytes,
            policy,
            interval,
            sync_request: Mutex::new(SyncRequest::default()),
            sync_wake: Condvar::new(),
            synced_tx,
            synced_rx,
            syncer: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        if policy != FsyncPolicy::Never {
            let me = journal.clone();
            let handle = std::thread::Builder::new()
                .name("journal-sync".into())
                .spawn(move || me.sync_loop())
                .map_err(io(dir))?;
            *journal.syncer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        Ok(journal)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segments' bases, oldest first.
    fn segment_bases(&self) -> Vec<u64> {
        self.bases.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The position after the last complete append.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// The position up to which rows are stored in Postgres.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Acquire)
    }

    /// Bytes journaled and not yet shipped.
    pub fn pending_bytes(&self) -> u64 {
        self.committed().saturating_sub(self.shipped())
    }

    /// Rows journaled and not yet shipped.
    pub fn pending_rows(&self) -> u64 {
        self.pending_rows.load(Ordering::Relaxed)
    }

    /// The fsync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Appends whole lines (`rows` of them) with one write; returns the position after them.
    /// The bytes survive a crash of this process as soon as this returns.
    pub fn append(&self, lines: &[u8], rows: u64) -> Result<u64, JournalError> {
        debug_assert!(lines.last() == Some(&b'\n'));
        if let Some(len) = lines.split(|b| *b == b'\n').map(<[u8]>::len).find(|&len| len > MAX_ROW_BYTES) {
            return Err(JournalError::RowTooLong(len));
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let end = tail.base + tail.len;
        let n = lines.len() as u64;
        let pending = end.saturating_sub(self.shipped());
        if pending + n > self.max_bytes {
            return Err(JournalError::Full(pending));
        }
        if tail.len >= SEGMENT_BYTES {
            let path = self.dir.join(segment_name(end));
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            sync_dir(&self.dir)?;
            let old = std::mem::replace(&mut tail.file, Arc::new(file));
            if self.policy != FsyncPolicy::Never {
                tail.closed.push(old);
            }
            tail.base = end;
            tail.len = 0;
            self.bases.lock().unwrap_or_else(|p| p.into_inner()).push(end);
        }
        if let Err(e) = (&*tail.file).write_all(lines) {
            // Cut a partial write off again, so the segment holds whole lines only.
            let _cut = tail.file.set_len(tail.len);
            return Err(io(&self.dir.join(segment_name(tail.base)))(e));
        }
        tail.len += n;
        self.pending_rows.fetch_add(rows, Ordering::Relaxed);
        self.committed.store(end + n, Ordering::Release);
        Ok(end + n)
    }

    /// Under [`FsyncPolicy::Always`], waits until a sync covers `position` (group commit);
    /// otherwise returns at once.
    pub async fn durable(&self, position: u64) {
        if self.policy != FsyncPolicy::Always {
            return;
        }
        let mut rx = self.synced_rx.clone();
        if *rx.borrow_and_update() >= position {
            return;
        }
        self.request_sync();
        while *rx.borrow_and_update() < position {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn request_sync(&self) {
        let mut r = self.sync_request.lock().unwrap_or_else(|p| p.into_inner());
        if !r.requested {
            r.requested = true;
            self.sync_wake.notify_one();
        }
    }

    /// Syncs everything appended so far (the caller's thread; used at shutdown and by tests).
    pub fn sync_now(&self) -> Result<u64, JournalError> {
        let (files, target) = {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            let mut files = std::mem::take(&mut tail.closed);
            files.push(tail.file.clone());
            (files, tail.base + tail.len)
        };
        for f in files {
            f.sync_data().map_err(io(&self.dir))?;
        }
        self.synced_tx.send_if_modified(|s| {
            let moved = target > *s;
            *s = (*s).max(target);
            moved
        });
        Ok(target)
    }

    fn sync_loop(&self) {
        loop {
            let stop = {
                let mut r = self.sync_request.lock().unwrap_or_else(|p| p.into_inner());
                match self.policy {
                    FsyncPolicy::Always => {
                        while !r.requested && !r.stop {
                            r = self.sync_wake.wait(r).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    FsyncPolicy::Interval | FsyncPolicy::Never => {
                        if !r.stop {
                            r = self.sync_wake.wait_timeout(r, self.interval).unwrap_or_else(|p| p.into_inner()).0;
                        }
                    }
                }
                r.requested = false;
                r.stop
            };
            if self.committed() > *self.synced_rx.borrow()
                && let Err(e) = self.sync_now()
            {
                tracing::error!(error = %e, "journal sync failed");
            }
            if stop {
                return;
            }
        }
    }

    /// Marks everything before `position` as stored in Postgres: saves the checkpoint and deletes
    /// fully shipped segments. `rows` is how many lines (stored or skipped) that covered.
    pub fn release(&self, position: u64, rows: u64) -> Result<(), JournalError> {
        let before = self.shipped.fetch_max(position, Ordering::AcqRel);
        if position <= before {
            return Ok(());
        }
        let _rows =
            self.pending_rows.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(rows)));
        let tmp = self.dir.join("shipped.tmp");
        std::fs::write(&tmp, position.to_string()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.dir.join("shipped")).map_err(io(&self.dir))?;
        let tail_base = self.tail.lock().unwrap_or_else(|p| p.into_inner()).base;
        let shipped: Vec<u64> = {
            let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
            let n = bases.windows(2).take_while(|w| w[1] <= position && w[0] < tail_base).count();
            bases.drain(..n).collect()
        };
        for base in shipped {
            let path = self.dir.join(segment_name(base));
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Stops the sync thread after a last sync (idempotent).
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut r = self.sync_request.lock().unwrap_or_else(|p| p.into_inner());
            r.stop = true;
            self.sync_wake.notify_one();
        }
        if let Some(handle) = self.syncer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _joined = handle.join();
        }
        if let Err(e) = self.sync_now() {
            tracing::error!(error = %e, "journal: last sync failed");
        }
        // Unlocked now, not when the last handle drops: a successor may open the directory.
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// What one read returned.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Complete lines, without their newline.
    pub lines: Vec<Vec<u8>>,
    /// Torn lines skipped (a segment ending without a newline: a machine crash mid-append),
    /// and lines longer than the reader reads (never appended by this version: corruption).
    pub torn: u64,
    /// The position after the last line read (or skipped).
    pub end: u64,
}

/// The single consumer of a journal: reads complete lines from the shipped position on.
#[derive(Debug)]
pub struct Reader {
    position: u64,
    open: Option<(u64, File)>,
    /// Reused between reads (a fresh zeroed buffer per read showed up in profiles).
    buf: Vec<u8>,
    /// Inside a line longer than [`READ_BYTES`]: its bytes are skipped up to its newline.
    skipping: bool,
}

/// Bytes read from a segment at a time: the longest line the reader takes whole.
const READ_BYTES: usize = 4 * MAX_ROW_BYTES;
/// Bytes read per expected row: a batch is read in one go, not a whole segment.
const BYTES_PER_ROW: usize = 1 << 10;

impl Reader {
    /// A reader at the journal's shipped position.
    pub fn new(journal: &Journal) -> Self {
        Self { position: journal.shipped(), open: None, buf: Vec::new(), skipping: false }
    }

    /// The next position to read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Goes back to `position` (after a failed insert, to read the same rows again).
    pub fn rewind(&mut self, position: u64) {
        self.position = position;
    }

    /// Reads up to `max_rows` complete lines committed so far. On an error the position is
    /// where it was before the call: the next read tries the same lines again.
    pub fn read(&mut self, journal: &Journal, max_rows: usize) -> Result<Chunk, JournalError> {
        let (position, skipping) = (self.position, self.skipping);
        let read = self.read_lines(journal, max_rows);
        if read.is_err() {
            (self.position, self.skipping) = (position, skipping);
            self.open = None;
        }
        read
    }

    fn read_lines(&mut self, journal: &Journal, max_rows: usize) -> Result<Chunk, JournalError> {
        let committed = journal.committed();
        let mut chunk = Chunk { end: self.position, ..Chunk::default() };
        if self.position >= committed {
            return Ok(chunk);
        }
        let all = journal.segment_bases();
        while chunk.lines.len() < max_rows && self.position < committed {
            // The segment holding the position (or the oldest one, when the position lies in
            // segments already deleted), and where its readable bytes end.
            let i = match all.iter().rposition(|&b| b <= self.position) {
                Some(i) => i,
                None => match all.first() {
                    Some(&b) => {
                        self.position = b;
                        continue;
                    }
                    None => break,
                },
            };
            let (base, next) = (all[i], all.get(i + 1).copied());
            let limit = next.unwrap_or(committed).min(committed);
            if self.position >= limit {
                break;
            }
            if self.open.as_ref().is_none_or(|(b, _)| *b != base) {
                let path = journal.dir.join(segment_name(base));
                let file = File::open(&path).map_err(io(&path))?;
                self.open = Some((base, file));
            }
            let Some((_, file)) = self.open.as_ref() else { break };
            let remaining = limit - self.position;
            let rows_left = max_rows - chunk.lines.len();
            let want = (remaining as usize)
                .min(READ_BYTES)
                .min(self.buf.len().max(rows_left.saturating_mul(BYTES_PER_ROW)).max(64 << 10));
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let buf = &mut self.buf;
            let mut got = 0;
            while got < want {
                let n = file
                    .read_at(&mut buf[got..want], self.position - base + got as u64)
                    .map_err(io(&journal.dir.join(segment_name(base))))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let mut start = 0;
            if self.skipping {
                // The rest of a line too long to read: dropped up to its newline.
                match buf[..got].iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        start = nl + 1;
                        self.skipping = false;
                    }
                    None if got == 0 => break,
                    None => {
                        self.position += got as u64;
                        continue;
                    }
                }
            }
            while chunk.lines.len() < max_rows {
                let Some(nl) = buf[start..got].iter().position(|&b| b == b'\n') else { break };
                chunk.lines.push(buf[start..start + nl].to_vec());
                start += nl + 1;
            }
            self.position += start as u64;
            if start == 0 {
                if want < remaining.min(READ_BYTES as u64) as usize {
                    // A line longer than this read: read more (up to READ_BYTES).
                    self.buf.resize(READ_BYTES.min(want * 2), 0);
                    continue;
                }
                if next.is_some() && want as u64 == remaining {
                    // Nothing but a line without its newline up to the segment's end: a torn
                    // tail (a crash mid-append). Skip it; the next segment goes on.
                    chunk.torn += 1;
                    self.position = limit;
                    continue;
                }
                if got == READ_BYTES {
                    // A line longer than any row the journal accepts (written by something
                    // else, or corrupt): skipped to its end and counted, never a wedge.
                    tracing::error!(position = self.position, "journal: a line over {READ_BYTES} bytes skipped");
                    chunk.torn += 1;
                    self.position += got as u64;
                    self.skipping = true;
                    continue;
                }
                let path = journal.dir.join(segment_name(base));
                return Err(io(&path)(std::io::Error::other(format!(
                    "no line end within {got} bytes at position {}",
                    self.position
                ))));
            }
        }
        chunk.end = self.position;
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u32) -> Vec<u8> {
        format!("{{\"row\":{i}}}\n").into_bytes()
    }

    fn read_all(journal: &Journal, reader: &mut Reader) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        let mut torn = 0;
        loop {
            let chunk = reader.read(journal, 7).expect("read");
            torn += chunk.torn;
            if chunk.lines.is_empty() && chunk.torn == 0 {
                return (out, torn);
            }
            let n = chunk.lines.len() as u64 + chunk.torn;
            out.extend(chunk.lines.into_iter().map(|l| String::from_utf8(l).expect("utf8")));
            journal.release(chunk.end, n).expect("release");
        }
    }

    #[test]
    fn appended_rows_survive_a_crash_and_are_shipped_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path(), 1 << 20, FsyncPolicy::Never, Duration::from_millis(10)).expect("open");
        assert!(matches!(
            Journal::open(dir.path(), 1 << 20, FsyncPolicy::Never, Duration::from_millis(10)),
            Err(JournalError::Locked(_))
        ));
        for i in 0..10 {
            journal.append(&line(i), 1).expect("append");
        }
        let mut reader = Reader::new(&journal);
        let first = reader.read(&journal, 4).expect("read");
        assert_eq!(first.lines.len(), 4);
        journal.release(first.end, 4).expect("release");
        assert_eq!(journal.pending_rows(), 6);
        // "Crash": drop without closing; a torn line at the end of the segment.
        let tail = dir.path().join(segment_name(0));
        drop(reader);
        drop(journal);
        OpenOptions::new().append(true).open(&tail).and_then(|mut f| f.write_all(b"{\"ro")).expect("tear");

        let journal =
            Journal::open(dir.path(), 1 << 20, FsyncPolicy::Never, Duration::from_millis(10)).expect("reopen");
        assert_eq!(journal.pending_rows(), 7, "6 complete rows and a torn one");
        journal.append(&line(10), 1).expect("append after reopen");
        let mut reader = Reader::new(&journal);
        let (rows, torn) = read_all(&journal, &mut reader);
        assert_eq!(torn, 1);
        let expected: Vec<String> = (4..=10).map(|i| format!("{{\"row\":{i}}}")).collect();
        assert_eq!(rows, expected, "rows 0-3 were shipped before the crash; nothing twice, nothing lost");
        assert_eq!((journal.pending_rows(), journal.pending_bytes()), (0, 0));
        assert_eq!(segments(dir.path()).expect("list").len(), 1, "shipped segments are deleted");
    }

    #[test]
    fn segments_roll_over_the_limit_is_enforced_and_always_waits_for_a_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal =
            Journal::open(dir.path(), 40 << 20, FsyncPolicy::Always, Duration::from_millis(10)).expect("open");
        let big = {
            let mut v = vec![b'x'; MAX_ROW_BYTES];
            v.push(b'\n');
            v
        };
        for _ in 0..40 {
            journal.append(&big, 1).expect("append");
        }
        assert!(segments(dir.path()).expect("list").len() >= 2, "rolled over at {SEGMENT_BYTES} bytes");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let position = journal.committed();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), journal.durable(position)).await.expect("synced")
        });
        assert!(*journal.synced_rx.borrow() >= position);
        let mut reader = Reader::new(&journal);
        let mut rows = 0;
        loop {
            let chunk = reader.read(&journal, 3).expect("read");
            if chunk.lines.is_empty() {
                break;
            }
            assert!(chunk.lines.iter().all(|l| l.len() == MAX_ROW_BYTES));
            rows += chunk.lines.len();
            journal.release(chunk.end, chunk.lines.len() as u64).expect("release");
        }
        assert_eq!(rows, 40);
        let full_dir = tempfile::tempdir().expect("dir");
        let full = Journal::open(full_dir.path(), big.len() as u64, FsyncPolicy::Never, Duration::ZERO).expect("open");
        assert!(full.append(&big, 1).is_ok());
        assert!(matches!(full.append(&big, 1), Err(JournalError::Full(_))), "bounded by unshipped bytes");
        journal.close();
        full.close();
    }

    #[test]
    fn an_oversized_row_is_refused_and_the_rows_around_it_are_shipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path(), 64 << 20, FsyncPolicy::Never, Duration::ZERO).expect("open");
        journal.append(&line(1), 1).expect("append");
        let mut huge = vec![b'x'; MAX_ROW_BYTES + 1];
        huge.push(b'\n');
        assert!(matches!(journal.append(&huge, 1), Err(JournalError::RowTooLong(n)) if n == MAX_ROW_BYTES + 1));
        journal.append(&line(2), 1).expect("append after a refusal");
        let (rows, torn) = read_all(&journal, &mut Reader::new(&journal));
        assert_eq!((rows, torn), (vec!["{\"row\":1}".to_string(), "{\"row\":2}".to_string()], 0));
        journal.close();
    }

    /// A line longer than the reader reads (left by another version, or corruption) is skipped
    /// and counted; the rows after it are shipped: the shipper never wedges on it.
    #[test]
    fn a_line_longer_than_the_reader_reads_is_skipped_not_a_wedge() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut segment = File::create(dir.path().join(segment_name(0))).expect("segment");
            segment.write_all(&line(1)).expect("write");
            segment.write_all(&vec![b'y'; 3 * READ_BYTES + 17]).expect("write");
            segment.write_all(b"\n").expect("write");
            segment.write_all(&line(2)).expect("write");
        }
        let journal = Journal::open(dir.path(), 64 << 20, FsyncPolicy::Never, Duration::ZERO).expect("open");
        journal.append(&line(3), 1).expect("append");
        let (rows, torn) = read_all(&journal, &mut Reader::new(&journal));
        let expected: Vec<String> = (1..=3).map(|i| format!("{{\"row\":{i}}}")).collect();
        assert_eq!(rows, expected);
        assert_eq!(torn, 1, "the long line counted");
        assert_eq!(journal.pending_bytes(), 0);
        journal.close();
    }

    /// A read that fails half-way leaves the position where it was: the rows it had read are
    /// read again, never skipped.
    #[test]
    fn a_failed_read_leaves_the_position_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path(), 64 << 20, FsyncPolicy::Never, Duration::ZERO).expect("open");
        let mut row = vec![b'z'; MAX_ROW_BYTES];
        row.push(b'\n');
        for _ in 0..40 {
            journal.append(&row, 1).expect("append");
        }
        let bases = journal.segment_bases();
        assert!(bases.len() >= 2, "two segments");
        let second = dir.path().join(segment_name(bases[1]));
        let hidden = dir.path().join("hidden");
        std::fs::rename(&second, &hidden).expect("hide the second segment");
        let mut reader = Reader::new(&journal);
        assert!(reader.read(&journal, 1000).is_err(), "the second segment is missing");
        assert_eq!(reader.position(), 0, "the rows of the first segment are not skipped");
        std::fs::rename(&hidden, &second).expect("restore");
        let chunk = reader.read(&journal, 1000).expect("read");
        assert_eq!(chunk.lines.len(), 40);
        journal.close();
    }

    #[test]
    fn the_backlog_names_the_oldest_unshipped_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(backlog(dir.path()).expect("empty"), None);
        let journal = Journal::open(dir.path(), 1 << 20, FsyncPolicy::Never, Duration::ZERO).expect("open");
        for hour in 1..=3 {
            journal.append(format!("{{\"ts\":\"2026-12-05T0{hour}:00:00Z\"}}\n").as_bytes(), 1).expect("append");
        }
        let mut reader = Reader::new(&journal);
        let first = reader.read(&journal, 1).expect("read");
        journal.release(first.end, 1).expect("ship one");
        let b = backlog(dir.path()).expect("read").expect("two unshipped");
        assert_eq!(b.oldest.to_rfc3339(), "2026-12-05T02:00:00+00:00");
        let rest = reader.read(&journal, 10).expect("read");
        journal.release(rest.end, 2).expect("ship the rest");
        assert_eq!(backlog(dir.path()).expect("read"), None);
        journal.close();
    }
}
