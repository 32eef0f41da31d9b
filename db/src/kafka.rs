//! A Kafka topic as a [`LineSource`]: one message is one log line, one lane per partition.
//!
//! Postgres is the source of truth for where the ingester is: each partition has its row in
//! `ingest_sources` (`kafka:<topic>/<partition>`) holding the next offset to read, and every
//! batch commits the positions of all the partitions it read in the same transaction as their
//! events (so a crash neither loses nor duplicates, exactly like a file). The consumer group's
//! offsets in Kafka are committed *after* that transaction, for the tools that watch consumer
//! lag; on start each partition seeks to its Postgres position, whatever the group's offset says
//! (it can lag by one batch after a crash, never lead). Partitions are assigned explicitly (all
//! of the topic's partitions at start, no rebalancing): one ingester reads the whole topic.
//!
//! **Event ids and order.** Event ids number lines in the order this consumer received them.
//! Within a partition that is offset order; across partitions it is the interleaving of the
//! fetches, which differs from run to run (a restart after a crash may number the not yet
//! committed lines differently — each line still gets exactly one id). Kafka orders nothing
//! across partitions, so nothing here may depend on it: the simulator keys every message by user
//! id, so all of a user's lines are in one partition and keep their order, which is the only
//! order the per-user summaries (`user_watched`, the latest rating by `(ts, event_id)`) and the
//! watermark's meaning ("every line up to id N is in") rely on. A producer that does not key by
//! user still gets every line exactly once, but a user's events in different partitions are
//! ordered by arrival at the ingester, not by production.

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

    /// The source's name (brokers are left out: the same topic behind another address is the
    /// same stream).
    pub fn source_name(&self) -> String {
        format!("kafka:{}", self.topic)
    }

    /// The name partition `partition`'s position is stored under in `ingest_sources`.
    pub fn lane_name(&self, partition: i32) -> String {
        format!("kafka:{}/{partition}", self.topic)
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
    /// The topic's partitions are not numbered 0..n (a broker bug or a partial metadata answer).
    #[error("kafka topic {topic:?} reports partitions {ids:?}; expected 0..{}", ids.len())]
    Partitions {
        /// The topic.
        topic: String,
        /// The ids it reported.
        ids: Vec<i32>,
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

/// Every partition of a topic, read by a consumer of `group` with offsets stored in Postgres;
/// lane `p` is partition `p`.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    consumer: BaseConsumer<Quiet>,
    /// Per partition, the next offset to read.
    position: Vec<u64>,
    /// Per partition, the position Postgres holds (set by the ingester after each commit).
    acked: Arc<[AtomicU64]>,
    /// Per partition, the last position committed to the consumer group.
    group_committed: Vec<u64>,
    last_group_commit: Instant,
    /// Per partition, whether the consumer is at its end (no message since its EOF event).
    at_end: Vec<bool>,
    /// Offsets skipped by the broker (see `read_line`).
    gaps: u64,
}

impl KafkaSource {
    /// Connects and reads the topic's partitions; reading starts at [`LineSource::seek`].
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
        let partitions = match topic {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                ids.sort_unstable();
                if ids.iter().enumerate().any(|(i, id)| *id != i as i32) {
                    return Err(KafkaSourceError::Partitions { topic: config.topic.clone(), ids });
                }
                ids.len()
            }
            _ => return Err(KafkaSourceError::NoTopic(config.topic.clone())),
        };
        Ok(Self {
            name: config.source_name(),
            config,
            consumer,
            position: vec![0; partitions],
            acked: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            group_committed: vec![0; partitions],
            last_group_commit: Instant::now(),
            at_end: vec![false; partitions],
            gaps: 0,
        })
    }

    /// How many partitions (lanes) the topic has.
    pub fn partitions(&self) -> usize {
        self.position.len()
    }

    /// Commits the Postgres-acknowledged positions to the consumer group where they moved.
    fn commit_group(&mut self, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        let mut moved = Vec::new();
        for (partition, acked) in self.acked.iter().enumerate() {
            let acked = acked.load(Ordering::Acquire);
            if acked > self.group_committed[partition]
                && list.add_partition_offset(&self.config.topic, partition as i32, Offset::Offset(acked as i64)).is_ok()
            {
                moved.push((partition, acked));
            }
        }
        if moved.is_empty() {
            return;
        }
        match self.consumer.commit(&list, mode) {
            Ok(()) => {
                for (partition, acked) in moved {
                    self.group_committed[partition] = acked;
                }
            }
            // Only monitoring reads the group's offsets; the next commit carries them forward.
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.config.topic, "committing the consumer group offsets failed")
            }
        }
        self.last_group_commit = Instant::now();
    }

    /// Where partition `partition` may start fetching to resume at `position` (checked against
    /// what the broker still has).
    fn fetch_start(&self, partition: i32, position: u64) -> io::Result<u64> {
        let topic = &self.config.topic;
        let (low, high) =
            self.consumer.fetch_watermarks(topic, partition, self.config.connect_timeout).map_err(|e| {
                io::Error::other(format!("kafka topic {topic} partition {partition}: reading its offsets: {e}"))
            })?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        if position > high {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "kafka topic {topic} partition {partition} ends at offset {high} but {position} messages were ingested from it: was it recreated? (ingest it under another name or remove its rows from ingest_sources)"
                ),
            ));
        }
        if position < low {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "kafka topic {topic} partition {partition} starts at offset {low}: messages {position}..{low} were deleted (retention) before they were ingested"
                ),
            ));
        }
        // Fetch from a little earlier and skip what is already in: a broker may answer a fetch
        // from the middle of a record batch with the batches that start after it (tansu 0.6
        // does), which would skip the rest of that batch.
        Ok(position.saturating_sub(SEEK_REWIND).max(low))
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

    fn lanes(&self) -> Vec<String> {
        (0..self.partitions()).map(|p| self.config.lane_name(p as i32)).collect()
    }

    fn seek(&mut self, positions: &[u64]) -> io::Result<()> {
        if positions.len() != self.partitions() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} positions for {} partitions", positions.len(), self.partitions()),
            ));
        }
        let mut list = TopicPartitionList::new();
        for (partition, &position) in positions.iter().enumerate() {
            let from = self.fetch_start(partition as i32, position)?;
            list.add_partition_offset(&self.config.topic, partition as i32, Offset::Offset(from as i64))
                .map_err(io::Error::other)?;
            self.acked[partition].store(position, Ordering::Release);
        }
        self.consumer.assign(&list).map_err(io::Error::other)?;
        self.position = positions.to_vec();
        self.group_committed = positions.to_vec();
        self.at_end = vec![false; positions.len()];
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
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(at_end) = self.at_end.get_mut(partition as usize) {
                        *at_end = true;
                    }
                    // The end of the topic is the end of every partition; one partition's end
                    // is only a pause of that partition.
                    if self.at_end.iter().all(|e| *e) {
                        return Ok(if self.config.follow { ReadOutcome::Idle } else { ReadOutcome::Eof });
                    }
                    continue;
                }
                Some(Err(e)) => return Err(io::Error::other(format!("kafka topic {}: {e}", self.config.topic))),
            };
            let lane = message.partition().max(0) as usize;
            let Some(position) = self.position.get_mut(lane) else {
                // A partition added after the start: not assigned, so not expected; read at the
                // next start.
                continue;
            };
            self.at_end[lane] = false;
            let offset = message.offset().max(0) as u64;
            if offset < *position {
                // Before the resume point (see `seek`): already ingested.
                continue;
            }
            if offset > *position {
                // Offsets of a plain topic are contiguous; a gap is compaction, transaction
                // markers or a broker that skipped records. Say so: those lines are not here.
                self.gaps += offset - *position;
                tracing::warn!(
                    topic = %self.config.topic,
                    partition = lane,
                    expected = *position,
                    got = offset,
                    total_gaps = self.gaps,
                    "kafka offsets jumped: {} offsets without a message",
                    offset - *position
                );
            }
            let payload = message.payload().unwrap_or_default();
            let line = payload.strip_suffix(b"\n").unwrap_or(payload);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            buf.extend_from_slice(&line[..line.len().min(limit)]);
            *position = offset + 1;
            let end = *position;
            return Ok(if line.len() > limit {
                ReadOutcome::TooLong { lane, end, len: line.len() as u64 }
            } else {
                ReadOutcome::Line { lane, end }
            });
        }
    }

    fn acknowledger(&self) -> Option<Acknowledger> {
        Some(Acknowledger(self.acked.clone()))
    }
}
