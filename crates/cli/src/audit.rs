//! `oncely audit`: verify, list and redact the audit trail, straight from its database.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use oncely_audit::log::verify_log_with;
use oncely_audit::{to_hex, AuditLog, Event, Filter, Personal, Verifier, PERSONAL_FIELDS};
use oncely_gateway::audit::AuditUrl;
use oncely_gateway::config::read_key_file;

#[derive(Args)]
pub(crate) struct AuditArgs {
    /// The audit log: sqlite://PATH or postgres://USER@HOST/DB?schema=NAME, as given to
    /// `oncely serve --audit`.
    #[arg(long, value_name = "URL", env = "ONCELY_AUDIT_URL")]
    db: String,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every chain: exit 0 and each chain's head if untouched, exit 1 naming the first
    /// edited, deleted, inserted, reordered or truncated event otherwise.
    Verify {
        /// The key the gateways used: also checks each event's seal (written by a key
        /// holder) and every personal value not redacted against its commitment.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// A head recorded earlier, "CHAIN SEQ HASH" as `verify` prints it (repeatable): the
        /// chain must still hold that event, so deleting its newest events is found.
        #[arg(long, value_name = "HEAD")]
        expect_head: Vec<String>,
        /// A file of heads: the `head ...` lines of an earlier `verify`'s output.
        #[arg(long, value_name = "FILE")]
        heads_file: Option<PathBuf>,
    },
    /// Events, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Creates the audit_events table and its guards (gateways also do it when they start):
    /// for a database role that may not create tables.
    Migrate,
    /// Replaces personal fields of matching events by their keyed hash; the chain stays
    /// valid. Needs at least one filter.
    Redact {
        #[command(flatten)]
        filter: FilterArgs,
        /// Fields to redact (repeatable): actor, ip_address, user_agent [default: all three].
        #[arg(long = "field", value_name = "FIELD")]
        fields: Vec<String>,
    },
}

#[derive(Args)]
struct FilterArgs {
    #[arg(long, value_name = "ID")]
    event_id: Option<String>,
    /// The X-Request-Id of the request.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// The tenant as recorded (`anon`, `hdr:...`, `auth:...`).
    #[arg(long)]
    actor: Option<String>,
    #[arg(long, value_name = "IP")]
    ip_address: Option<String>,
    #[arg(long)]
    user_agent: Option<String>,
    /// `METHOD ROUTE KEY`, e.g. "POST /orders k-1".
    #[arg(long, value_name = "RESOURCE")]
    resource_id: Option<String>,
    /// The outcome (executed, replayed, mismatch, ...).
    #[arg(long)]
    action: Option<String>,
}

impl FilterArgs {
    fn into_filter(self) -> Filter {
        Filter {
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            actor: self.actor,
            ip_address: self.ip_address,
            user_agent: self.user_agent,
            resource_id: self.resource_id,
            action: self.action,
        }
    }
}

pub(crate) async fn run(args: AuditArgs) -> Result<(), String> {
    let url = AuditUrl::parse(&args.db).map_err(|e| format!("--db: {e}"))?;
    if let AuditUrl::Sqlite { path, .. } = &url {
        // Opening would create an empty file: say what is wrong instead.
        if !path.exists() && !matches!(args.command, AuditCommand::Migrate) {
            return Err(format!("--db: {} does not exist", path.display()));
        }
    }
    let log = url.open()?;
    match args.command {
        AuditCommand::Verify {
            key_file,
            expect_head,
            heads_file,
        } => {
            let mut heads = expect_head;
            if let Some(f) = heads_file {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| format!("--heads-file: cannot read {}: {e}", f.display()))?;
                heads.extend(
                    text.lines()
                        .filter(|l| l.starts_with("head "))
                        .map(str::to_owned),
                );
            }
            let heads = heads
                .iter()
                .map(|h| parse_head(h))
                .collect::<Result<Vec<_>, _>>()?;
            verify(&*log, &url, key_file, &heads).await
        }
        AuditCommand::List {
            filter,
            limit,
            json,
        } => {
            let events = log
                .find(&filter.into_filter(), limit)
                .await
                .map_err(|e| explain(e, &url))?;
            for e in &events {
                println!("{}", if json { as_json(e) } else { as_line(e) });
            }
            Ok(())
        }
        AuditCommand::Migrate => {
            let report = log.migrate().await.map_err(|e| explain(e, &url))?;
            println!("{url}: {report}");
            Ok(())
        }
        AuditCommand::Redact { filter, fields } => {
            let fields: Vec<&str> = if fields.is_empty() {
                PERSONAL_FIELDS.to_vec()
            } else {
                fields.iter().map(String::as_str).collect()
            };
            let n = log
                .redact(&filter.into_filter(), &fields)
                .await
                .map_err(|e| explain(e, &url))?;
            println!("redacted {} in {n} event(s)", fields.join(", "));
            Ok(())
        }
    }
}

