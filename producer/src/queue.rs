//! `producer queue pause|resume`: stop and restart a whole queue's consumers from starting jobs
//! ([`jobstream::pause`]).

use clap::{Args, Subcommand};
use jobstream::config::{QueueArgs, RedisArgs};
use jobstream::QueueName;

use crate::usage;

/// `producer queue …`.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Pause a queue: its consumers read nothing new and promote no delayed job; running jobs finish and are
    /// acknowledged; enqueueing still works. Lasts until resumed, across consumer restarts. Idempotent.
    Pause(TargetArgs),
    /// Resume a paused queue: its consumers read again and its due delayed jobs are moved to the stream.
    /// Idempotent.
    Resume(TargetArgs),
}

/// The queue a command acts on: `Q` or `--queue Q`.
#[derive(Args, Debug)]
pub struct TargetArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The queue; the same as --queue, and wins over it.
    #[arg(value_name = "QUEUE")]
    pub name: Option<QueueName>,
}

impl TargetArgs {
    fn queue(&self) -> anyhow::Result<jobstream::Queue> {
        let mut args = self.queue.clone();
        if let Some(name) = &self.name {
            args.queue = name.clone();
        }
        args.queue().map_err(usage)
    }
}

/// Runs one `producer queue` command; prints `queue <Q> paused|resumed` (or that it already was).
pub async fn run(command: QueueCommand) -> anyhow::Result<()> {
    let (args, pause) = match &command {
        QueueCommand::Pause(args) => (args, true),
        QueueCommand::Resume(args) => (args, false),
    };
    let queue = args.queue()?;
    let pool = crate::admin::connect(&args.redis).await?;
    let changed = if pause {
        jobstream::pause::pause(&pool, &queue).await?
    } else {
        jobstream::pause::resume(&pool, &queue).await?
    };
    let state = if pause { "paused" } else { "resumed" };
    match changed {
        true => println!("queue {queue} {state}"),
        false if pause => println!("queue {queue} was already paused"),
        false => println!("queue {queue} was not paused"),
    }
    Ok(())
}
