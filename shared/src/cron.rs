//! Periodic jobs: schedules that put a job of their kind on the queue at every tick of a fixed period
//! (`every 10s`) or of a cron expression in a time zone (`*/5 * * * *` in `Europe/Paris`).
//!
//! A schedule lives in Redis, in the queue's `<prefix>:{Q}:cron` hash (name → its JSON spec), so any producer
//! can add, list, pause, resume or remove one and every consumer sees it; `<prefix>:{Q}:cron:last` records the
//! last tick enqueued per schedule. For a partitioned queue both sit under partition 0's tag (`{Q:0}`) and the
//! jobs go to partition 0's stream. Every worker runs the scheduler (its `schedule` duty): each tick's job is
//! written by one Lua script that XADDs it only if the tick is newer than the recorded last one, so a tick makes
//! exactly one job however many consumers run and whichever die, with no leader. A tick is the latest one due:
//! ticks missed while no consumer ran are not replayed one by one; the first consumer back enqueues the latest
//! of them once (`docs/delivery.md`). A paused schedule makes nothing, and resuming it does not catch up on
//! the ticks it slept through.
//!
//! Each tick's job gets a fresh job id and a new trace whose root `send` span carries
//! [`crate::semconv::CRON_NAME`] and [`crate::semconv::CRON_TICK`]; the entry carries the same two facts in its
//! `cron_name` and `cron_tick` fields.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::Pool;
use crate::job::{JobError, JobKind, Payload};
use crate::keys::{text_name, Keys};
use crate::limits::Limits;
use crate::queue::Queue;

/// Entry field naming the schedule whose tick made the job.
pub const FIELD_CRON_NAME: &str = "cron_name";
/// Entry field holding the tick's time (unix ms, decimal) of the job.
pub const FIELD_CRON_TICK: &str = "cron_tick";

/// The shortest period of an `every` schedule.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// Why a schedule, or a part of it, was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule's name is not 1 to 128 characters of letters, digits and `. _ - :`.
    #[error("schedule name {0:?} is invalid: use 1 to 128 letters, digits and . _ - : only")]
    Name(String),
    /// The period of an `every` schedule is too short or not whole milliseconds.
    #[error("every {0:?} is invalid: a period is at least 1s, in whole milliseconds")]
    Every(Duration),
    /// The cron expression does not parse.
    #[error("cron expression {expr:?} is invalid: {reason}")]
    Cron {
        /// The expression as given.
        expr: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not one the tz database knows.
    #[error("time zone {0:?} is unknown: use an IANA name such as Europe/Paris or UTC")]
    TimeZone(String),
    /// The job the schedule makes is invalid (kind, payload).
    #[error(transparent)]
    Job(#[from] JobError),
    /// A stored spec could not be read back.
    #[error("schedule {name} is stored as something else than a schedule: {reason}")]
    Stored {
        /// The schedule's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A schedule's name: 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleName(String);

impl ScheduleName {
    /// Parses a schedule name.
    pub fn parse(value: &str) -> Result<Self, ScheduleError> {
        let ok = (1..=128).contains(&value.len())
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(ScheduleError::Name(value.to_owned()))
        }
    }
}

text_name!(ScheduleName, ScheduleError);

/// When a schedule ticks: every fixed period (aligned on the unix epoch, so `every 10s` ticks at :00, :10, …
/// whichever consumer computes it), or at the times a cron expression names in a time zone.
#[derive(Debug, Clone)]
pub struct Cadence(CadenceKind);

#[derive(Debug, Clone)]
enum CadenceKind {
    Every { ms: u64 },
    Cron { expr: String, cron: Box<croner::Cron>, tz_name: String, tz: jiff::tz::TimeZone },
}

impl Cadence {
    /// A tick every `period` (at least [`MIN_EVERY`], whole milliseconds).
    pub fn every(period: Duration) -> Result<Self, ScheduleError> {
        if period < MIN_EVERY || !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(ScheduleError::Every(period));
        }
        Ok(Self(CadenceKind::Every { ms: period.as_millis() as u64 }))
    }

    /// A tick at each time `expr` names (five fields, `min hour day month weekday`, or six with seconds first;
    /// weekdays 0–7 or `MON`…, Sunday 0 or 7) in the time zone `tz` (an IANA name; UTC when `None`).
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let cron: croner::Cron = expr.parse().map_err(|e: croner::errors::CronError| ScheduleError::Cron {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })?;
        let tz_name = tz.unwrap_or("UTC");
        let zone = jiff::tz::TimeZone::get(tz_name).map_err(|_| ScheduleError::TimeZone(tz_name.to_owned()))?;
        Ok(Self(CadenceKind::Cron {
            expr: expr.to_owned(),
            cron: Box::new(cron),
            tz_name: tz_name.to_owned(),
            tz: zone,
        }))
    }

    /// The latest tick at or before `at_ms` (unix ms); `None` when there is none.
    pub fn latest_tick(&self, at_ms: u64) -> Option<u64> {
        match &self.0 {
            CadenceKind::Every { ms } => Some(at_ms / ms * ms),
            CadenceKind::Cron { cron, tz, .. } => {
                let now = jiff::Timestamp::from_millisecond(at_ms as i64).ok()?.to_zoned(tz.clone());
                let tick = cron.find_previous_occurrence(&now, true).ok()?;
                u64::try_from(tick.timestamp().as_millisecond()).ok()
            }
        }
    }

    /// The first tick after `after_ms` (unix ms); `None` when there is none.
    pub fn next_tick(&self, after_ms: u64) -> Option<u64> {
        match &self.0 {
            CadenceKind::Every { ms } => Some((after_ms / ms + 1) * ms),
            CadenceKind::Cron { cron, tz, .. } => {
                let now = jiff::Timestamp::from_millisecond(after_ms as i64).ok()?.to_zoned(tz.clone());
                let tick = cron.find_next_occurrence(&now, false).ok()?;
                u64::try_from(tick.timestamp().as_millisecond()).ok()
            }
        }
    }
}

