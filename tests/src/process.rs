//! The workspace's binaries as real processes: where they are, commands traced to a sink, long-running services
//! with their logs, and `producer enqueue` with its output parsed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{wait_until, OtlpSink, RedisServer};

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

/// A workspace binary with nothing but Redis, JSON logs and backtraces on in its environment: a user error must
/// still be one line when `RUST_BACKTRACE=1` is set.
pub fn plain(name: &str, redis: &RedisServer) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .env("JOBSTREAM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1");
    cmd
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

/// A consumer command for `queue` with fast polling and the given extra flags; traced to `sink`.
/// Runs `cmd` (a `producer` command) as `enqueue --queue <queue> --kind <kind>` with `flags` (one job) and
/// returns its `<job id> <trace id>` line.
pub fn enqueue_with(mut cmd: Command, queue: &str, kind: &str, flags: &[&str]) -> EnqueuedLine {
    let out = cmd.args(["enqueue", "--queue", queue, "--kind", kind]).args(flags).output().expect("run producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {text}");
    let (job_id, trace_id) = lines[0].split_once(' ').unwrap_or_else(|| panic!("bad producer line {text:?}"));
    EnqueuedLine { job_id: job_id.to_owned(), trace_id: trace_id.to_owned() }
}

pub fn consumer(redis: &RedisServer, sink: &OtlpSink, queue: &str, name: &str, extra: &[&str]) -> Command {
    let mut cmd = traced("consumer", redis, sink, "test-consumer");
    cmd.args(["--queue", queue, "--consumer", name, "--block", "200ms", "--listen", "127.0.0.1:0"])
        .args(["--demo-latency-scale", "0", "--demo-failure-rate", "0"])
        .args(extra);
    cmd
}

/// A process's stderr without its JSON log lines: what a user reads as the error.
pub fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .map(str::to_owned)
        .collect()
}
