//! Where an operation happens, as every span and metric point of one queue partition says it: the queue (the
//! `messaging.destination.name`, the same for every partition), the partition, the Redis server, and for a
//! consumer its group and name. Built once per partition, so the job path only copies what it already holds.

use std::sync::Arc;

use opentelemetry::KeyValue;

use super::semconv;
use crate::connection::ServerAddress;
use crate::keys::Keys;

/// The messaging attributes one partition's spans and metric points share.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The queue's name without a partition suffix.
    pub(crate) queue: Arc<str>,
    /// The partition's number as text; `None` for an unpartitioned queue.
    pub(crate) partition: Option<Arc<str>>,
    /// The Redis server; `None` on a Cluster.
    pub(crate) server: Option<ServerAddress>,
    /// The consumer group, for a consumer.
    pub(crate) group: Option<Arc<str>>,
    /// The consumer's name, for a consumer.
    pub(crate) consumer: Option<Arc<str>>,
}

impl Endpoint {
    /// A producer's view of the partition whose keys are `keys`.
    pub(crate) fn producer(keys: &Keys, server: Option<&ServerAddress>) -> Self {
        Self {
            queue: keys.base_queue().as_str().into(),
            partition: keys.partition().map(|p| p.to_string().into()),
            server: server.cloned(),
            group: None,
            consumer: None,
        }
    }

    /// A consumer's view: the producer's plus its group and name.
    pub(crate) fn consumer(keys: &Keys, server: Option<&ServerAddress>, group: &str, consumer: &str) -> Self {
        Self { group: Some(group.into()), consumer: Some(consumer.into()), ..Self::producer(keys, server) }
    }

    /// `server.address`.
    pub(crate) fn server_address(&self) -> Option<&str> {
        self.server.as_ref().map(|s| s.address.as_str())
    }

    /// `server.port`.
    pub(crate) fn server_port(&self) -> Option<i64> {
        self.server.as_ref().and_then(|s| s.port).map(i64::from)
    }

    /// The attributes a metric point of operation `name` carries: the system, the operation, the destination,
    /// the partition, the group (consumer side) and the server. `messaging.client.id` is left out: one series per
    /// consumer process would grow without bound as pods come and go.
    pub(crate) fn metric_attributes(&self, name: &'static str, with_group: bool) -> Vec<KeyValue> {
        let mut kvs = vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, semconv::MESSAGING_SYSTEM_REDIS),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, name),
            KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, self.queue.to_string()),
        ];
        if let Some(partition) = &self.partition {
            kvs.push(KeyValue::new(semconv::MESSAGING_DESTINATION_PARTITION_ID, partition.to_string()));
        }
        if let (true, Some(group)) = (with_group, &self.group) {
            kvs.push(KeyValue::new(semconv::MESSAGING_CONSUMER_GROUP_NAME, group.to_string()));
        }
        self.push_server(&mut kvs);
        kvs
    }

    /// Adds `server.address` and `server.port` when known.
    pub(crate) fn push_server(&self, kvs: &mut Vec<KeyValue>) {
        if let Some(address) = self.server_address() {
            kvs.push(KeyValue::new(semconv::SERVER_ADDRESS, address.to_owned()));
        }
        if let Some(port) = self.server_port() {
            kvs.push(KeyValue::new(semconv::SERVER_PORT, port));
        }
    }
}
