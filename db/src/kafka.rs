//! A Kafka topic partition as a [`LineSource`]: one message is one log line.
//!
//! Postgres is the source of truth for where the ingester is: the position stored in
//! `ingest_sources` is the next offset to read, committed in the same transaction as the events
//! (so a crash neither loses nor duplicates, exactly like a file). The consumer group's offset
//! in Kafka is committed *after* that transaction, for the tools that watch consumer lag; on
//! start the source seeks to the Postgres position, whatever the group's offset says (it can lag
//! by one batch after a crash, never lead).
//!
//! The course's `movielog<N>` topics are read in order, so a source reads one partition; a
//! topic with several partitions is refused with a clear error (their relative order is
//! undefined, and event ids are an order).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::source::{Acknowledger, LineSource, ReadOutcome, SourceKind};

/// How far before the resume offset a source starts fetching (the records before it are
/// skipped): a restart re-reads at most this many messages.
const SEEK_REWIND: u64 = 4096;

/// Where to read from.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic (the course's `movielog<N>`).
    pub topic: String,
    /// The consumer group the offsets are committed under.
    pub group: String,
    /// Keep waiting for new messages at the end of the partition (`false`: stop there).
    pub follow: bool,
    /// How long a quiet partition waits before reporting [`ReadOutcome::Idle`] (a partial
    /// batch is committed then).
    pub idle_after: Duration,
    /// How long to wait for the broker's metadata at start.
    pub connect_timeout: Duration,
}

impl KafkaConfig {
    /// Defaults for `brokers` and `topic`: group `lazyrec-ingest`, stop at the end, idle after 500 ms.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: "lazyrec-ingest".into(),
            follow: false,
            idle_after: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The name the position is stored under in `ingest_sources` (brokers are left out: the
    /// same topic behind another address is the same stream).
    pub fn source_name(&self) -> String {
        format!("kafka:{}/0", self.topic)
    }
}

/// Failures to open a Kafka source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created or the broker did not answer.
    #[error("kafka {brokers}: {source}")]
    Client {
        /// The brokers asked.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The topic is not there.
    #[error("kafka topic {0:?} does not exist (create it, or let the producer create it)")]
    NoTopic(String),
    /// More than one partition.
    #[error(
        "kafka topic {topic:?} has {partitions} partitions; the ingester reads one ordered partition (the course's movielog topics have one)"
    )]
    Partitions {
        /// The topic.
        topic: String,
        /// How many it has.
        partitions: usize,
    },
}

/// A client context that keeps librdkafka's chatter (it repeats a connection error many times
/// a second) at debug level: failures surface as errors of the calls that hit them.
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(facility = fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for Quiet {}

/// Partition 0 of a topic, read by a consumer of `group` with offsets stored in Postgres.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    consumer: BaseConsumer<Quiet>,
    /// The next offset to read.
    position: u64,
    /// The position Postgres holds (set by the ingester after each commit).
    acked: Arc<AtomicU64>,
    /// The last position committed to the consumer group.
    group_committed: u64,
    last_group_commit: Instant,
    /// Offsets skipped by the broker (see `read_line`).
    gaps: u64,
}

impl KafkaSource {
    /// Connects, checks the topic has one partition; reading starts at [`LineSource::seek`].
    pub fn open(config: KafkaConfig) -> Result<Self, KafkaSourceError> {
        let client_err = |source| KafkaSourceError::Client { brokers: config.brokers.clone(), source };
        let consumer: BaseConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A stored position the broker no longer has (topic recreated, retention) is an error, never a
            // silent jump.
            .set("auto.offset.reset", "error")
            .set("socket.timeout.ms", config.connect_timeout.as_millis().max(1000).to_string())
            .set("allow.auto.create.topics", "false")
            .create_with_context(Quiet)
            .map_err(client_err)?;
        let metadata = consumer.fetch_metadata(Some(&config.topic), config.connect_timeout).map_err(client_err)?;
        let topic = metadata.topics().iter().find(|t| t.name() == config.topic);
        match topic {
            Some(t) if t.error().is_none() && t.partitions().len() == 1 => {}
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                return Err(KafkaSourceError::Partitions {
                    topic: config.topic.clone(),
                    partitions: t.partitions().len(),
                });
            }
            _ => return Err(KafkaSourceError::NoTopic(config.topic.clone())),
        }
        Ok(Self {
            name: config.source_name(),
            config,
            consumer,
            position: 0,
            acked: Arc::new(AtomicU64::new(0)),
            group_committed: 0,
            last_group_commit: Instant::now(),
            gaps: 0,
        })
    }

    /// Commits the Postgres-acknowledged position to the consumer group when it moved.
    fn commit_group(&mut self, mode: CommitMode) {
        let acked = self.acked.load(Ordering::Acquire);
        if acked <= self.group_committed {
            return;
        }
        let mut list = TopicPartitionList::new();
        if list.add_partition_offset(&self.config.topic, 0, Offset::Offset(acked as i64)).is_err() {
            return;
        }
        match self.consumer.commit(&list, mode) {
            Ok(()) => self.group_committed = acked,
            // Only monitoring reads the group's offset; the next commit carries it forward.
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.config.topic, offset = acked, "committing the consumer group offset failed")
            }
        }
        self.last_group_commit = Instant::now();
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.commit_group(CommitMode::Sync);
    }
}

