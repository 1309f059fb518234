//! `oncely saga`: an operator's view of the sagas in a database: list them (by phase), show
//! one with its log, ask one to cancel (its runner compensates what was done, unless the
//! saga is past its pivot), reopen a stuck one once its cause is fixed.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use oncely_core::saga::Phase;
use oncely_core::{Clock, SystemClock, Timestamp};
use oncely_saga::{phase_name, SagaRecord, SagaStore};

#[derive(Args)]
pub(crate) struct SagaArgs {
    /// The sagas' database: sqlite://PATH (the application's file) or
    /// postgres://USER@HOST/DB?schema=NAME (default schema `oncely`).
    #[arg(long, value_name = "URL", env = "ONCELY_SAGA_DB")]
    db: String,
    #[command(subcommand)]
    command: SagaCommand,
}

#[derive(Subcommand)]
enum SagaCommand {
    /// The newest sagas, with their phase, step and attempt.
    List {
        /// Only sagas in this phase: running, compensating, completed, compensated, stuck.
        #[arg(long)]
        phase: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One saga: its state, input, step outputs and log.
    Show {
        /// The saga's id.
        id: String,
    },
    /// Asks a running saga to cancel: its runner compensates the completed steps, unless
    /// the saga is past its pivot (then it goes on to the end).
    Cancel {
        /// The saga's id.
        id: String,
    },
    /// Reopens a stuck saga once its cause is fixed: back to the step and direction it
    /// stopped at, attempt 1, due now.
    Retry {
        /// The saga's id.
        id: String,
    },
    /// Counts per phase and the age of the oldest active saga.
    Status,
    /// Deletes sagas that ended (completed or compensated) longer ago than --older-than,
    /// with their logs. Stuck and active sagas stay. A purged saga's id starts a new saga,
    /// so keep sagas longer than the requests that start them can be retried.
    Purge {
        /// How long ago they must have ended (`30d`, `12h`).
        #[arg(long, value_parser = oncely_core::parse_duration)]
        older_than: Duration,
        /// Deleted per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

const PHASES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "stuck",
];

async fn open(url: &str) -> Result<Arc<dyn SagaStore>, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(path) = url.strip_prefix("sqlite://") {
        let store = oncely_saga::sqlite::SqliteSagas::open(path, Duration::from_secs(10), clock)
            .map_err(|e| format!("--db {url}: {e}"))?;
        return Ok(Arc::new(store));
    }
    let opts = oncely_db::postgres::PgOptions::from_url(url)
        .map_err(|e| format!("--db: {e} (expected sqlite://PATH or postgres://...)"))?;
    let pool = oncely_db::postgres::pool(&opts).map_err(|e| format!("--db: {e}"))?;
    let store = oncely_saga::postgres::PgSagas::open(pool, &opts.schema, clock)
        .await
        .map_err(|e| format!("--db {}: {e}", oncely_db::postgres::hide_password(url)))?
        .with_timeout(opts.timeout);
    Ok(Arc::new(store))
}

fn where_it_is(s: &SagaRecord) -> String {
    match &s.state.phase {
        Phase::Forward { step } | Phase::Compensating { step } => {
            format!("step {step} attempt {}", s.state.attempt)
        }
        Phase::Stuck {
            reason,
            step,
            undoing,
        } => format!(
            "stuck at step {step} ({}): {reason}",
            if *undoing { "undoing" } else { "doing" }
        ),
        _ => String::new(),
    }
}

fn seconds_ago(t: Timestamp) -> String {
    format!(
        "{:.1} s ago",
        SystemClock.now().0.saturating_sub(t.0).max(0) as f64 / 1000.0
    )
}

pub(crate) async fn run(args: SagaArgs) -> Result<(), String> {
    let store = open(&args.db).await?;
    let e = |e: oncely_saga::SagaError| e.to_string();
    match args.command {
        SagaCommand::List { phase, limit } => {
            if let Some(p) = &phase {
                if !PHASES.contains(&p.as_str()) {
                    return Err(format!(
                        "--phase {p}: expected one of {}",
                        PHASES.join(", ")
                    ));
                }
            }
            let sagas = store.list(phase.as_deref(), limit).await.map_err(e)?;
            if sagas.is_empty() {
                println!("no sagas");
            }
            for s in sagas {
                println!(
                    "{}  {}  {}  {}  updated {}",
                    s.id,
                    s.kind,
                    phase_name(&s.state.phase),
                    where_it_is(&s),
                    seconds_ago(s.updated_at)
                );
            }
        }
        SagaCommand::Show { id } => {
            let Some((s, log)) = store.get(&id).await.map_err(e)? else {
                return Err(format!("no saga {id}"));
            };
            println!("saga      {}", s.id);
            println!("kind      {}", s.kind);
            println!(
                "phase     {} {}",
                phase_name(&s.state.phase),
                where_it_is(&s)
            );
            if let Some(f) = &s.state.failure {
                println!("turned back because: {f}");
            }
            if s.cancel_requested {
                println!("cancel    requested");
            }
            println!("input     {}", s.input);
            println!("outputs   {}", serde_json::Value::Object(s.outputs.clone()));
            println!("started   {}", seconds_ago(s.created_at));
            println!("log:");
            for l in log {
                println!(
                    "  {}  {:<5} {:<12} attempt {}  {}",
                    oncely_core::conditional::format_rfc3339(l.at),
                    l.direction.as_str(),
                    l.step.as_deref().unwrap_or("-"),
                    l.attempt,
                    l.outcome
                );
            }
        }
        SagaCommand::Cancel { id } => {
            if store.request_cancel(&id).await.map_err(e)? {
                println!(
                    "{id}: cancel requested; its runner turns it back unless it is past its pivot"
                );
            } else {
                return Err(format!("{id}: no running saga with this id"));
            }
        }
        SagaCommand::Retry { id } => {
            if store.reopen(&id).await.map_err(e)? {
                println!("{id}: reopened; its runner goes on from the step it stopped at");
            } else {
                return Err(format!("{id}: no stuck saga with this id"));
            }
        }
        SagaCommand::Purge { older_than, batch } => {
            let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
            let before = Timestamp(SystemClock.now().0.saturating_sub(ms));
            let mut total = 0;
            loop {
                let n = store.purge(before, batch.max(1)).await.map_err(e)?;
                total += n;
                if n == 0 {
                    break;
                }
                eprintln!("purged {total} so far");
            }
            println!("purged {total} ended saga(s) older than {older_than:?}");
        }
        SagaCommand::Status => {
            let s = store.stats().await.map_err(e)?;
            println!("running       {}", s.running);
            println!("compensating  {}", s.compensating);
            println!("completed     {}", s.completed);
            println!("compensated   {}", s.compensated);
            println!("stuck         {}", s.stuck);
            match s.oldest_active {
                Some(t) => println!("oldest active started {}", seconds_ago(t)),
                None => println!("oldest active -"),
            }
        }
    }
    Ok(())
}
