//! Latency probes for load tests: measured inside the workers, collected by the load generator.
//!
//! `producer load` marks each job with two extra entry fields (unknown fields are kept and ignored, so any
//! worker can run marked jobs): [`RUN_FIELD`], the run's id (a UUID), and [`SENT_FIELD`], the unix time in µs at
//! which the job was due to be sent. A worker that sees a mark records, in HDR histograms per run, the time from
//! then to the handler's start (first attempts only) and to the acknowledgement (once XACK answered), and
//! publishes its histograms every [`PUBLISH_EVERY`] to the hash `<prefix>:{Q}:load:<run>`, three fields per
//! consumer. The load generator merges what every consumer published. A marked job costs the worker two histogram
//! increments; publishing costs one HSET per consumer per period, so the probes do not load what they measure.
//!
//! The times come from the wall clocks of different processes: on one machine they agree; across machines,
//! clock skew adds to (or takes from) every figure.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::job::Job;
use crate::keys::Keys;

/// Entry field holding the load-test run a job belongs to.
pub const RUN_FIELD: &str = "load_run";
/// Entry field holding when the job was due to be sent, unix µs.
pub const SENT_FIELD: &str = "load_sent_us";
/// How often a worker publishes its histograms.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How long the published histograms stay in Redis after the last update.
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// Most runs a worker tracks at once; marks of further runs are ignored (with a warning).
const MAX_RUNS: usize = 16;
/// A run not seen for this long is forgotten by the worker.
const RUN_IDLE: Duration = Duration::from_secs(600);
/// Largest latency a histogram holds, µs (1 hour); larger values are counted as this.
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in µs, 3 significant figures, up to one hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// The two fields that mark a job as part of load-test run `run`, sent (or due) at `sent_us`.
pub fn mark_fields(run: &Uuid, sent_us: u64) -> [(String, String); 2] {
    [(RUN_FIELD.to_owned(), run.hyphenated().to_string()), (SENT_FIELD.to_owned(), sent_us.to_string())]
}

/// Why a run's published histograms could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Reading the run's hashes from Redis failed.
    #[error(transparent)]
    Redis(#[from] crate::Error),
    /// A field of a run's hash is not what a worker publishes: a bad name, a histogram that does not
    /// deserialize or merge, a time that is not a number.
    #[error("field {field:?} of the run's hash is not a histogram: {reason}")]
    Corrupt {
        /// The field's name, `<consumer>:start`, `:ack` or `:last` when well formed.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

struct RunState {
    start: Histogram<u64>,
    ack: Histogram<u64>,
    last_ack_us: u64,
    version: u64,
    published: u64,
    last_seen: Instant,
}

struct Run {
    id: String,
    state: Mutex<RunState>,
}

impl Run {
    fn update(&self, f: impl FnOnce(&mut RunState)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state);
        state.version += 1;
        state.last_seen = Instant::now();
    }
}

/// A job's probe mark, resolved to its run.
#[derive(Clone)]
pub struct Mark {
    run: Arc<Run>,
    sent_us: u64,
}

impl std::fmt::Debug for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mark").field("run", &self.run.id).field("sent_us", &self.sent_us).finish()
    }
}

/// The probe histograms of one worker, per run.
#[derive(Default)]
pub struct Probes {
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl std::fmt::Debug for Probes {
    /// Shows the ids of the runs measured, not their histograms.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<&str> = runs.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Probes").field("runs", &ids).finish_non_exhaustive()
    }
}

impl Probes {
    /// The job's mark, if it carries a valid one.
    pub fn mark(&self, job: &Job) -> Option<Mark> {
        let run = job.extra.get(RUN_FIELD)?;
        let sent_us = job.extra.get(SENT_FIELD)?.parse::<u64>().ok()?;
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = runs.get(run.as_str()) {
            return Some(Mark { run: found.clone(), sent_us });
        }
        let id = Uuid::parse_str(run).ok()?.hyphenated().to_string();
        if runs.len() >= MAX_RUNS {
            runs.retain(|_, r| r.state.lock().unwrap_or_else(PoisonError::into_inner).last_seen.elapsed() < RUN_IDLE);
        }
        if runs.len() >= MAX_RUNS {
            tracing::warn!(run = %id, max = MAX_RUNS, "too many load-test runs at once; this one is not measured here");
            return None;
        }
        let state = RunState {
            start: histogram(),
            ack: histogram(),
            last_ack_us: 0,
            version: 0,
            published: 0,
            last_seen: Instant::now(),
        };
        let new = Arc::new(Run { id: id.clone(), state: Mutex::new(state) });
        runs.insert(id, new.clone());
        Some(Mark { run: new, sent_us })
    }

