//! `producer job show|cancel|result`: one job by its id ([`jobstream::jobs`]).

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use jobstream::config::{parse_duration, QueueArgs, RedisArgs};
use jobstream::jobs::{self, CancelOutcome, JobState, JobStatus};
use jobstream::{GroupName, JobId};

use crate::usage;

/// `producer job …`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Show where a job is — waiting, running (on which consumer), delayed (until when), done, dead (with the
    /// reason), cancelled or expired — with its attempts, progress, result and trace id. Exits 1 when no record
    /// of the job exists.
    Show(ShowArgs),
    /// Cancel a job. Waiting or delayed, it never runs; running, its consumer cancels the handler's token within
    /// 250 ms and settles it as cancelled (not retried). Idempotent: cancelling a cancelled job succeeds.
    /// Exits 1 when the job already finished (done, dead, expired) or is unknown.
    Cancel(CancelArgs),
    /// Print a done job's result (the JSON its handler gave `Job::set_result`), or `null` when it returned none.
    /// Exits 1 when the job is not done or unknown.
    Result(ResultArgs),
}

/// The job a command acts on.
#[derive(Args, Debug)]
pub struct TargetArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The job's id (as `producer enqueue` printed it).
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: JobId,
}

/// `producer job show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The consumer group whose pending list says the job is running.
    #[arg(long, env = "JOBSTREAM_GROUP", default_value_t = GroupName::default())]
    pub group: GroupName,
    /// Print the status as one JSON object (its `state` field is the state).
    #[arg(long)]
    pub json: bool,
}

/// `producer job result`.
#[derive(Args, Debug)]
pub struct ResultArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The consumer group whose pending list says the job is running.
    #[arg(long, env = "JOBSTREAM_GROUP", default_value_t = GroupName::default())]
    pub group: GroupName,
}

/// `producer job cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The consumer group whose pending list says the job is running.
    #[arg(long, env = "JOBSTREAM_GROUP", default_value_t = GroupName::default())]
    pub group: GroupName,
    /// How long the record of a job cancelled before it ran is kept.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub job_retention: Duration,
    /// Print the outcome as one JSON object (`{"outcome": "cancelled"|"signalled"|"already"|"not_found", …}`).
    #[arg(long)]
    pub json: bool,
}

fn parse_id(text: &str) -> Result<JobId, String> {
    JobId::parse(text).map_err(|e| format!("not a job id (a UUID): {e}"))
}

/// Runs one `producer job` command.
pub async fn run(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Show(args) => show(args).await,
        JobCommand::Cancel(args) => cancel(args).await,
        JobCommand::Result(args) => result(args).await,
    }
}

fn unknown(id: &JobId, queue: &jobstream::Queue) -> anyhow::Error {
    anyhow::anyhow!(
        "no record of job {id} on queue {queue}: never enqueued there, finished longer ago than the job retention \
         (24h by default), or waiting on a stream whose entries' time is more than 10 s from the time in its id"
    )
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let queue = args.target.queue.queue().map_err(usage)?;
    let pool = crate::admin::connect(&args.target.redis).await?;
    let Some(status) = jobs::show(&pool, &queue, &args.group, &args.target.id).await? else {
        return Err(unknown(&args.target.id, &queue));
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
    } else {
        write_status(&mut out, &status)?;
    }
    Ok(())
}

fn when(ms: u64) -> String {
    jobstream::cron::format_ms(ms)
}

fn write_status(out: &mut impl Write, s: &JobStatus) -> std::io::Result<()> {
    let detail = match s.state {
        JobState::Running => format!(
            " on consumer {} (delivery {})",
            s.consumer.as_deref().unwrap_or("?"),
            s.deliveries.unwrap_or_default()
        ),
        JobState::Delayed => s.run_at.map(|at| format!(" until {}", when(at))).unwrap_or_default(),
        JobState::Dead | JobState::Expired => {
            s.reason.as_ref().map(|reason| format!(" (reason {reason})")).unwrap_or_default()
        }
        _ => String::new(),
    };
    writeln!(out, "job {} on queue {}: {}{detail}", s.id, s.queue, s.state)?;
    let line = |out: &mut dyn Write, name: &str, value: Option<String>| match value {
        Some(value) => writeln!(out, "  {name:<10} {value}"),
        None => Ok(()),
    };
    line(out, "kind", s.kind.clone())?;
    line(out, "enqueued", s.enqueued_at.map(when))?;
    line(out, "attempt", s.attempt.map(|a| a.to_string()))?;
    line(out, "entry", s.message_id.clone())?;
    line(out, "trace", s.trace_id.clone())?;
    line(out, "progress", s.progress.as_ref().map(|p| p.to_string()))?;
    line(out, "result", s.result.as_ref().map(|r| r.to_string()))?;
    line(out, "error", s.error.clone())?;
    line(out, "dead entry", s.dead_id.clone())?;
    line(out, "cancel", s.cancel_requested_at.map(|at| format!("requested {}", when(at))))?;
    line(out, "finished", s.finished_at.map(when))?;
    if let Some(payload) = &s.payload {
        let text = payload.to_string();
        let shown = if text.len() > 200 {
            format!("{}… ({} bytes)", text.chars().take(200).collect::<String>(), text.len())
        } else {
            text
        };
        line(out, "payload", Some(shown))?;
    }
    for a in &s.attempts {
        writeln!(
            out,
            "  attempt {} {} on {} at {} for {} ms{} (trace {} span {})",
            a.n,
            a.outcome,
            a.consumer,
            when(a.started_at),
            a.ended_at.saturating_sub(a.started_at),
            a.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
            a.trace_id,
            a.span_id
        )?;
    }
    Ok(())
}

async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let queue = args.target.queue.queue().map_err(usage)?;
    let pool = crate::admin::connect(&args.target.redis).await?;
    let id = &args.target.id;
    let outcome = jobs::cancel(&pool, &queue, &args.group, id, args.job_retention).await?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        match &outcome {
            CancelOutcome::Cancelled { from } => println!("job {id} cancelled (it was {from}; it never runs)"),
            CancelOutcome::Signalled { consumer } => {
                println!("job {id} is running on {consumer}: asked to stop; it is settled as cancelled")
            }
            CancelOutcome::Already { state: JobState::Cancelled } => println!("job {id} was already cancelled"),
            CancelOutcome::Already { .. } | CancelOutcome::NotFound => {}
        }
    }
    match outcome {
        CancelOutcome::Already { state } if state != JobState::Cancelled => {
            bail!("job {id} already finished ({state}); nothing to cancel")
        }
        CancelOutcome::NotFound => Err(unknown(id, &queue)),
        _ => Ok(()),
    }
}

async fn result(args: ResultArgs) -> anyhow::Result<()> {
    let queue = args.target.queue.queue().map_err(usage)?;
    let pool = crate::admin::connect(&args.target.redis).await?;
    let id = &args.target.id;
    let Some(stored) = jobs::result(&pool, &queue, &args.group, id).await? else {
        return Err(unknown(id, &queue));
    };
    if stored.state != JobState::Done {
        bail!("job {id} is {}, not done: it has no result yet", stored.state);
    }
    println!("{}", stored.result.map_or_else(|| "null".to_owned(), |r| r.to_string()));
    Ok(())
}
