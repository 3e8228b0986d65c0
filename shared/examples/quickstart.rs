//! The README's quick start: enqueue a typed job and run it with a handler, against the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`). `cargo run -p jobstream --example quickstart`.

use jobstream::{Handlers, Producer, Queue, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let pool = jobstream::connection::pool(&url, &Default::default())?;
    let queue = Queue::new("quickstart")?;

    // Enqueue: any `Serialize` payload; the job carries the trace context of its `send` span.
    let producer = Producer::new(pool.clone(), &queue);
    let sent = producer.enqueue("send-email", &Email { to: "a@example.com".into() }).await?;
    println!("enqueued job {}", sent.job_id);

    // Run: one handler per kind; `job.payload()` gives the typed payload (a bad one fails permanently).
    let stop = CancellationToken::new();
    let handlers = Handlers::new().register_fn("send-email".parse()?, {
        let stop = stop.clone();
        move |job| {
            let stop = stop.clone();
            async move {
                let email: Email = job.payload()?;
                println!("sent to {} (job {}, attempt {})", email.to, job.id, job.attempt);
                if job.id == sent.job_id {
                    stop.cancel(); // this example stops once its own job ran
                }
                Ok(())
            }
        }
    });
    Worker::new(pool, &queue, handlers, WorkerConfig::default())?.run(stop).await?;
    Ok(())
}