    /// Records that the handler of a marked job starts now.
    pub fn started(&self, mark: &Mark) {
        let latency = crate::clock::now_us().saturating_sub(mark.sent_us);
        mark.run.update(|s| s.start.saturating_record(latency.max(1)));
    }

    /// Records that marked jobs were acknowledged now.
    pub fn acked<'a>(&self, marks: impl IntoIterator<Item = &'a Mark>) {
        let now = crate::clock::now_us();
        for mark in marks {
            mark.run.update(|s| {
                s.ack.saturating_record(now.saturating_sub(mark.sent_us).max(1));
                s.last_ack_us = s.last_ack_us.max(now);
            });
        }
    }

    /// Serialized histograms of every run that changed since its last [`Probes::published`].
    pub fn changed(&self) -> Vec<Snapshot> {
        let runs: Vec<Arc<Run>> = self.runs.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        let mut out = Vec::new();
        for run in runs {
            let state = run.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.version == state.published {
                continue;
            }
            let mut start = Vec::new();
            let mut ack = Vec::new();
            let mut serializer = V2Serializer::new();
            if serializer.serialize(&state.start, &mut start).is_err()
                || serializer.serialize(&state.ack, &mut ack).is_err()
            {
                tracing::warn!(run = %run.id, "cannot serialize a latency histogram");
                continue;
            }
            out.push(Snapshot { run: run.clone(), version: state.version, start, ack, last_ack_us: state.last_ack_us });
        }
        out
    }

    /// Notes that `snapshots` reached Redis.
    pub fn published(&self, snapshots: &[Snapshot]) {
        for snapshot in snapshots {
            let mut state = snapshot.run.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.published = state.published.max(snapshot.version);
        }
    }
}

/// One run's histograms of one worker, ready to publish.
pub struct Snapshot {
    run: Arc<Run>,
    version: u64,
    start: Vec<u8>,
    ack: Vec<u8>,
    last_ack_us: u64,
}

impl std::fmt::Debug for Snapshot {
    /// Shows the run and the sizes of the serialized histograms, not their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("run", &self.run.id)
            .field("version", &self.version)
            .field("start_bytes", &self.start.len())
            .field("ack_bytes", &self.ack.len())
            .field("last_ack_us", &self.last_ack_us)
            .finish()
    }
}

/// Writes `snapshots` as `consumer`'s fields of each run's hash, in one pipeline.
pub(crate) async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    consumer: &str,
    snapshots: &[Snapshot],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for s in snapshots {
        let key = keys.load_run(&s.run.id);
        pipe.cmd("HSET")
            .arg(&key)
            .arg(format!("{consumer}:start"))
            .arg(&s.start)
            .arg(format!("{consumer}:ack"))
            .arg(&s.ack)
            .arg(format!("{consumer}:last"))
            .arg(s.last_ack_us)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(KEY_TTL.as_millis() as u64)
            .ignore();
    }
    pipe.query_async(conn).await
}

/// What every worker published for one run, merged.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Due-to-send → handler start, µs, first attempts.
    pub start: Histogram<u64>,
    /// Due-to-send → acknowledged, µs.
    pub ack: Histogram<u64>,
    /// When the last acknowledgement happened, unix µs; 0 if none.
    pub last_ack_us: u64,
    /// How many consumer processes reported (a consumer is counted once over all partitions).
    pub consumers: usize,
}

impl Default for RunReport {
    fn default() -> Self {
        Self { start: histogram(), ack: histogram(), last_ack_us: 0, consumers: 0 }
    }
}

/// Reads and merges what the workers published for `run` on every partition of a queue.
pub async fn read(pool: &crate::connection::Pool, partitions: &[Keys], run: &Uuid) -> Result<RunReport, ProbeError> {
    let conn = &mut pool.get().await.map_err(crate::Error::from)?;
    let mut fields = Vec::new();
    for keys in partitions {
        let key = keys.load_run(&run.hyphenated().to_string());
        let hash: HashMap<String, Vec<u8>> =
            redis::cmd("HGETALL").arg(&key).query_async(&mut *conn).await.map_err(crate::Error::from)?;
        fields.extend(hash);
    }
    merge(fields)
}