impl std::fmt::Display for Cadence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            CadenceKind::Every { ms } if ms % 1000 == 0 => write!(f, "every {}s", ms / 1000),
            CadenceKind::Every { ms } => write!(f, "every {ms}ms"),
            CadenceKind::Cron { expr, tz_name, .. } => write!(f, "cron {expr:?} {tz_name}"),
        }
    }
}

/// A periodic schedule: its name, when it ticks, and the job each tick makes.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique within the queue; adding a schedule of the same name replaces it.
    pub name: ScheduleName,
    /// When it ticks.
    pub cadence: Cadence,
    /// The kind of each tick's job.
    pub kind: JobKind,
    /// The payload of each tick's job.
    pub payload: Payload,
    /// A paused schedule makes no job.
    pub paused: bool,
}

/// The JSON a schedule is stored as (`docs/wire-format.md`).
#[derive(Serialize, Deserialize)]
struct Spec {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    every_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    tz: Option<String>,
    kind: String,
    payload: String,
    #[serde(default)]
    paused: bool,
}

impl Schedule {
    /// A running schedule named `name` that makes a job of `kind` with `payload` at every tick of `cadence`.
    pub fn new(name: ScheduleName, cadence: Cadence, kind: JobKind, payload: Payload) -> Self {
        Self { name, cadence, kind, payload, paused: false }
    }

    /// The spec stored in the queue's `cron` hash.
    pub fn to_json(&self) -> String {
        let (every_ms, cron, tz) = match &self.cadence.0 {
            CadenceKind::Every { ms } => (Some(*ms), None, None),
            CadenceKind::Cron { expr, tz_name, .. } => (None, Some(expr.clone()), Some(tz_name.clone())),
        };
        let spec = Spec {
            every_ms,
            cron,
            tz,
            kind: self.kind.to_string(),
            payload: self.payload.as_str().to_owned(),
            paused: self.paused,
        };
        serde_json::to_string(&spec).expect("a spec always serializes")
    }

