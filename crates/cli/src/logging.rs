//! Log output: human text by default, JSON lines on request; levels by flag or `RUST_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::EnvFilter;

#[derive(Args)]
pub(crate) struct LogArgs {
    /// Log level or filter (e.g. `info`, `oncely_http=debug`); `RUST_LOG` is used if unset.
    #[arg(long, global = true, env = "ONCELY_LOG")]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

pub(crate) fn init(args: &LogArgs) -> Result<(), String> {
    let filter = match &args.log_level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("--log-level `{level}`: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only for a person at a terminal: a log file or collector gets plain text, and
    // the gateway does not pay for escape codes in every request's span fields (they were a
    // tenth of a pass-through request's instructions).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        // Fields written plainly: the default formatter styles every field name, which for
        // the per-request span's ids was most of what creating that span cost.
        LogFormat::Text => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    if field.name() == "message" {
                        write!(w, "{value:?}")
                    } else {
                        write!(w, "{field}={value:?}")
                    }
                })
                .delimited(" "),
            )
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}