/// Merges the fields of a run's hashes.
fn merge(fields: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<RunReport, ProbeError> {
    let mut report = RunReport::default();
    let mut consumers = std::collections::HashSet::new();
    let mut deserializer = Deserializer::new();
    for (field, value) in fields {
        let corrupt = |reason: String| ProbeError::Corrupt { field: field.clone(), reason };
        let Some((consumer, what)) = field.rsplit_once(':') else {
            return Err(corrupt("no `<consumer>:` prefix".into()));
        };
        match what {
            "start" | "ack" => {
                let h: Histogram<u64> =
                    deserializer.deserialize(&mut Cursor::new(&value)).map_err(|e| corrupt(format!("{e:?}")))?;
                let into = if what == "start" { &mut report.start } else { &mut report.ack };
                into.add(&h).map_err(|e| corrupt(format!("{e:?}")))?;
                if what == "ack" {
                    consumers.insert(consumer.to_owned());
                }
            }
            "last" => {
                let last = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| corrupt("not a number".into()))?;
                report.last_ack_us = report.last_ack_us.max(last);
            }
            other => return Err(corrupt(format!("unknown field kind {other:?}"))),
        }
    }
    report.consumers = consumers.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobKind, Payload};
    use crate::limits::Limits;

    fn marked(run: &Uuid, sent_us: u64) -> Job {
        let mut job = Job::new(JobKind::parse("noop").unwrap(), Payload::parse("{}", &Limits::default()).unwrap());
        job.extra.extend(mark_fields(run, sent_us));
        job
    }

    fn published(probes: &Probes, consumer: &str) -> HashMap<String, Vec<u8>> {
        let mut out = HashMap::new();
        for s in probes.changed() {
            out.insert(format!("{consumer}:start"), s.start.clone());
            out.insert(format!("{consumer}:ack"), s.ack.clone());
            out.insert(format!("{consumer}:last"), s.last_ack_us.to_string().into_bytes());
        }
        out
    }

    #[test]
    fn unmarked_and_badly_marked_jobs_are_not_measured() {
        let probes = Probes::default();
        let job = Job::new(JobKind::parse("noop").unwrap(), Payload::parse("{}", &Limits::default()).unwrap());
        assert!(probes.mark(&job).is_none());
        let mut bad = job.clone();
        bad.extra.insert(RUN_FIELD.into(), "not-a-uuid".into());
        bad.extra.insert(SENT_FIELD.into(), "1".into());
        assert!(probes.mark(&bad).is_none());
        bad.extra.insert(RUN_FIELD.into(), Uuid::now_v7().to_string());
        bad.extra.insert(SENT_FIELD.into(), "yesterday".into());
        assert!(probes.mark(&bad).is_none());
    }

    #[test]
    fn latencies_of_two_consumers_merge() {
        let run = Uuid::now_v7();
        let sent = crate::clock::now_us() - 2_000_000;
        let (a, b) = (Probes::default(), Probes::default());
        let ma = a.mark(&marked(&run, sent)).unwrap();
        a.started(&ma);
        a.acked([&ma]);
        let mb = b.mark(&marked(&run, sent)).unwrap();
        b.started(&mb);
        b.acked([&mb, &mb]);
        let mut fields = published(&a, "a");
        fields.extend(published(&b, "b"));
        let report = merge(fields).unwrap();
        assert_eq!((report.start.len(), report.ack.len(), report.consumers), (2, 3, 2));
        assert!(report.ack.min() >= 1_990_000, "{}", report.ack.min());
        assert!(report.last_ack_us >= sent + 2_000_000);
    }

    #[test]
    fn only_changed_runs_are_published_again() {
        let probes = Probes::default();
        let mark = probes.mark(&marked(&Uuid::now_v7(), 1)).unwrap();
        probes.started(&mark);
        let first = probes.changed();
        assert_eq!(first.len(), 1);
        probes.published(&first);
        assert!(probes.changed().is_empty());
        probes.acked([&mark]);
        assert_eq!(probes.changed().len(), 1);
    }

    #[test]
    fn runs_are_bounded() {
        let probes = Probes::default();
        for _ in 0..MAX_RUNS {
            assert!(probes.mark(&marked(&Uuid::now_v7(), 1)).is_some());
        }
        assert!(probes.mark(&marked(&Uuid::now_v7(), 1)).is_none());
    }

    #[test]
    fn a_corrupt_field_is_an_error() {
        let fields = HashMap::from([("c:start".to_owned(), b"garbage".to_vec())]);
        assert!(matches!(merge(fields), Err(ProbeError::Corrupt { .. })));
    }
}