    /// Reads back a stored spec of schedule `name`.
    pub fn from_json(name: &str, text: &str) -> Result<Self, ScheduleError> {
        let stored = |reason: String| ScheduleError::Stored { name: name.to_owned(), reason };
        let spec: Spec = serde_json::from_str(text).map_err(|e| stored(e.to_string()))?;
        let cadence = match (spec.every_ms, spec.cron) {
            (Some(ms), None) => Cadence::every(Duration::from_millis(ms))?,
            (None, Some(expr)) => Cadence::cron(&expr, spec.tz.as_deref())?,
            _ => return Err(stored("it has not exactly one of every_ms and cron".to_owned())),
        };
        Ok(Self {
            name: ScheduleName::parse(name)?,
            cadence,
            kind: JobKind::parse(&spec.kind)?,
            payload: Payload::parse(spec.payload, &Limits::default())?,
            paused: spec.paused,
        })
    }
}

/// A schedule as read back by [`list`], with what it did and will do.
#[derive(Debug, Clone)]
pub struct ScheduleState {
    /// The schedule.
    pub schedule: Schedule,
    /// The last tick enqueued (unix ms), if any.
    pub last_tick_ms: Option<u64>,
    /// The next tick (unix ms) after now; `None` while paused or when the cadence has no more.
    pub next_tick_ms: Option<u64>,
}

/// A unix time in ms as RFC 3339 in UTC, e.g. `2026-12-01T09:00:00Z`.
pub fn format_ms(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map_or_else(|_| format!("{ms}ms"), |t| t.to_string())
}

/// The keys schedules of `queue` live under: partition 0's.
fn keys_of(queue: &Queue) -> Keys {
    queue.partition_keys().swap_remove(0)
}

/// Adds `schedule` to `queue`, replacing one of the same name. Its first tick is the first one after now.
pub async fn add(pool: &Pool, queue: &Queue, schedule: &Schedule) -> crate::Result<()> {
    let keys = keys_of(queue);
    write(pool, &keys, schedule.name.as_str(), &schedule.to_json(), true).await
}

/// The schedules of `queue`, by name; a stored spec that cannot be read back fails the call with its name.
pub async fn list(pool: &Pool, queue: &Queue) -> crate::Result<Vec<ScheduleState>> {
    let keys = keys_of(queue);
    let now = crate::clock::now_ms();
    let mut out = Vec::new();
    for stored in load(pool, &keys).await? {
        let schedule = stored.schedule?;
        let next_tick_ms = if schedule.paused { None } else { schedule.cadence.next_tick(now) };
        out.push(ScheduleState { last_tick_ms: stored.last_tick_ms, next_tick_ms, schedule });
    }
    Ok(out)
}

/// Removes schedule `name` of `queue`; [`crate::Error::NotFound`] when there is none.
pub async fn remove(pool: &Pool, queue: &Queue, name: &ScheduleName) -> crate::Result<()> {
    let keys = keys_of(queue);
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic().hdel(&keys.cron, name.as_str()).hdel(&keys.cron_last, name.as_str()).ignore();
    let (removed,): (i64,) = pipe.query_async(&mut conn).await?;
    if removed == 0 {
        return Err(not_found(queue, name));
    }
    Ok(())
}

/// Pauses schedule `name` of `queue`: it makes no job until resumed. Idempotent.
pub async fn pause(pool: &Pool, queue: &Queue, name: &ScheduleName) -> crate::Result<()> {
    set_paused(pool, queue, name, true).await
}

/// Resumes schedule `name` of `queue`: its next job is at its first tick after now (the ticks it slept
/// through are not made up). Idempotent.
pub async fn resume(pool: &Pool, queue: &Queue, name: &ScheduleName) -> crate::Result<()> {
    set_paused(pool, queue, name, false).await
}

async fn set_paused(pool: &Pool, queue: &Queue, name: &ScheduleName, paused: bool) -> crate::Result<()> {
    let keys = keys_of(queue);
    let text: Option<String> = {
        let mut conn = pool.get().await?;
        redis::cmd("HGET").arg(&keys.cron).arg(name.as_str()).query_async(&mut conn).await?
    };
    let Some(text) = text else { return Err(not_found(queue, name)) };
    let mut schedule = Schedule::from_json(name.as_str(), &text)?;
    if schedule.paused == paused {
        return Ok(());
    }
    schedule.paused = paused;
    // Resuming starts from now: a tick due while paused is not made on resume.
    write(pool, &keys, name.as_str(), &schedule.to_json(), !paused).await
}

