//! Private Redis servers: one `redis-server` per test on a free loopback port in a temp dir (plain, with an AOF,
//! with TLS and certificates made by `openssl`), and a Redis Cluster of such servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

/// A `redis-server` of this test's own, on a free loopback port, in a temp dir; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    /// TLS port, when started with [`RedisServer::start_tls`]; certificates are in `dir`.
    tls_port: Option<u16>,
    /// Further `redis-server` arguments.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server; with `appendonly`, every write is fsynced to an AOF so a restart keeps it.
    pub fn start_with(appendonly: bool) -> Self {
        Self::launch(tempfile::tempdir().expect("temp dir"), appendonly, None, Vec::new())
    }

    /// Starts a server on a free port with its data in `dir`, and waits until it answers.
    fn launch(dir: tempfile::TempDir, appendonly: bool, tls_port: Option<u16>, extra: Vec<String>) -> Self {
        let mut server = Self { child: None, port: free_port(), dir, appendonly, tls_port, extra };
        server.spawn();
        server
    }

    /// Starts a server without persistence and with further `redis-server` arguments (e.g. `--maxmemory 3mb`).
    pub fn start_args(extra: &[&str]) -> Self {
        Self::launch(tempfile::tempdir().expect("temp dir"), false, None, extra.iter().map(|s| s.to_string()).collect())
    }

    /// Starts a server that also serves TLS on a second port, with a CA and a certificate for 127.0.0.1 made
    /// here by `openssl` (the plain port stays open for the test's own assertions).
    pub fn start_tls() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        make_certificates(dir.path());
        Self::launch(dir, false, Some(free_port()), Vec::new())
    }

    /// `rediss://<userinfo>@127.0.0.1:<tls port>`.
    pub fn tls_url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}@127.0.0.1:{}", self.tls_port.expect("started with start_tls"))
    }

    /// The CA certificate that signed the server's TLS certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no");
        if let Some(tls_port) = self.tls_port {
            let file = |name: &str| self.dir.path().join(name);
            cmd.arg("--tls-port").arg(tls_port.to_string());
            cmd.arg("--tls-cert-file").arg(file("server.pem")).arg("--tls-key-file").arg(file("server.key"));
            cmd.arg("--tls-ca-cert-file").arg(file("ca.pem")).arg("--tls-auth-clients").arg("no");
        }
        cmd.args(&self.extra);
        if self.appendonly {
            cmd.arg("--appendonly").arg("yes").arg("--appendfsync").arg("always");
        } else {
            cmd.arg("--appendonly").arg("no");
        }
        let child = cmd
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "redis-server to accept connections", || {
            redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// The port it listens on (plaintext).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().expect("connect to the test redis")
    }

    /// Kills the server with SIGKILL (no chance to save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (an AOF, if on, is loaded).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of primaries on loopback, each persisting to an AOF (fsync always), created with
/// `redis-cli --cluster create`. Surviving shards keep serving when one dies (`cluster-require-full-coverage no`).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` nodes and joins them into a cluster, waiting until every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                let dir = tempfile::tempdir().expect("temp dir");
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-port",
                    &free_port().to_string(),
                ];
                RedisServer::launch(dir, true, None, extra.iter().map(|s| s.to_string()).collect())
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        wait_until(Duration::from_secs(30), "cluster_state:ok on every node", || {
            self.nodes.iter().filter(|node| node.child.is_some()).all(|node| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut node.conn())
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
    }

    /// Seed URLs for `--redis-cluster`: every node, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

/// What a plain connection to one cluster node answers for `cmd` on a key it may not own: `None` on MOVED.
pub fn on_node<T: redis::FromRedisValue>(node: &RedisServer, cmd: &redis::Cmd) -> Option<T> {
    match cmd.query::<T>(&mut node.conn()) {
        Ok(value) => Some(value),
        Err(e) if e.to_string().to_ascii_uppercase().contains("MOVED") => None,
        Err(e) => panic!("{e}"),
    }
}

/// Makes `ca.pem`/`ca.key` and `server.pem`/`server.key` (for IP 127.0.0.1, signed by the CA) in `dir`.
pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=jobstream test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "ext.cnf",
    ]);
}
