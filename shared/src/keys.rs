//! Queue names and the Redis keys derived from them.
//!
//! Every key of one queue shares the hash tag `{Q}` so that all multi-key steps of a queue (move to the dead
//! stream with XACK, schedule a retry) touch a single Redis Cluster slot and can run as one Lua script.

/// Default key prefix, see `DESIGN.md` §1.
pub const DEFAULT_PREFIX: &str = "jobstream";
/// Default consumer group name.
pub const DEFAULT_GROUP: &str = "workers";

/// The parts every name type shares: `as_str`, `Display`, and `FromStr` through the type's own `parse`.
macro_rules! text_name {
    ($name:ident, $error:ty) => {
        impl $name {
            /// The name as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}
pub(crate) use text_name;

/// Why a queue, group or prefix name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{what} must not be empty")]
    Empty {
        /// What was named, e.g. `queue name`.
        what: &'static str,
    },
    /// The name is longer than its maximum.
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// What was named, e.g. `queue name`.
        what: &'static str,
        /// The name's length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The name has a character it may not contain.
    #[error("{what} {value:?} contains {ch:?}; use letters, digits and . _ - : only")]
    BadChar {
        /// What was named, e.g. `queue name`.
        what: &'static str,
        /// The name as given.
        value: String,
        /// The first character refused.
        ch: char,
    },
}

fn parse_name(what: &'static str, value: &str, max: usize) -> Result<String, NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong { what, len: value.len(), max });
    }
    if let Some(ch) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        return Err(NameError::BadChar { what, value: value.to_owned(), ch });
    }
    Ok(value.to_owned())
}

/// A queue name: non-empty, at most 128 characters of `[A-Za-z0-9._:-]`. Braces are refused because the name
/// becomes a Redis Cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    /// Parses a queue name.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        parse_name("queue name", value, 128).map(Self)
    }
}

text_name!(QueueName, NameError);

/// A consumer group name, same rules as a queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupName(String);

impl GroupName {
    /// Parses a group name.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        parse_name("group name", value, 128).map(Self)
    }
}

impl Default for GroupName {
    fn default() -> Self {
        Self(DEFAULT_GROUP.to_owned())
    }
}

text_name!(GroupName, NameError);

/// A caller's idempotency key: 1 to 200 printable ASCII characters (`!` to `~`), no spaces, compared byte for
/// byte (no case folding, trimming or Unicode normalisation).
///
/// One rule on every path: the library, `producer enqueue --idempotency-key`, and `producer serve`'s
/// `idempotency_key` body field and `Idempotency-Key` header all go through [`IdempotencyKey::parse`] (the header
/// through [`IdempotencyKey::from_bytes`]), so a key one path refuses, every path refuses with the same message.
/// Non-ASCII keys are refused rather than normalised: two spellings of the same text (NFC and NFD `é`, or a
/// header's raw bytes against a JSON string) could otherwise name one job on one path and two on another.
/// Percent-encode or hash a key that holds other text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses an idempotency key given as raw bytes (an HTTP header value): bytes that are not UTF-8 become
    /// U+FFFD, which [`IdempotencyKey::parse`] refuses like any other non-ASCII character.
    pub fn from_bytes(value: &[u8]) -> Result<Self, NameError> {
        Self::parse(&String::from_utf8_lossy(value))
    }

    /// Parses an idempotency key.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let what = "idempotency key";
        if value.is_empty() {
            return Err(NameError::Empty { what });
        }
        if value.len() > 200 {
            return Err(NameError::TooLong { what, len: value.len(), max: 200 });
        }
        match value.chars().find(|c| !c.is_ascii_graphic()) {
            Some(ch) => Err(NameError::BadChar { what, value: value.to_owned(), ch }),
            None => Ok(Self(value.to_owned())),
        }
    }
}

text_name!(IdempotencyKey, NameError);

