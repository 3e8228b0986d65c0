//! Redis connections: one pool per process, built from a `redis://` or `rediss://` URL, or, for a Redis
//! Cluster, from the URLs of some of its nodes (the client discovers the rest and follows MOVED/ASK).
//!
//! `rediss://` connects with TLS (rustls). The server's certificate is checked against the system's roots, or,
//! when a CA file is given, against that CA alone. ACL users go in the URL: `rediss://user:password@host:port`;
//! the password is never logged ([`redact`]).
//!
//! redis-rs gives multiplexed connections a 500 ms response time-out by default, which a blocking XREADGROUP
//! outlives; the pool here sets one that fits the longest blocking read the caller makes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Runtime};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

/// Why a connection could not be had from the pool.
pub(crate) type PoolError = deadpool_redis::PoolError;

/// A pool of connections to one Redis server or to a Redis Cluster, made by [`pool`]. Cheap to clone; every
/// producer, worker and inspector of a process can share one.
#[derive(Clone)]
pub struct Pool(Pools, Option<Arc<ServerAddress>>);

/// The Redis server a single-node pool talks to, as the spans' and metrics' `server.address` and
/// `server.port` name it (the host as the URL gives it, no DNS lookup; a Unix socket's path with no port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// Host name or IP address as written in the URL, or the socket path.
    pub address: String,
    /// TCP port; `None` for a Unix socket.
    pub port: Option<u16>,
}

impl ServerAddress {
    fn of(addr: &redis::ConnectionAddr) -> Option<Self> {
        match addr {
            redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                Some(Self { address: host.clone(), port: Some(*port) })
            }
            redis::ConnectionAddr::Unix(path) => Some(Self { address: path.display().to_string(), port: None }),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Pools {
    Single(deadpool_redis::Pool),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("cluster", &self.is_cluster()).finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection, waiting for one to be free.
    pub(crate) async fn get(&self) -> Result<Connection, PoolError> {
        match &self.0 {
            Pools::Single(pool) => pool.get().await.map(Connection::Single),
            Pools::Cluster(pool) => pool.get().await.map(Connection::Cluster),
        }
    }

    /// Whether a task is waiting for a connection: a [`Held`] one is then given back.
    pub(crate) fn contended(&self) -> bool {
        match &self.0 {
            Pools::Single(pool) => pool.status().waiting > 0,
            Pools::Cluster(pool) => pool.status().waiting > 0,
        }
    }

    /// The server a single-node pool talks to; `None` for a Cluster, whose node differs from key to key.
    pub fn server(&self) -> Option<&ServerAddress> {
        self.1.as_deref()
    }

    /// Whether the pool talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Pools::Cluster(_))
    }

    /// Checks that Redis answers (PING).
    pub async fn ping(&self) -> crate::Result<()> {
        let mut conn = self.get().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

/// A pooled connection one task (a reader, the acknowledger) keeps between back-to-back uses: taking one from
/// the pool costs a round trip (deadpool-redis checks each with `UNWATCH` + `PING`), per read or per XACK batch
/// otherwise. It is kept only after a use that succeeded, while no other task waits for a connection, and for
/// at most [`Held::IDLE`] unused; the holder gives it back ([`Held::release`]) before a wait of its own. A connection
/// that failed goes back to the pool, which checks it (and replaces a broken one) before handing it out again.
#[derive(Default)]
pub(crate) struct Held {
    conn: Option<(Connection, std::time::Instant)>,
}

impl Held {
    /// How long a kept connection may stay unused.
    pub(crate) const IDLE: Duration = Duration::from_millis(200);

    /// The kept connection when it was used less than [`Held::IDLE`] ago, else one from `pool`.
    pub(crate) async fn take(&mut self, pool: &Pool) -> Result<Connection, PoolError> {
        match self.conn.take() {
            Some((conn, used)) if used.elapsed() < Self::IDLE => Ok(conn),
            _ => pool.get().await,
        }
    }

    /// Keeps `conn`, just used successfully, unless another task is waiting for one of `pool`'s connections.
    pub(crate) fn keep(&mut self, pool: &Pool, conn: Connection) {
        if !pool.contended() {
            self.conn = Some((conn, std::time::Instant::now()));
        }
    }

    /// Gives the kept connection back to the pool.
    pub(crate) fn release(&mut self) {
        self.conn = None;
    }
}

/// A pooled connection; returns to the pool when dropped.
pub(crate) enum Connection {
    Single(deadpool_redis::Connection),
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes cluster connections with jobstream's time-outs (deadpool-redis's own cluster manager cannot set them,
/// and the default response time-out is shorter than a blocking read).
pub struct ClusterManager {
    client: redis::cluster::ClusterClient,
}

impl std::fmt::Debug for ClusterManager {
    /// Shows nothing of the client: its settings hold the nodes' passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager").finish_non_exhaustive()
    }
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        redis::cmd("PING").query_async::<String>(conn).await?;
        Ok(())
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// redis-rs refused the URL (for a cluster, the node URLs): it does not parse, or no client can be made from it.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as given, password redacted ([`redact`]).
        url: String,
        /// Why redis-rs refused it.
        reason: String,
    },
    /// The pool could not be built from valid settings; holds the cause's text.
    #[error("cannot build the Redis connection pool: {0}")]
    Pool(String),
    /// [`PoolSettings::ca_file`] could not be read.
    #[error("cannot read the Redis CA file {path}: {source}")]
    CaFile {
        /// The CA file's path.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A CA file was given with a `redis://` URL, which does not use TLS.
    #[error("a Redis CA file is only used with TLS: the URL must start with rediss://, not {url}")]
    CaWithoutTls {
        /// The URL as given, password redacted ([`redact`]).
        url: String,
    },
    /// The settings ask for something jobstream cannot do, e.g. a CA file with a cluster; holds what.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The cluster pool could not be built from valid settings; holds the cause's text.
    #[error("cannot build the Redis cluster connection pool: {0}")]
    ClusterPool(String),
}

/// Settings of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_size: usize,
    /// How long a command may wait for its reply; longer than any blocking read.
    pub response_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// PEM file of the CA that signed the server's certificate (`rediss://` only); `None` uses the system's.
    pub ca_file: Option<PathBuf>,
    /// Treat the URL(s) as nodes of a Redis Cluster.
    pub cluster: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            ca_file: None,
            cluster: false,
        }
    }
}

