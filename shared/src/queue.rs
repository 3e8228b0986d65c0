//! A queue as its users name it: a name, the prefix of its Redis keys and its number of partitions. Producers,
//! workers and inspectors all take a [`Queue`]; the Redis keys are derived from it inside the crate.

use crate::error::Result;
use crate::keys::{Keys, QueueName, DEFAULT_PREFIX};

/// Most partitions a queue may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// A queue: its name, key prefix and partition count. Cheap to clone.
///
/// ```
/// let queue = jobstream::Queue::new("emails")?.with_partitions(4)?;
/// assert_eq!(queue.name().as_str(), "emails");
/// # Ok::<(), jobstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: QueueName,
    prefix: String,
    partitions: u32,
}

impl Queue {
    /// The queue `name` (1 to 128 characters of letters, digits and `. _ - :`), with the default prefix
    /// (`jobstream`) and one partition.
    pub fn new(name: &str) -> Result<Self> {
        Ok(Self { name: QueueName::parse(name)?, prefix: DEFAULT_PREFIX.to_owned(), partitions: 1 })
    }

    /// The same queue under another key prefix (every key is `<prefix>:{<queue>}…`).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        Keys::new(prefix, &self.name)?;
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The same queue split into `partitions` streams (`<queue>:0` … `<queue>:<n-1>`, each its own hash slot in
    /// a Redis Cluster). Every producer and worker of a queue must agree: the first records the count in Redis
    /// and the others refuse another.
    pub fn with_partitions(mut self, partitions: u32) -> Result<Self> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(crate::Error::Config(format!(
                "a queue has 1 to {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        self.partitions = partitions;
        Ok(self)
    }

    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// The prefix of its keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many partitions it has.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The keys of each partition (one for an unpartitioned queue).
    pub(crate) fn partition_keys(&self) -> Vec<Keys> {
        Keys::partitioned(&self.prefix, &self.name, self.partitions).expect("checked when the queue was made")
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.name.fmt(f)
    }
}
