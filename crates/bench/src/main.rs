//! `oncely-bench`: the gateway measured side by side with its upstream, nginx and the raw
//! stores, in one run (docs/BENCHMARKS.md). A tool, not part of the shipped `oncely` binary:
//! it carries a test upstream, a load generator and the stores' plain drivers.

use std::process::ExitCode;

use clap::Parser;

mod bare;
mod conditional;
mod cost;
mod gateway;
mod outbox;
mod process;
mod profile;
mod stores;

fn main() -> ExitCode {
    let args = gateway::BenchArgs::parse();
    if let Some(upstream) = &args.bare_proxy {
        return match bare::run(upstream, args.bare_workers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oncely-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oncely-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gateway::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncely-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