/// The Redis keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    queue: QueueName,
    /// The queue these are a partition of, and which one; `None` for an unpartitioned queue.
    partition: Option<(QueueName, u32)>,
    prefix: String,
    /// `<prefix>:{Q}`: the stream of jobs waiting or in flight.
    pub stream: String,
    /// `<prefix>:{Q}:dead`: dead-lettered jobs with the reason.
    pub dead: String,
    /// `<prefix>:{Q}:delayed`: sorted set of jobs due later, score = due time in ms.
    pub delayed: String,
    /// `<prefix>:{Q}:done`: hash of job id → successful runs, written by the shipped job kinds.
    pub done: String,
    /// `<prefix>:{Q}:result:`: prefix of the keys the shipped `demo`/`noop` kinds write results to.
    pub result_prefix: String,
    /// `<prefix>:{Q}:cron`: hash of periodic schedules, schedule name → its JSON spec ([`crate::cron`]).
    pub cron: String,
    /// `<prefix>:{Q}:cron:last`: hash of schedule name → the last tick enqueued (unix ms, decimal).
    pub cron_last: String,
    /// `<prefix>:{Q}:paused`: present while the queue is paused ([`crate::pause`]); its value is when it was
    /// paused (unix ms). One flag for the whole queue: every partition's keys name the base queue's flag.
    pub paused: String,
    /// `<prefix>:{Q}:cancels`: sorted set of job ids whose running attempt was asked to stop, score = when
    /// (unix ms); polled by every worker process ([`crate::jobs`]). Like the pause flag, one per queue: every
    /// partition's keys name the base queue's set.
    pub cancels: String,
    /// `<prefix>:{Q}:job:`: prefix of the per-job status records ([`Keys::job`]).
    pub job_prefix: String,
}

impl Keys {
    /// Keys of `queue` under `prefix`. The prefix follows the same character rules as a queue name.
    pub fn new(prefix: &str, queue: &QueueName) -> Result<Self, NameError> {
        let prefix = parse_name("key prefix", prefix, 64)?;
        let base = format!("{prefix}:{{{queue}}}");
        Ok(Self {
            queue: queue.clone(),
            partition: None,
            prefix: prefix.clone(),
            dead: format!("{base}:dead"),
            delayed: format!("{base}:delayed"),
            done: format!("{base}:done"),
            result_prefix: format!("{base}:result:"),
            cron: format!("{base}:cron"),
            cron_last: format!("{base}:cron:last"),
            paused: format!("{base}:paused"),
            cancels: format!("{base}:cancels"),
            job_prefix: format!("{base}:job:"),
            stream: base,
        })
    }

    /// The keys of `queue`'s partitions: `queue` itself when `partitions` is 1, else the queues `<queue>:0` …
    /// `<queue>:<n-1>`, each with its own hash tag, so a Redis Cluster spreads them over its shards.
    pub fn partitioned(prefix: &str, queue: &QueueName, partitions: u32) -> Result<Vec<Self>, NameError> {
        if partitions <= 1 {
            return Ok(vec![Self::new(prefix, queue)?]);
        }
        let base = Self::new(prefix, queue)?;
        (0..partitions)
            .map(|i| {
                let mut keys = Self::new(prefix, &QueueName::parse(&format!("{queue}:{i}"))?)?;
                keys.paused.clone_from(&base.paused);
                keys.cancels.clone_from(&base.cancels);
                keys.partition = Some((queue.clone(), i));
                Ok(keys)
            })
            .collect()
    }

    /// The queue these keys belong to.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The queue as users name it: [`Keys::queue`] for an unpartitioned queue, the queue whose partition these
    /// keys are otherwise (`orders` for `orders:3`). Span names and `messaging.destination.name` use it, so
    /// they stay one value per queue.
    pub fn base_queue(&self) -> &QueueName {
        self.partition.as_ref().map_or(&self.queue, |(base, _)| base)
    }

