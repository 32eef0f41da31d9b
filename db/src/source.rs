//! Where log lines come from: the [`LineSource`] trait and its file and stream implementations.
//!
//! A source has a stable name and one position per *lane*, each lane a row of `ingest_sources`
//! (files and streams have one lane, named after the source, whose position is a byte offset; a
//! Kafka topic has a lane per partition, `kafka:<topic>/<p>`, whose position is the partition's
//! next offset). The ingester commits every lane's position with the events, so resuming means
//! "seek each lane to its committed position and go on".

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How many leading bytes identify a file's content.
pub const FINGERPRINT_BYTES: u64 = 4096;

/// What kind of input a source is (stored in `ingest_sources.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file, identified by its path and its first bytes.
    File,
    /// An unseekable stream (stdin, generated lines), identified by a name.
    Stream,
    /// A Kafka topic; a lane per partition, whose position is the partition's next offset.
    Kafka,
}

impl SourceKind {
    /// The value stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Stream => "stream",
            SourceKind::Kafka => "kafka",
        }
    }
}

/// The result of asking a source for its next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A complete line is in the buffer (terminator removed); `end` is its lane's position after it.
    Line {
        /// The lane the line came from (an index into [`LineSource::lanes`]).
        lane: usize,
        /// Position after the line and its terminator.
        end: u64,
    },
    /// A line longer than the limit was read past: the buffer holds its first `limit` bytes
    /// (the rest was discarded, never kept in memory), `len` is its full length.
    TooLong {
        /// The lane the line came from.
        lane: usize,
        /// Position after the line and its terminator.
        end: u64,
        /// The line's length in bytes.
        len: u64,
    },
    /// Nothing new for a while (follow mode): a good moment to commit a partial batch.
    Idle,
    /// The source is exhausted.
    Eof,
}

/// A resumable producer of log lines.
pub trait LineSource: Send {
    /// The stable name the position is stored under.
    fn name(&self) -> &str;
    /// File or stream.
    fn kind(&self) -> SourceKind;
    /// Total size when known (for progress bars).
    fn len_hint(&self) -> Option<u64>;
    /// Hash and length of the first bytes, when the source can be re-read from the start.
    fn fingerprint(&mut self, len: u64) -> io::Result<Option<String>>;
    /// The names the lanes' positions are stored under, in lane order: one lane named after the
    /// source unless the source has several (a Kafka topic's partitions).
    fn lanes(&self) -> Vec<String> {
        vec![self.name().to_owned()]
    }
    /// Continues after `positions`, one per lane (values previously returned in
    /// [`ReadOutcome::Line`]).
    fn seek(&mut self, positions: &[u64]) -> io::Result<()>;
    /// Reads the next line into `buf` (cleared first), keeping at most `limit` bytes of it: a
    /// longer line is [`ReadOutcome::TooLong`], and memory stays bounded by `limit` whatever
    /// the input.
    fn read_line(&mut self, buf: &mut Vec<u8>, limit: usize) -> io::Result<ReadOutcome>;
    /// For sources that tell their upstream how far the database has them (Kafka's consumer
    /// group): the ingester acknowledges each position after its transaction committed.
    fn acknowledger(&self) -> Option<Acknowledger> {
        None
    }
}

/// The ingester's side of [`LineSource::acknowledger`]: per lane, the position whose events
/// are committed.
#[derive(Debug, Clone)]
pub struct Acknowledger(pub Arc<[AtomicU64]>);

impl Acknowledger {
    /// Everything of `lane` before `position` is committed in Postgres.
    pub fn ack(&self, lane: usize, position: u64) {
        if let Some(acked) = self.0.get(lane) {
            acked.fetch_max(position, Ordering::AcqRel);
        }
    }
}

/// A log file, optionally followed like `tail -f`.
pub struct FileSource {
    path: PathBuf,
    name: String,
    reader: BufReader<File>,
    position: u64,
    follow: Option<Duration>,
    /// The kept bytes (at most the limit) of the line being read, unfinished in follow mode.
    pending: Vec<u8>,
    /// That line's full length so far.
    pending_len: u64,
}