/// Writes a spec and, when `restart`, records now as its last tick (so its first job is at its next tick), in
/// one MULTI.
async fn write(pool: &Pool, keys: &Keys, name: &str, spec: &str, restart: bool) -> crate::Result<()> {
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic().hset(&keys.cron, name, spec).ignore();
    if restart {
        pipe.hset(&keys.cron_last, name, crate::clock::now_ms()).ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

fn not_found(queue: &Queue, name: &ScheduleName) -> crate::Error {
    crate::Error::NotFound(format!("schedule {name} of queue {queue}"))
}

/// One schedule as stored: its spec text (the claim script compares it), what it decodes to, its last tick.
pub(crate) struct Stored {
    pub(crate) name: String,
    pub(crate) spec: String,
    pub(crate) schedule: Result<Schedule, ScheduleError>,
    pub(crate) last_tick_ms: Option<u64>,
}

/// Every schedule under `keys`, by name, with its last tick: two reads in one MULTI.
pub(crate) async fn load(pool: &Pool, keys: &Keys) -> crate::Result<Vec<Stored>> {
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic().hgetall(&keys.cron).hgetall(&keys.cron_last);
    let (specs, last): (std::collections::BTreeMap<String, String>, std::collections::HashMap<String, String>) =
        pipe.query_async(&mut conn).await?;
    Ok(specs
        .into_iter()
        .map(|(name, spec)| Stored {
            schedule: Schedule::from_json(&name, &spec),
            last_tick_ms: last.get(&name).and_then(|t| t.parse().ok()),
            name,
            spec,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ticks_on_multiples_of_the_period() {
        let every = Cadence::every(Duration::from_secs(10)).unwrap();
        assert_eq!(every.latest_tick(1_000_012_345), Some(1_000_010_000));
        assert_eq!(every.next_tick(1_000_010_000), Some(1_000_020_000));
        assert!(Cadence::every(Duration::from_millis(999)).is_err());
    }

    #[test]
    fn cron_ticks_in_its_time_zone() {
        // 2026-01-05 is a Monday; 09:00 in Paris is 08:00 UTC in winter.
        let cron = Cadence::cron("0 9 * * 1", Some("Europe/Paris")).unwrap();
        let monday_0830_utc = 1_767_601_800_000;
        assert_eq!(cron.latest_tick(monday_0830_utc), Some(1_767_600_000_000));
        assert_eq!(cron.next_tick(monday_0830_utc), Some(1_767_600_000_000 + 7 * 86_400_000));
        let five = Cadence::cron("*/5 * * * *", None).unwrap();
        assert_eq!(five.latest_tick(1_767_601_999_999), Some(1_767_601_800_000));
    }

    #[test]
    fn bad_parts_are_refused_by_name() {
        assert!(matches!(Cadence::cron("61 * * * *", None), Err(ScheduleError::Cron { .. })));
        assert!(matches!(Cadence::cron("* * *", None), Err(ScheduleError::Cron { .. })));
        assert!(matches!(Cadence::cron("* * * * *", Some("Mars/Olympus")), Err(ScheduleError::TimeZone(_))));
        assert!(ScheduleName::parse("nightly report").is_err());
        assert!(ScheduleName::parse("").is_err());
        assert!(ScheduleName::parse("nightly-report:v2").is_ok());
    }

    #[test]
    fn a_schedule_round_trips_through_its_spec() {
        let schedule = Schedule::new(
            ScheduleName::parse("reports").unwrap(),
            Cadence::cron("*/5 * * * *", Some("Europe/Paris")).unwrap(),
            JobKind::parse("noop").unwrap(),
            Payload::parse(r#"{"a":1}"#, &Limits::default()).unwrap(),
        );
        let back = Schedule::from_json("reports", &schedule.to_json()).unwrap();
        assert_eq!(back.to_json(), schedule.to_json());
        assert_eq!(back.cadence.to_string(), "cron \"*/5 * * * *\" Europe/Paris");
    }
}
