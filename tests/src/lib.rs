//! Test helpers shared by the end-to-end tests: a private `redis-server` per test, the built `producer` and
//! `consumer` binaries run as real processes, and polling helpers that wait on a condition with a deadline.
//!
//! The binaries are found next to the test executable's `deps/` folder; `scripts/test` builds them first.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use jobstream_otlp_sink::{OtlpSink, ReceivedSpan};

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

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The path of a workspace binary built next to this test, or in `JOBSTREAM_BIN_DIR` when that is set (to run
/// the tests against other binaries, e.g. an earlier commit's, and see a test for a defect fail on it).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("JOBSTREAM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// A `Command` for a workspace binary with tracing pointed at `sink` (http/protobuf) under `service`.
pub fn traced(name: &str, redis: &RedisServer, sink: &OtlpSink, service: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("JOBSTREAM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    cmd
}

/// A running jobstream process (consumer or `producer serve`); SIGKILLed on drop if still running.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with its stderr in a log file under `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("consumer log");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().expect("spawn consumer");
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let status = self.child.wait().expect("wait for consumer");
        status.code()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The address its health server bound, read from its `serving /healthz…` log line.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        let mut found = None;
        wait_until(Duration::from_secs(20), "the health server's address in the log", || {
            found = self.log().lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                v.get("listen")?.as_str()?.parse().ok()
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Waits for the exit; returns the exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("wait for process").code()
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit code, or `None` when it is
    /// still running at the deadline (it is then killed on drop).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One line of `producer enqueue` output.
#[derive(Debug, Clone)]
pub struct EnqueuedLine {
    pub job_id: String,
    pub trace_id: String,
}

/// Runs `producer enqueue` and parses its output; panics with its stderr on failure.
pub fn enqueue(mut cmd: Command, queue: &str, kind: &str, payload: &str, count: u32) -> Vec<EnqueuedLine> {
    let out = cmd
        .args(["enqueue", "--queue", queue, "--kind", kind, "--payload", payload, "--count", &count.to_string()])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<EnqueuedLine> = String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| {
            let (job_id, trace_id) = line.split_once(' ').unwrap_or_else(|| panic!("bad producer line {line:?}"));
            EnqueuedLine { job_id: job_id.to_owned(), trace_id: trace_id.to_owned() }
        })
        .collect();
    assert_eq!(lines.len(), count as usize, "one line per job");
    lines
}

/// The `done` hash of a queue: job id → successful runs.
pub fn done_counts(conn: &mut redis::Connection, queue: &str) -> std::collections::HashMap<String, u64> {
    redis::cmd("HGETALL").arg(format!("jobstream:{{{queue}}}:done")).query(conn).expect("HGETALL done")
}

/// Number of entries pending in the queue's group.
pub fn pending(conn: &mut redis::Connection, queue: &str, group: &str) -> u64 {
    let summary: redis::Value =
        redis::cmd("XPENDING").arg(format!("jobstream:{{{queue}}}")).arg(group).query(conn).expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Number of entries pending for one consumer of the group.
pub fn pending_of(conn: &mut redis::Connection, queue: &str, group: &str, consumer: &str) -> u64 {
    let rows: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(format!("jobstream:{{{queue}}}"))
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query(conn)
        .expect("XPENDING for one consumer");
    rows.len() as u64
}

/// The spans of one trace with a given name.
pub fn named<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id && s.name == name).collect()
}

/// Writes an entry straight to a queue's stream, as any Redis client could; returns its id.
pub fn xadd_raw(conn: &mut redis::Connection, queue: &str, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(format!("jobstream:{{{queue}}}")).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query(conn).expect("XADD")
}

/// The valid fields of a job of `kind`, as a producer in any language would write them.
pub fn job_fields(kind: &str) -> Vec<(String, String)> {
    vec![
        ("v".into(), "1".into()),
        ("id".into(), jobstream::JobId::new().to_string()),
        ("kind".into(), kind.into()),
        ("payload".into(), "{}".into()),
        ("enqueued_at".into(), jobstream::clock::now_ms().to_string()),
        ("attempt".into(), "1".into()),
    ]
}

/// The dead stream's entries, fields as text.
pub fn dead_entries(conn: &mut redis::Connection, queue: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("jobstream:{{{queue}}}:dead"))
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE dead");
    reply.ids.into_iter().map(|entry| jobstream::admin::lossy(entry.map)).collect()
}

/// Length of a key's stream (0 when missing).
pub fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).expect("XLEN")
}

/// A consumer command for `queue` with fast polling and the given extra flags; traced to `sink`.
pub fn consumer(redis: &RedisServer, sink: &OtlpSink, queue: &str, name: &str, extra: &[&str]) -> Command {
    let mut cmd = traced("consumer", redis, sink, "test-consumer");
    cmd.args(["--queue", queue, "--consumer", name, "--block", "200ms", "--listen", "127.0.0.1:0"])
        .args(["--demo-latency-scale", "0", "--demo-failure-rate", "0"])
        .args(extra);
    cmd
}

/// A plain HTTP/1.1 GET on loopback; returns the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

/// A plain HTTP/1.1 request; returns the status code and the body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A plain HTTP/1.1 request on loopback; returns the status code, the response head (status line and
/// headers, as sent) and the body.
pub fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len())
            .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, head.to_owned(), body)
}