impl FileSource {
    /// Opens `path`. With `follow`, end of file means "wait and poll every `follow`".
    pub fn open(path: &Path, follow: Option<Duration>) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a directory"));
        }
        let canonical = path.canonicalize()?;
        Ok(Self {
            name: format!("file:{}", canonical.display()),
            path: canonical,
            reader: BufReader::with_capacity(1 << 20, file),
            position: 0,
            follow,
            pending: Vec::new(),
            pending_len: 0,
        })
    }

    /// The file's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LineSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::File
    }

    fn len_hint(&self) -> Option<u64> {
        self.reader.get_ref().metadata().ok().map(|m| m.len())
    }

    fn fingerprint(&mut self, len: u64) -> io::Result<Option<String>> {
        let mut file = File::open(&self.path)?;
        let mut head = Vec::new();
        (&mut file).take(len).read_to_end(&mut head)?;
        if (head.len() as u64) < len {
            return Ok(None);
        }
        Ok(Some(hex::encode(Sha256::digest(&head))))
    }

    fn seek(&mut self, positions: &[u64]) -> io::Result<()> {
        let position = positions.first().copied().unwrap_or(0);
        let len = self.reader.get_ref().metadata()?.len();
        if position > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is shorter ({len} bytes) than the committed position {position}: was it truncated?"),
            ));
        }
        self.reader.seek(SeekFrom::Start(position))?;
        self.position = position;
        self.pending.clear();
        self.pending_len = 0;
        Ok(())
    }

    fn read_line(&mut self, buf: &mut Vec<u8>, limit: usize) -> io::Result<ReadOutcome> {
        buf.clear();
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let part = &available[..newline.unwrap_or(available.len())];
            let room = limit.saturating_sub(self.pending.len()).min(part.len());
            self.pending.extend_from_slice(&part[..room]);
            self.pending_len += part.len() as u64;
            let consumed = newline.map_or(part.len(), |i| i + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                self.position += self.pending_len + 1;
                return Ok(self.take_line(buf, limit));
            }
        }
        match self.follow {
            Some(poll) => {
                // An unfinished last line stays pending until its newline arrives.
                let len = self.reader.get_ref().metadata()?.len();
                if len < self.position {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "followed file was truncated"));
                }
                std::thread::sleep(poll);
                Ok(ReadOutcome::Idle)
            }
            None if self.pending_len == 0 => Ok(ReadOutcome::Eof),
            None => {
                // The last line has no newline: it is complete because the file is.
                self.position += self.pending_len;
                Ok(self.take_line(buf, limit))
            }
        }
    }
}

impl FileSource {
    /// Hands the pending line over (its position already counted).
    fn take_line(&mut self, buf: &mut Vec<u8>, limit: usize) -> ReadOutcome {
        let len = std::mem::take(&mut self.pending_len);
        std::mem::swap(buf, &mut self.pending);
        self.pending.clear();
        line_outcome(self.position, len, limit)
    }
}

fn line_outcome(end: u64, len: u64, limit: usize) -> ReadOutcome {
    if len > limit as u64 { ReadOutcome::TooLong { lane: 0, end, len } } else { ReadOutcome::Line { lane: 0, end } }
}

/// A named, unseekable stream of lines (stdin, or lines generated in memory).
///
/// A background thread reads blocks of whole lines so that a quiet stream reports
/// [`ReadOutcome::Idle`] instead of blocking forever with a half-filled batch.
pub struct StreamSource {
    name: String,
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    offset_in_chunk: usize,
    position: u64,
    idle_after: Duration,
    finished: bool,
    /// Bytes still to discard to reach a resume position.
    to_skip: u64,
}

impl StreamSource {
    /// Reads from `reader` on a background thread.
    pub fn new(name: impl Into<String>, reader: impl Read + Send + 'static, idle_after: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name("stream-source".into())
            .spawn(move || pump(reader, tx))
            .map(|_detached| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "could not start the stream reader thread"));
        Self {
            name: name.into(),
            rx,
            chunk: Vec::new(),
            offset_in_chunk: 0,
            position: 0,
            idle_after,
            finished: false,
            to_skip: 0,
        }
    }

    /// Standard input under `name`.
    pub fn stdin(name: impl Into<String>, idle_after: Duration) -> Self {
        Self::new(name, io::stdin(), idle_after)
    }

    fn next_chunk(&mut self) -> io::Result<bool> {
        match self.rx.recv_timeout(self.idle_after) {
            Ok(Ok(chunk)) => {
                self.chunk = chunk;
                self.offset_in_chunk = 0;
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => {
                self.finished = true;
                Ok(false)
            }
        }
    }
}

