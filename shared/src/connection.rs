//! Redis connections: one pool per process, built from a `redis://` or `rediss://` URL.
//!
//! `rediss://` connects with TLS (rustls). The server's certificate is checked against the system's roots, or,
//! when a CA file is given, against that CA alone. ACL users go in the URL: `rediss://user:password@host:port`;
//! the password is never logged ([`redact`]).
//!
//! redis-rs gives multiplexed connections a 500 ms response time-out by default, which a blocking XREADGROUP
//! outlives; the pool here sets one that fits the longest blocking read the caller makes.

use std::path::PathBuf;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl { url: String, source: redis::RedisError },
    #[error("cannot build the Redis connection pool: {0}")]
    Pool(#[from] deadpool_redis::BuildError),
    #[error("cannot read the Redis CA file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("a Redis CA file is only used with TLS: the URL must start with rediss://, not {url}")]
    CaWithoutTls { url: String },
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
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            ca_file: None,
        }
    }
}

/// Builds a pool. No connection is opened until the first command.
pub fn pool(url: &str, settings: &PoolSettings) -> Result<Pool, ConnectError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(settings.connect_timeout));
    let invalid = |source| ConnectError::InvalidUrl { url: redact(url), source };
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
        // rustls needs a process-wide crypto provider; a second install (another pool) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let manager = Manager::new_with_config(info, config).map_err(invalid)?;
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
