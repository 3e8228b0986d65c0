//! The retention policy removes only entries every group has received and acknowledged.

use std::time::Duration;

use jobstream::{admin, Keys, QueueName};
use jobstream_tests::*;

fn ids(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(conn).unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn trimming_keeps_every_entry_a_group_still_needs() {
    let redis = RedisServer::start();
    let keys = Keys::new("jobstream", &QueueName::parse("kept").unwrap()).unwrap();
    let mut sync = redis.conn();
    let all: Vec<String> = (0..10).map(|i| xadd_raw(&mut sync, "kept", &[("n", i.to_string().as_bytes())])).collect();
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&keys.stream).arg("workers").arg("0").query(&mut sync).unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", "c", "COUNT", "5", "STREAMS", keys.stream.as_str(), ">"][..])
        .query(&mut sync)
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg(&keys.stream)
        .arg("workers")
        .arg(&all[0])
        .arg(&all[1])
        .arg(&all[3])
        .query(&mut sync)
        .unwrap();

    let pool = jobstream::connection::pool(&redis.url(), &Default::default()).unwrap();
    let trimmed = admin::trim(&pool, &keys, Some(Duration::ZERO), None).await.unwrap();
    assert_eq!(trimmed.0, 2, "only the two acknowledged entries before the oldest pending one go");
    assert_eq!(
        ids(&mut sync, &keys.stream),
        all[2..].to_vec(),
        "pending (3rd, 5th), acked-after-pending (4th) and undelivered stay"
    );

    // A second group that has read nothing pins everything.
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&keys.stream).arg("audit").arg("0").query(&mut sync).unwrap();
    let _: u64 =
        redis::cmd("XACK").arg(&keys.stream).arg("workers").arg(&all[2]).arg(&all[4]).query(&mut sync).unwrap();
    assert_eq!(admin::trim(&pool, &keys, Some(Duration::ZERO), None).await.unwrap().0, 0);
    let _: () = redis::cmd("XGROUP").arg("DESTROY").arg(&keys.stream).arg("audit").query(&mut sync).unwrap();

    // With everything delivered acknowledged, only the undelivered remain.
    assert_eq!(admin::trim(&pool, &keys, Some(Duration::ZERO), None).await.unwrap().0, 3);
    assert_eq!(ids(&mut sync, &keys.stream), all[5..].to_vec());

    // Entries younger than the retention stay even when acknowledged.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", "c", "STREAMS", keys.stream.as_str(), ">"][..])
        .query(&mut sync)
        .unwrap();
    let _: u64 = redis::cmd("XACK").arg(&keys.stream).arg("workers").arg(&all[5..]).query(&mut sync).unwrap();
    assert_eq!(admin::trim(&pool, &keys, Some(Duration::from_secs(3600)), None).await.unwrap().0, 0);

    // A stream with no group is never trimmed.
    let lonely = Keys::new("jobstream", &QueueName::parse("lonely").unwrap()).unwrap();
    xadd_raw(&mut sync, "lonely", &[("n", b"1")]);
    assert_eq!(admin::trim(&pool, &lonely, Some(Duration::ZERO), Some(Duration::ZERO)).await.unwrap(), (0, 0));
}
