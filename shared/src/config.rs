//! Command-line and environment settings shared by the binaries. Flags win over environment variables, which
//! win over defaults. The Redis URL may hold a password: its environment value is never printed by `--help`,
//! and [`RedisArgs`]'s `Debug` shows it redacted.

use std::fmt;
use std::time::Duration;

use clap::Args;

use crate::connection::{self, ConnectError, PoolSettings};
use crate::keys::{Keys, NameError, QueueName};
use crate::limits::{Limits, DEFAULT_MAX_PAYLOAD_BYTES};

/// Where Redis is.
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// PEM file of the CA that signed Redis's TLS certificate (with a rediss:// URL); without it the system's
    /// roots are used.
    #[arg(long, env = "JOBSTREAM_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Redis is a Cluster: --redis-url may list several nodes separated by commas; the client discovers the
    /// others and follows MOVED/ASK redirections.
    #[arg(long, env = "JOBSTREAM_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// How long opening a Redis connection may take, TLS handshake and authentication included.
    #[arg(long, env = "JOBSTREAM_REDIS_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub redis_connect_timeout: Duration,
}

impl fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &connection::redact(&self.redis_url))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_connect_timeout", &self.redis_connect_timeout)
            .finish()
    }
}

impl RedisArgs {
    /// A pool of at most `max_size` connections whose replies may take up to `response_timeout`.
    pub fn pool(&self, max_size: usize, response_timeout: Duration) -> Result<connection::Pool, ConnectError> {
        let settings = PoolSettings {
            max_size,
            response_timeout,
            ca_file: self.redis_ca_file.clone(),
            cluster: self.redis_cluster,
            connect_timeout: self.redis_connect_timeout,
        };
        connection::pool(&self.redis_url, &settings)
    }
}

/// Which queue.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Queue name; its keys are `<prefix>:{<queue>}...`
    #[arg(long, env = "JOBSTREAM_QUEUE", default_value = "jobs")]
    pub queue: QueueName,
    /// Prefix of every Redis key jobstream writes.
    #[arg(long, env = "JOBSTREAM_PREFIX", default_value = crate::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Largest job payload accepted, in bytes (checked by producers and consumers): 2 (`{}`) to 512 MiB
    /// (the largest value Redis stores).
    #[arg(long, env = "JOBSTREAM_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES, value_parser = payload_bytes)]
    pub max_payload_bytes: usize,
    /// Split the queue into this many partitions, the queues `<queue>:0` … `<queue>:<n-1>`, each its own stream
    /// and hash slot: producers spread jobs over them, consumers read all of them. Producers and consumers of a
    /// queue must agree on it: the first to use the queue records the count in Redis
    /// (`<prefix>:{<queue>}:partitions`) and the others refuse to start with another.
    #[arg(long, env = "JOBSTREAM_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
}

impl QueueArgs {
    /// The queue these flags name.
    pub fn queue(&self) -> crate::Result<crate::Queue> {
        crate::Queue::new(self.queue.as_str())?.with_prefix(&self.prefix)?.with_partitions(self.partitions)
    }

    /// The queue's keys.
    pub fn keys(&self) -> Result<Keys, NameError> {
        Keys::new(&self.prefix, &self.queue)
    }

    /// The keys of every partition of the queue (just the queue's when it has one partition).
    pub fn partition_keys(&self) -> Result<Vec<Keys>, NameError> {
        Keys::partitioned(&self.prefix, &self.queue, self.partitions)
    }

    /// The queue's partition record, to check this process's `--partitions` against Redis.
    pub fn partition_record(&self) -> Result<crate::partitions::PartitionRecord, NameError> {
        crate::partitions::PartitionRecord::new(&self.prefix, &self.queue, self.partitions)
    }

    /// The limits on jobs.
    pub fn limits(&self) -> Limits {
        Limits { max_payload_bytes: self.max_payload_bytes }
    }
}

/// Parses a duration such as `500ms`, `30s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Parses an RFC 3339 time in UTC such as `2026-12-01T09:00:00Z` (fractions of a second allowed; the offset
/// must be `Z`), for `--at` and `run_at`.
pub fn parse_time(text: &str) -> Result<std::time::SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339(text)
}

/// A flag's parser for a duration from `min` to `max` inclusive, for `#[arg(value_parser = ...)]`: a value out
/// of range is refused at start-up with the range in the message, as clap reports any bad flag (exit status 2).
pub fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value = parse_duration(text).map_err(|e| e.to_string())?;
        if value < min || value > max {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            return Err(format!("must be from {} to {}", show(min), show(max)));
        }
        Ok(value)
    }
}

/// Largest payload limit accepted: Redis stores no larger value.
pub const MAX_PAYLOAD_LIMIT: usize = 512 * 1024 * 1024;

fn payload_bytes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (2..=MAX_PAYLOAD_LIMIT).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be from 2 to {MAX_PAYLOAD_LIMIT} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

/// A secret from a flag or the environment (a token, a password): usable, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// An error and its causes on one line, each cause once (errors that print their source would otherwise repeat
/// it): how the binaries report a failure, whatever `RUST_BACKTRACE` says.
pub fn one_line<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.contains(text.trim()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text.trim());
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked_against_their_range() {
        let block = duration_between(Duration::from_millis(10), Duration::from_secs(60));
        assert_eq!(block("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(block("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(block("0s"), Err("must be from 10ms to 1m".to_owned()));
        assert!(block("61s").is_err());
        assert!(block("soon").is_err());
        assert_eq!(payload_bytes("2"), Ok(2));
        assert!(payload_bytes("1").is_err());
        assert!(payload_bytes(&(MAX_PAYLOAD_LIMIT + 1).to_string()).is_err());
    }
}