/// Reads `reader` into chunks that end on a line boundary (the last may not).
fn pump(mut reader: impl Read, tx: SyncSender<io::Result<Vec<u8>>>) {
    const CHUNK: usize = 1 << 20;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut chunk = std::mem::take(&mut carry);
        let start = chunk.len();
        chunk.resize(start + CHUNK, 0);
        let n = match reader.read(&mut chunk[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                chunk.truncate(start);
                carry = chunk;
                continue;
            }
            Err(e) => {
                let _closed = tx.send(Err(e));
                return;
            }
        };
        chunk.truncate(start + n);
        if n == 0 {
            if !chunk.is_empty() {
                let _closed = tx.send(Ok(chunk));
            }
            return;
        }
        match chunk.iter().rposition(|b| *b == b'\n') {
            Some(last_nl) => {
                carry = chunk.split_off(last_nl + 1);
                if tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
            // The middle of a line longer than a chunk: sent as it is (the reader keeps only
            // the line's first bytes), so a line without an end never fills memory.
            None if chunk.len() >= CHUNK => {
                if tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
            None => carry = chunk,
        }
    }
}

impl LineSource for StreamSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Stream
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn fingerprint(&mut self, _len: u64) -> io::Result<Option<String>> {
        Ok(None)
    }

    fn seek(&mut self, positions: &[u64]) -> io::Result<()> {
        let position = positions.first().copied().unwrap_or(0);
        if position < self.position {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a stream cannot seek backwards"));
        }
        self.to_skip = position - self.position;
        Ok(())
    }

    fn read_line(&mut self, buf: &mut Vec<u8>, limit: usize) -> io::Result<ReadOutcome> {
        buf.clear();
        let mut len = 0u64;
        loop {
            if self.offset_in_chunk >= self.chunk.len() {
                if self.finished {
                    return Ok(if len == 0 { ReadOutcome::Eof } else { line_outcome(self.position, len, limit) });
                }
                if !self.next_chunk()? {
                    if self.finished {
                        continue;
                    }
                    if len == 0 && self.to_skip == 0 {
                        return Ok(ReadOutcome::Idle);
                    }
                    continue;
                }
            }
            let rest = &self.chunk[self.offset_in_chunk..];
            if self.to_skip > 0 {
                let skip = (self.to_skip as usize).min(rest.len());
                self.offset_in_chunk += skip;
                self.position += skip as u64;
                self.to_skip -= skip as u64;
                continue;
            }
            let newline = rest.iter().position(|b| *b == b'\n');
            let part = &rest[..newline.unwrap_or(rest.len())];
            let room = limit.saturating_sub(buf.len()).min(part.len());
            buf.extend_from_slice(&part[..room]);
            len += part.len() as u64;
            match newline {
                Some(i) => {
                    self.offset_in_chunk += i + 1;
                    self.position += i as u64 + 1;
                    return Ok(line_outcome(self.position, len, limit));
                }
                None => {
                    self.position += rest.len() as u64;
                    self.offset_in_chunk = self.chunk.len();
                }
            }
        }
    }
}

/// Expands paths into file sources: a directory yields its regular files in name order.
pub fn file_sources(paths: &[PathBuf], follow: Option<Duration>) -> Result<Vec<FileSource>, SourceError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| SourceError { path: path.clone(), source: e })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| SourceError { path: path.clone(), source: e })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                out.push(FileSource::open(&file, None).map_err(|e| SourceError { path: file.clone(), source: e })?);
            }
        } else {
            out.push(FileSource::open(path, follow).map_err(|e| SourceError { path: path.clone(), source: e })?);
        }
    }
    Ok(out)
}

/// A path that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct SourceError {
    /// The path given.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}
