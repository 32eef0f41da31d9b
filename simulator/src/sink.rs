//! Where the course log lines go: a file (appended; the ingester's `--follow` reads it), stdout,
//! a Kafka topic (one message per line, keyed by user), or nowhere.
//!
//! Steps hand their lines to one writer thread in a bounded channel; the file is flushed
//! whenever the channel runs dry, so a follower sees lines within milliseconds.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// An output destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append to a file.
    File(PathBuf),
    /// Standard output.
    Stdout,
    /// A Kafka topic.
    Kafka {
        /// `host:port[,host:port…]`.
        brokers: String,
        /// The topic.
        topic: String,
    },
    /// Discard (the report is still made).
    None,
}

impl FromStr for Output {
    type Err = String;

    /// `file:PATH` (or a bare path), `stdout`, `kafka:BROKERS/TOPIC`, `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" | "-" => Ok(Output::Stdout),
            "none" => Ok(Output::None),
            _ => {
                if let Some(rest) = s.strip_prefix("kafka:") {
                    let rest = rest.trim_start_matches("//");
                    let (brokers, topic) = rest
                        .rsplit_once('/')
                        .filter(|(b, t)| !b.is_empty() && !t.is_empty())
                        .ok_or_else(|| format!("{s:?}: expected kafka:HOST:PORT[,HOST:PORT]/TOPIC"))?;
                    return Ok(Output::Kafka { brokers: brokers.into(), topic: topic.into() });
                }
                let path = s.strip_prefix("file:").unwrap_or(s);
                if path.is_empty() {
                    return Err("empty output path".into());
                }
                Ok(Output::File(path.into()))
            }
        }
    }
}

/// Opening an output failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file could not be opened.
    #[error("opening {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Kafka producer could not be created.
    #[error("kafka {brokers}: {source}")]
    Kafka {
        /// The brokers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The topic is missing (the simulator does not create topics: their partition count is a
    /// decision of whoever runs the broker).
    #[error(
        "kafka {brokers}: topic {topic:?} does not exist; create it (e.g. `tansu topic create {topic} --partitions 3`)"
    )]
    NoTopic {
        /// The brokers.
        brokers: String,
        /// The topic.
        topic: String,
    },
    /// Writing failed (disk full, closed pipe, …).
    #[error("writing the log: {0}")]
    Write(#[source] std::io::Error),
    /// The writer thread could not start or died.
    #[error("the log writer stopped: {0}")]
    Writer(String),
}

/// What the writer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// Lines written (or handed to Kafka).
    pub lines: u64,
    /// Kafka messages the broker did not acknowledge (0 for other outputs).
    pub undelivered: u64,
}

/// Counts Kafka deliveries that failed.
struct Deliveries {
    failed: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {
    // librdkafka repeats connection errors many times a second; they surface as a failed
    // start or as undelivered lines instead.
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(facility = fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, "librdkafka: {reason}");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a log line was not delivered to kafka");
        }
    }
}

enum Target {
    Write(Box<dyn Write + Send>),
    Kafka { producer: ThreadedProducer<Deliveries>, topic: String, failed: Arc<AtomicU64> },
    Discard,
}

/// The handle steps write through: each message is one step's lines (each ending in `\n`).
pub struct Sink {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<Result<SinkStats, SinkError>>>,
}