impl LineSource for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Kafka
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn fingerprint(&mut self, _len: u64) -> io::Result<Option<String>> {
        Ok(None)
    }

    fn seek(&mut self, position: u64) -> io::Result<()> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.config.topic, 0, self.config.connect_timeout)
            .map_err(|e| io::Error::other(format!("kafka topic {}: reading its offsets: {e}", self.config.topic)))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        if position > high {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "kafka topic {} ends at offset {high} but {position} messages were ingested from it: was it recreated? (ingest it under another name or remove its row from ingest_sources)",
                    self.config.topic
                ),
            ));
        }
        if position < low {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "kafka topic {} starts at offset {low}: messages {position}..{low} were deleted (retention) before they were ingested",
                    self.config.topic
                ),
            ));
        }
        // Fetch from a little earlier and skip what is already in: a broker may answer a fetch
        // from the middle of a record batch with the batches that start after it (tansu 0.6
        // does), which would skip the rest of that batch.
        let from = position.saturating_sub(SEEK_REWIND).max(low);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.config.topic, 0, Offset::Offset(from as i64)).map_err(io::Error::other)?;
        self.consumer.assign(&list).map_err(io::Error::other)?;
        self.position = position;
        self.acked.store(position, Ordering::Release);
        self.group_committed = position;
        Ok(())
    }

    fn read_line(&mut self, buf: &mut Vec<u8>, limit: usize) -> io::Result<ReadOutcome> {
        buf.clear();
        if self.last_group_commit.elapsed() >= Duration::from_secs(1) {
            self.commit_group(CommitMode::Async);
        }
        loop {
            let message = match self.consumer.poll(self.config.idle_after) {
                None => return Ok(ReadOutcome::Idle),
                Some(Ok(message)) => message,
                Some(Err(KafkaError::PartitionEOF(_))) if !self.config.follow => return Ok(ReadOutcome::Eof),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(ReadOutcome::Idle),
                Some(Err(e)) => return Err(io::Error::other(format!("kafka topic {}: {e}", self.config.topic))),
            };
            let offset = message.offset().max(0) as u64;
            if offset < self.position {
                // Before the resume point (see `seek`): already ingested.
                continue;
            }
            if offset > self.position {
                // Offsets of a plain topic are contiguous; a gap is compaction, transaction
                // markers or a broker that skipped records. Say so: those lines are not here.
                self.gaps += offset - self.position;
                tracing::warn!(
                    topic = %self.config.topic,
                    expected = self.position,
                    got = offset,
                    total_gaps = self.gaps,
                    "kafka offsets jumped: {} offsets without a message",
                    offset - self.position
                );
            }
            let payload = message.payload().unwrap_or_default();
            let line = payload.strip_suffix(b"\n").unwrap_or(payload);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            buf.extend_from_slice(&line[..line.len().min(limit)]);
            self.position = offset + 1;
            return Ok(if line.len() > limit {
                ReadOutcome::TooLong { end: self.position, len: line.len() as u64 }
            } else {
                ReadOutcome::Line { end: self.position }
            });
        }
    }

    fn acknowledger(&self) -> Option<Acknowledger> {
        Some(Acknowledger(self.acked.clone()))
    }
}
