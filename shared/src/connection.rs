//! Redis connections: one pool per process, built from a `redis://` or `rediss://` URL.
//!
//! redis-rs gives multiplexed connections a 500 ms response time-out by default, which a blocking XREADGROUP
//! outlives; the pool here sets one that fits the longest blocking read the caller makes.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl { url: String, source: redis::RedisError },
    #[error("cannot build the Redis connection pool: {0}")]
    Pool(#[from] deadpool_redis::BuildError),
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
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_size: 16, response_timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(3) }
    }
}

/// Builds a pool. No connection is opened until the first command.
pub fn pool(url: &str, settings: &PoolSettings) -> Result<Pool, ConnectError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(settings.connect_timeout));
    let manager = Manager::new_with_config(url, config)
        .map_err(|source| ConnectError::InvalidUrl { url: redact(url), source })?;
    Ok(Pool::builder(manager)
        .max_size(settings.max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout + settings.response_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .build()?)
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