impl Sink {
    /// Opens `output` and starts its writer thread.
    pub fn open(output: &Output) -> Result<Self, SinkError> {
        let target = match output {
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SinkError::File { path: path.clone(), source })?;
                Target::Write(Box::new(std::io::BufWriter::with_capacity(1 << 20, file)))
            }
            Output::Stdout => Target::Write(Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()))),
            Output::Kafka { brokers, topic } => {
                let failed = Arc::new(AtomicU64::new(0));
                let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("allow.auto.create.topics", "false")
                    .set("linger.ms", "5")
                    .set("queue.buffering.max.messages", "1000000")
                    .set("message.timeout.ms", "30000")
                    .create_with_context(Deliveries { failed: failed.clone() })
                    .map_err(|source| SinkError::Kafka { brokers: brokers.clone(), source })?;
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|source| SinkError::Kafka { brokers: brokers.clone(), source })?;
                if !metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                {
                    return Err(SinkError::NoTopic { brokers: brokers.clone(), topic: topic.clone() });
                }
                Target::Kafka { producer, topic: topic.clone(), failed }
            }
            Output::None => Target::Discard,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(65_536);
        let writer = std::thread::Builder::new()
            .name("sim-log-writer".into())
            .spawn(move || write_all(target, rx))
            .map_err(|e| SinkError::Writer(e.to_string()))?;
        Ok(Self { tx: Some(tx), writer: Some(writer) })
    }

    /// A sender for steps (cheap to clone).
    pub fn sender(&self) -> LineSender {
        LineSender(self.tx.clone())
    }

    /// Waits for every line to be written (and Kafka to acknowledge), then reports.
    pub fn close(mut self) -> Result<SinkStats, SinkError> {
        self.tx.take();
        match self.writer.take() {
            Some(writer) => writer.join().map_err(|_| SinkError::Writer("the writer thread panicked".into()))?,
            None => Ok(SinkStats::default()),
        }
    }
}

/// Sends a step's lines to the writer.
#[derive(Clone)]
pub struct LineSender(Option<std::sync::mpsc::SyncSender<Vec<u8>>>);

impl LineSender {
    /// Hands `lines` to the writer (waits when it is 65,536 steps behind). Returns `false` when
    /// the writer is gone (it reports why on close).
    pub fn send(&self, lines: Vec<u8>) -> bool {
        match &self.0 {
            Some(tx) => tx.send(lines).is_ok(),
            None => false,
        }
    }
}

fn write_all(mut target: Target, rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Result<SinkStats, SinkError> {
    let mut stats = SinkStats::default();
    while let Ok(first) = rx.recv() {
        let mut chunk = first;
        loop {
            stats.lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            match &mut target {
                Target::Write(w) => w.write_all(&chunk).map_err(SinkError::Write)?,
                Target::Kafka { producer, topic, .. } => {
                    for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let key = line.split(|b| *b == b',').nth(1).unwrap_or_default();
                        let mut record = BaseRecord::to(topic.as_str()).payload(line).key(key);
                        loop {
                            match producer.send(record) {
                                Ok(()) => break,
                                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                    record = back;
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                                Err((e, _)) => {
                                    return Err(SinkError::Write(std::io::Error::other(format!("kafka: {e}"))));
                                }
                            }
                        }
                    }
                }
                Target::Discard => {}
            }
            match rx.try_recv() {
                Ok(next) => chunk = next,
                Err(_) => break,
            }
        }
        if let Target::Write(w) = &mut target {
            w.flush().map_err(SinkError::Write)?;
        }
    }
    match target {
        Target::Write(mut w) => w.flush().map_err(SinkError::Write)?,
        Target::Kafka { producer, failed, .. } => {
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| SinkError::Write(std::io::Error::other(format!("kafka flush: {e}"))))?;
            stats.undelivered = failed.load(Ordering::Relaxed);
        }
        Target::Discard => {}
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse() {
        assert_eq!("stdout".parse(), Ok(Output::Stdout));
        assert_eq!("none".parse(), Ok(Output::None));
        assert_eq!("file:/tmp/x.log".parse(), Ok(Output::File("/tmp/x.log".into())));
        assert_eq!("x.log".parse(), Ok(Output::File("x.log".into())));
        assert_eq!(
            "kafka:localhost:9092,other:9092/movielog7".parse(),
            Ok(Output::Kafka { brokers: "localhost:9092,other:9092".into(), topic: "movielog7".into() })
        );
        assert!("kafka:localhost:9092".parse::<Output>().is_err());
    }

    #[test]
    fn a_file_output_appends_every_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "old\n").expect("seed");
        let sink = Sink::open(&Output::File(path.clone())).expect("open");
        let tx = sink.sender();
        for i in 0..1000 {
            assert!(tx.send(format!("a{i}\nb{i}\n").into_bytes()));
        }
        drop(tx);
        assert_eq!(sink.close().expect("close").lines, 2000);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2001);
        assert!(text.starts_with("old\na0\nb0\n"));
    }
}
