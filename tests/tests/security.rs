//! TLS and least-privilege ACL users: the whole flow (enqueue, run, retry, dead-letter, stats) over `rediss://`
//! as a user limited to one queue's keys and the commands jobstream needs (the ACL docs/security.md recommends),
//! against a redis-server with certificates made in the test. Wrong setups fail with clear errors, and the
//! password never shows in logs, errors or `--help`.

use std::process::Command;
use std::time::Duration;

use jobstream_tests::*;

const PASSWORD: &str = "s3cret-Pa55word";

/// The recommended ACL (docs/security.md) for the queue `secure`.
const ACL: &[&str] = &[
    "on",
    "resetkeys",
    "~jobstream:{secure}*",
    "resetchannels",
    "-@all",
    "+ping",
    "+multi",
    "+exec",
    "+evalsha",
    "+eval",
    "+script|load",
    "+xadd",
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xgroup|create",
    "+xgroup|delconsumer",
    "+xinfo|groups",
    "+type",
    "+xinfo|stream",
    "+xinfo|consumers",
    "+xlen",
    "+xrange",
    "+xtrim",
    "+xdel",
    "+zadd",
    "+zrangebyscore",
    "+zrem",
    "+zcard",
    "+hincrby",
    "+hset",
    "+hmget",
    "+hgetall",
    "+get",
    "+set",
    "+exists",
    "+pexpire",
    "+del",
];

/// TLS handshakes in debug builds on a loaded 2-core machine can outlast the default 3 s connect time-out;
/// these tests are about what fails and why, not how fast.
const CONNECT_TIMEOUT: &str = "30s";

fn secured(mut cmd: Command, redis: &RedisServer, userinfo: &str) -> Command {
    cmd.env("REDIS_URL", redis.tls_url(userinfo))
        .env("JOBSTREAM_REDIS_CA_FILE", redis.ca_file())
        .env("JOBSTREAM_REDIS_CONNECT_TIMEOUT", CONNECT_TIMEOUT);
    cmd
}

fn create_user(redis: &RedisServer) {
    let mut conn = redis.conn();
    redis::cmd("ACL").arg("SETUSER").arg("worker").arg(ACL).arg(format!(">{PASSWORD}")).query::<()>(&mut conn).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_over_tls_as_a_least_privilege_user() {
    let redis = RedisServer::start_tls();
    create_user(&redis);
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let user = format!("worker:{PASSWORD}");
    let flags = ["--demo-failure-rate", "0.5", "--max-attempts", "2", "--retry-base-delay", "20ms"];
    let worker =
        Service::spawn(secured(consumer(&redis, &sink, "secure", "w", &flags), &redis, &user), logs.path(), "w");
    let jobs = enqueue(secured(traced("producer", &redis, &sink, "p"), &redis, &user), "secure", "demo", "{}", 40);

    let mut conn = redis.conn();
    // Runs are recorded before their (batched) acknowledgement: wait for both.
    wait_until(Duration::from_secs(60), "every job done or dead, and acknowledged", || {
        done_counts(&mut conn, "secure").len() as u64 + xlen(&mut conn, &keys("secure").dead) == 40
            && pending(&mut conn, "secure", "workers") == 0
    });
    let dead = xlen(&mut conn, &keys("secure").dead);
    assert!(
        dead > 0 && dead < 40,
        "with half the attempts failing and 2 attempts each, about a quarter die: {dead} dead"
    );

    let stats = secured(Command::new(bin("producer")), &redis, &user)
        .args(["stats", "--queue", "secure", "--json"])
        .output()
        .unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    assert!(String::from_utf8_lossy(&stats.stdout).contains(&format!("\"dead\":{dead}")), "{stats:?}");

    // Spans still join across TLS.
    let spans = sink
        .wait_for(Duration::from_secs(20), |spans| !named(spans, &jobs[0].trace_id, "process secure").is_empty())
        .await
        .unwrap_or_else(|spans| panic!("no process span: {spans:#?}"));
    assert!(!named(&spans, &jobs[0].trace_id, "send secure").is_empty());

    // The user can do nothing else.
    for denied in [&["FLUSHALL"][..], &["GET", &keys("other").stream], &["KEYS", "*"], &["CONFIG", "GET", "*"]] {
        let reply: String =
            redis::cmd("ACL").arg("DRYRUN").arg("worker").arg(denied).query(&mut conn).unwrap_or_default();
        assert!(reply.contains("no permissions"), "{denied:?} allowed: {reply}");
    }
    let log = worker.log();
    drop(worker);
    assert!(!log.contains(PASSWORD), "the password is in the consumer's log");
}

#[test]
fn wrong_tls_or_credentials_fail_clearly_without_showing_the_password() {
    let redis = RedisServer::start_tls();
    create_user(&redis);
    let tls_port_as_plain = redis.tls_url("").replace("rediss://@", "redis://");
    let cases: [(&str, String, bool, &str); 4] = [
        ("plaintext to the TLS port", tls_port_as_plain, true, ""),
        ("a CA that did not sign the server", redis.tls_url(&format!("worker:{PASSWORD}")), false, "certificate"),
        ("a wrong password", redis.tls_url("worker:wrong-password"), true, "authentication failed"),
        ("a CA file with redis://", redis.url(), true, "rediss://"),
    ];
    for (what, url, with_ca, expected) in cases {
        let mut cmd = Command::new(bin("producer"));
        cmd.env("REDIS_URL", &url)
            .env("RUST_BACKTRACE", "0")
            .env("JOBSTREAM_REDIS_CONNECT_TIMEOUT", CONNECT_TIMEOUT)
            .args(["stats", "--queue", "secure"]);
        if with_ca {
            cmd.env("JOBSTREAM_REDIS_CA_FILE", redis.ca_file());
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{what}: the password shows: {stderr}");
    }
    let help = Command::new(bin("consumer"))
        .env("REDIS_URL", redis.tls_url(&format!("worker:{PASSWORD}")))
        .arg("--help")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(PASSWORD), "--help shows the password");
}