/// Builds a pool. No connection is opened until the first command. For a cluster, `url` may list several
/// nodes, separated by commas.
pub fn pool(url: &str, settings: &PoolSettings) -> Result<Pool, ConnectError> {
    if settings.cluster {
        return cluster_pool(url, settings);
    }
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(settings.connect_timeout));
    let invalid = |source: redis::RedisError| ConnectError::InvalidUrl { url: redact(url), reason: source.to_string() };
    let info = url.into_connection_info().map_err(invalid)?;
    let info = match &settings.ca_file {
        None => info,
        Some(path) => {
            if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                return Err(ConnectError::CaWithoutTls { url: redact(url) });
            }
            let root_cert = std::fs::read(path)
                .map_err(|source| ConnectError::CaFile { path: path.display().to_string(), source })?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(info, certificates).map_err(invalid)?.get_connection_info().clone()
        }
    };
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        install_tls_provider();
    }
    let server = ServerAddress::of(info.addr()).map(Arc::new);
    let manager = Manager::new_with_config(info, config).map_err(invalid)?;
    Ok(Pool(
        Pools::Single(
            deadpool_redis::Pool::builder(manager)
                .max_size(settings.max_size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(settings.connect_timeout + settings.response_timeout))
                .create_timeout(Some(settings.connect_timeout))
                .build()
                .map_err(|e| ConnectError::Pool(e.to_string()))?,
        ),
        server,
    ))
}

fn cluster_pool(urls: &str, settings: &PoolSettings) -> Result<Pool, ConnectError> {
    if settings.ca_file.is_some() {
        return Err(ConnectError::Unsupported("a Redis CA file with a cluster (use the system's roots)"));
    }
    let invalid =
        |source: redis::RedisError| ConnectError::InvalidUrl { url: redact(urls), reason: source.to_string() };
    let nodes: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    let client = ClusterClientBuilder::new(nodes)
        .response_timeout(settings.response_timeout)
        .connection_timeout(settings.connect_timeout)
        .build()
        .map_err(invalid)?;
    if urls.split(',').any(|u| u.trim_start().starts_with("rediss://")) {
        install_tls_provider();
    }
    let pool = deadpool::managed::Pool::builder(ClusterManager { client })
        .max_size(settings.max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout + settings.response_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| ConnectError::ClusterPool(e.to_string()))?;
    Ok(Pool(Pools::Cluster(pool), None))
}

/// rustls needs a process-wide crypto provider; a second install (another pool) is refused harmlessly.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The URL with its password replaced by `***`, for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact("redis://worker:s3cret@h:1"), "redis://worker:***@h:1");
        assert_eq!(redact("rediss://:s3cret@h:1"), "rediss://:***@h:1");
        assert_eq!(redact("redis://s3cret@h:1"), "redis://***@h:1");
    }
}