/// `CHAIN SEQ HASH`, with or without the `head ` that `verify` prints before it.
fn parse_head(text: &str) -> Result<(String, u64, oncely_audit::Hash), String> {
    let bad =
        || format!("--expect-head: `{text}` is not `CHAIN SEQ HASH` (a `head` line of verify)");
    let t = text.trim();
    let t = t.strip_prefix("head ").unwrap_or(t);
    let mut parts = t.split_whitespace();
    let (Some(chain), Some(seq), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let seq = seq.parse().map_err(|_| bad())?;
    let hash = oncely_audit::from_hex(hash).ok_or_else(bad)?;
    Ok((chain.to_owned(), seq, hash))
}

async fn verify(
    log: &dyn AuditLog,
    url: &AuditUrl,
    key_file: Option<PathBuf>,
    heads: &[(String, u64, oncely_audit::Hash)],
) -> Result<(), String> {
    let key = match key_file {
        Some(f) => Some(read_key_file(&f).map_err(|e| format!("--key-file: {e}"))?),
        None => None,
    };
    let mut verifier = Verifier::new(key.as_ref().map(|k| k.0.as_slice()));
    for (chain, seq, hash) in heads {
        verifier.expect_head(chain, *seq, *hash);
    }
    let mut last_report = 0;
    let outcome = verify_log_with(log, verifier, |n| {
        // Long trails: a line on stderr every 100k events, so a long check shows it moves.
        if n >= last_report + 100_000 {
            eprintln!("verified {n} events...");
            last_report = n;
        }
    })
    .await
    .map_err(|e| explain(e, url))?;
    match outcome {
        Ok(summary) => {
            println!(
                "ok: {} events in {} chain(s){}",
                summary.events,
                summary.heads.len(),
                if key.is_some() {
                    ", seals and personal values checked with the key"
                } else {
                    ""
                }
            );
            for h in &summary.heads {
                println!(
                    "head {} {} {}",
                    h.chain,
                    h.next_seq.saturating_sub(1),
                    to_hex(&h.last_hash)
                );
            }
            Ok(())
        }
        Err(broken) => Err(format!("audit trail broken: {broken}")),
    }
}

fn explain(e: oncely_audit::AuditError, url: &AuditUrl) -> String {
    let text = e.to_string();
    if text.contains("no such table") || text.contains("does not exist") {
        format!("{url} has no audit trail (no audit_events table): {text}")
    } else {
        format!("{url}: {text}")
    }
}

fn personal(p: &Option<Personal>) -> String {
    match p {
        None => "-".into(),
        Some(Personal::Value(v)) => v.clone(),
        Some(Personal::Redacted(c)) => format!("redacted:{}", &to_hex(c)[..16]),
    }
}

fn as_line(e: &Event) -> String {
    format!(
        "{} {}#{} {} {} {} {} actor={} ip={} ua={:?} request_id={}",
        e.timestamp_ms,
        e.chain,
        e.seq,
        e.action,
        e.resource_type,
        e.resource_id,
        e.new_value.as_deref().unwrap_or("-"),
        personal(&e.actor),
        personal(&e.ip_address),
        personal(&e.user_agent),
        e.correlation_id.as_deref().unwrap_or("-"),
    )
}

fn as_json(e: &Event) -> String {
    let personal_json = |p: &Option<Personal>| match p {
        None => serde_json::Value::Null,
        Some(Personal::Value(v)) => v.clone().into(),
        Some(Personal::Redacted(c)) => serde_json::json!({ "redacted": to_hex(c) }),
    };
    serde_json::json!({
        "event_id": e.event_id,
        "timestamp": e.timestamp_ms,
        "chain": e.chain,
        "seq": e.seq,
        "actor": personal_json(&e.actor),
        "actor_type": e.actor_type,
        "action": e.action,
        "resource_type": e.resource_type,
        "resource_id": e.resource_id,
        "old_value": e.old_value,
        "new_value": e.new_value,
        "correlation_id": e.correlation_id,
        "ip_address": personal_json(&e.ip_address),
        "user_agent": personal_json(&e.user_agent),
        "hash": to_hex(&e.hash),
    })
    .to_string()
}