    /// Which partition of [`Keys::base_queue`] these keys are; `None` for an unpartitioned queue.
    pub fn partition(&self) -> Option<u32> {
        self.partition.as_ref().map(|(_, i)| *i)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key that records how many partitions the queue `queue` has: `<prefix>:{Q}:partitions` (a decimal
    /// string), under the queue's own hash tag whether or not it is partitioned. See [`crate::partitions`].
    pub fn partition_record(prefix: &str, queue: &QueueName) -> Result<String, NameError> {
        let prefix = parse_name("key prefix", prefix, 64)?;
        Ok(format!("{prefix}:{{{queue}}}:partitions"))
    }

    /// The key that remembers an idempotency key: `<prefix>:{Q}:idem:<key>`.
    pub fn idempotency(&self, key: &IdempotencyKey) -> String {
        format!("{}:idem:{}", self.stream, key.0)
    }

    /// The hash a load test's latency probes are published to: `<prefix>:{Q}:load:<run>`.
    pub fn load_run(&self, run: &str) -> String {
        format!("{}:load:{run}", self.stream)
    }

    /// The key a consumer sets (`NX`, for seconds) before it makes the `send` span of schedule `name`'s tick
    /// `tick_ms`, so that one consumer, not all, traces the tick: `<prefix>:{Q}:cron:claim:<name>:<tick>`. Only
    /// a courtesy to the traces; the tick's single job rests on the `cron_tick` script alone.
    pub fn cron_claim(&self, name: &str, tick_ms: u64) -> String {
        format!("{}:claim:{name}:{tick_ms}", self.cron)
    }

    /// The status record of one job: `<prefix>:{Q}:job:<id>`, a hash in the slot of the partition the job goes
    /// to ([`crate::jobs`] lists its fields).
    pub fn job(&self, job_id: &str) -> String {
        format!("{}{job_id}", self.job_prefix)
    }

    /// The hash of the jobs that finished (done or cancelled by their worker) in hour `hour` (unix ms / 3,600,000):
    /// `<prefix>:{Q}:finished:<hour>`, job id → its final record as JSON ([`crate::jobs`]).
    pub fn finished(&self, hour: u64) -> String {
        format!("{}:finished:{hour}", self.stream)
    }

    /// The key under which a job's result is stored by the shipped job kinds.
    pub fn result(&self, job_id: &str) -> String {
        format!("{}{job_id}", self.result_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_queue_hash_tag() {
        let keys = Keys::new("jobstream", &QueueName::parse("emails").unwrap()).unwrap();
        assert_eq!(keys.stream, "jobstream:{emails}");
        assert_eq!(keys.dead, "jobstream:{emails}:dead");
        assert_eq!(keys.delayed, "jobstream:{emails}:delayed");
        assert_eq!(keys.result("abc"), "jobstream:{emails}:result:abc");
        assert_eq!(keys.cron, "jobstream:{emails}:cron");
        assert_eq!(keys.cron_last, "jobstream:{emails}:cron:last");
        assert_eq!(keys.paused, "jobstream:{emails}:paused");
    }

    #[test]
    fn every_partition_names_the_base_queue_pause_flag() {
        let queue = QueueName::parse("jobs").unwrap();
        let parts = Keys::partitioned("jobstream", &queue, 3).unwrap();
        assert_eq!(parts[2].stream, "jobstream:{jobs:2}");
        assert!(parts.iter().all(|k| k.paused == "jobstream:{jobs}:paused"));
        assert!(parts.iter().all(|k| k.cancels == "jobstream:{jobs}:cancels"));
        assert_eq!(parts[1].job("x"), "jobstream:{jobs:1}:job:x");
    }

    #[test]
    fn names_with_braces_spaces_or_nothing_are_refused() {
        assert_eq!(QueueName::parse(""), Err(NameError::Empty { what: "queue name" }));
        assert!(matches!(QueueName::parse("a}b"), Err(NameError::BadChar { ch: '}', .. })));
        assert!(matches!(QueueName::parse("a b"), Err(NameError::BadChar { ch: ' ', .. })));
        assert!(matches!(QueueName::parse(&"x".repeat(129)), Err(NameError::TooLong { .. })));
        assert!(Keys::new("bad prefix", &QueueName::parse("q").unwrap()).is_err());
        assert!(IdempotencyKey::parse("order-42/payment").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn idempotency_keys_follow_one_rule_from_text_or_bytes() {
        assert_eq!(IdempotencyKey::from_bytes(b"order-42").unwrap(), IdempotencyKey::parse("order-42").unwrap());
        for refused in ["clé", "cle\u{301}", "tab\there", "\u{7f}"] {
            assert!(IdempotencyKey::parse(refused).is_err(), "{refused:?}");
            assert!(IdempotencyKey::from_bytes(refused.as_bytes()).is_err(), "{refused:?}");
        }
        assert!(matches!(IdempotencyKey::from_bytes(b"key-\xff"), Err(NameError::BadChar { ch: '\u{fffd}', .. })));
        assert!(IdempotencyKey::parse(&"k".repeat(200)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(201)).is_err());
    }

    #[test]
    fn the_partition_record_sits_under_the_queue_tag() {
        let queue = QueueName::parse("jobs").unwrap();
        assert_eq!(Keys::partition_record("jobstream", &queue).unwrap(), "jobstream:{jobs}:partitions");
        assert!(Keys::partition_record("bad prefix", &queue).is_err());
    }
}
