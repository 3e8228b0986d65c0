//! `producer cron …`: periodic schedules of a queue. The consumers enqueue their ticks, one job per tick.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use jobstream::config::{parse_duration, QueueArgs, RedisArgs};
use jobstream::cron::{self, Cadence, Schedule, ScheduleName, ScheduleState};
use jobstream::{JobKind, Payload};

use crate::usage;

/// `producer cron …`.
#[derive(Subcommand, Debug)]
pub enum CronCommand {
    /// Add a schedule (or replace the one of the same name): a job of --kind at every tick of --every or
    /// --cron. Its first job is at its first tick after now.
    Add(AddArgs),
    /// List the queue's schedules: `<name> <cadence> kind=<k> <running|paused> last=<time> next=<time>`.
    List {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule.
    Remove(NameArgs),
    /// Pause a schedule: it makes no job until resumed.
    Pause(NameArgs),
    /// Resume a paused schedule from its next tick (the ticks it slept through are not made up).
    Resume(NameArgs),
}

/// `producer cron add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The schedule's name: 1 to 128 letters, digits and . _ - :
    pub name: String,
    /// A tick every this long (at least 1s), aligned on the unix epoch: `--every 10s` ticks at :00, :10, …
    #[arg(long, value_parser = parse_duration, required_unless_present = "cron", conflicts_with = "cron")]
    pub every: Option<Duration>,
    /// A cron expression: five fields (`min hour day month weekday`, e.g. "*/5 * * * *") or six with seconds
    /// first.
    #[arg(long)]
    pub cron: Option<String>,
    /// The time zone --cron is read in, an IANA name (e.g. Europe/Paris).
    #[arg(long, requires = "cron")]
    pub tz: Option<String>,
    /// Each tick's job kind.
    #[arg(long)]
    pub kind: String,
    /// Each tick's job payload, JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
}

/// The schedule a command acts on.
#[derive(Args, Debug)]
pub struct NameArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The schedule's name.
    pub name: String,
}

/// Runs one `producer cron` command.
pub async fn run(command: CronCommand) -> anyhow::Result<()> {
    match command {
        CronCommand::Add(args) => add(args).await,
        CronCommand::List { redis, queue, json } => list(&redis, &queue, json).await,
        CronCommand::Remove(args) => {
            let (pool, queue, name) = target(&args).await?;
            cron::remove(&pool, &queue, &name).await?;
            println!("schedule {name} removed from queue {queue}");
            Ok(())
        }
        CronCommand::Pause(args) => {
            let (pool, queue, name) = target(&args).await?;
            cron::pause(&pool, &queue, &name).await?;
            println!("schedule {name} of queue {queue} paused");
            Ok(())
        }
        CronCommand::Resume(args) => {
            let (pool, queue, name) = target(&args).await?;
            cron::resume(&pool, &queue, &name).await?;
            println!("schedule {name} of queue {queue} resumed");
            Ok(())
        }
    }
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let name = ScheduleName::parse(&args.name).map_err(usage)?;
    let cadence = match (&args.every, &args.cron) {
        (Some(every), None) => Cadence::every(*every),
        (None, Some(expr)) => Cadence::cron(expr, args.tz.as_deref()),
        _ => return Err(usage("give one of --every and --cron")),
    }
    .map_err(usage)?;
    let kind = JobKind::parse(&args.kind).map_err(usage)?;
    let payload = Payload::parse(args.payload.as_str(), &args.queue.limits()).map_err(usage)?;
    let queue = args.queue.queue().map_err(usage)?;
    let schedule = Schedule::new(name, cadence, kind, payload);
    let pool = crate::admin::connect(&args.redis).await?;
    cron::add(&pool, &queue, &schedule).await?;
    let next =
        schedule.cadence.next_tick(jobstream::clock::now_ms()).map_or_else(|| "never".to_owned(), cron::format_ms);
    println!(
        "schedule {} added to queue {queue}: {}, kind {}; next tick {next}",
        schedule.name, schedule.cadence, schedule.kind
    );
    Ok(())
}

async fn list(redis: &RedisArgs, queue: &QueueArgs, json: bool) -> anyhow::Result<()> {
    let queue = queue.queue().map_err(usage)?;
    let pool = crate::admin::connect(redis).await?;
    let schedules = cron::list(&pool, &queue).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<serde_json::Value> = schedules.iter().map(to_json).collect();
        writeln!(out, "{}", serde_json::to_string(&all)?)?;
        return Ok(());
    }
    let time = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), cron::format_ms);
    for state in &schedules {
        let s = &state.schedule;
        writeln!(
            out,
            "{} {} kind={} {} last={} next={}",
            s.name,
            s.cadence,
            s.kind,
            if s.paused { "paused" } else { "running" },
            time(state.last_tick_ms),
            time(state.next_tick_ms)
        )?;
    }
    Ok(())
}

fn to_json(state: &ScheduleState) -> serde_json::Value {
    let s = &state.schedule;
    let mut spec: serde_json::Value = serde_json::from_str(&s.to_json()).expect("a spec is JSON");
    spec["name"] = s.name.to_string().into();
    spec["cadence"] = s.cadence.to_string().into();
    spec["payload"] = serde_json::from_str(s.payload.as_str()).expect("a payload is JSON");
    spec["last_tick_ms"] = state.last_tick_ms.into();
    spec["next_tick_ms"] = state.next_tick_ms.into();
    spec
}

async fn target(args: &NameArgs) -> anyhow::Result<(jobstream::connection::Pool, jobstream::Queue, ScheduleName)> {
    let name = ScheduleName::parse(&args.name).map_err(usage)?;
    let queue = args.queue.queue().map_err(usage)?;
    let pool = crate::admin::connect(&args.redis).await?;
    Ok((pool, queue, name))
}
