//! Regenerates `docs/retry-simulation.svg`: 1000 clients retrying through a 10 s outage, fixed
//! doubling against full jitter.
//!
//! ```text
//! cargo run -p oncely-client --example retry-simulation [-- OUTPUT.svg]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use oncely_client::sim::{simulate, SimConfig, SimResult, Strategy};
use plotters::prelude::*;

const FIXED: RGBColor = RGBColor(214, 39, 40);
const JITTER: RGBColor = RGBColor(31, 119, 180);
const CAPACITY: RGBColor = RGBColor(120, 120, 120);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn draw(
    path: &PathBuf,
    cfg: &SimConfig,
    fixed: &SimResult,
    jitter: &SimResult,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(430);
    let horizon = secs(cfg.horizon);
    let bucket = secs(fixed.bucket);
    let capacity = f64::from(cfg.capacity_per_tick) * bucket / secs(cfg.tick);
    let peak = fixed
        .arrivals
        .iter()
        .chain(&jitter.arrivals)
        .copied()
        .max()
        .unwrap_or(1);
    let y_max = f64::from(peak) * 1.08;

    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{} clients, server down {} s then {} req/s: attempts arriving per {} ms",
                cfg.clients,
                secs(cfg.outage),
                capacity / bucket,
                fixed.bucket.as_millis()
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..horizon, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("attempts per bucket")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            vec![(secs(cfg.outage), 0.0), (secs(cfg.outage), y_max)],
            CAPACITY.mix(0.5).stroke_width(1),
        ))?
        .label(format!("server recovers at {} s", secs(cfg.outage)))
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], CAPACITY.mix(0.5).stroke_width(1))
        });
    let series = |r: &SimResult| -> Vec<(f64, f64)> {
        r.arrivals
            .iter()
            .enumerate()
            .map(|(i, a)| (i as f64 * bucket, f64::from(*a)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(fixed), FIXED.stroke_width(1)))?
        .label(format!(
            "{}: peak after recovery {} per {} ms",
            Strategy::FixedDoubling.label(),
            fixed.peak_after_recovery,
            fixed.bucket.as_millis()
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], FIXED.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(series(jitter), JITTER.stroke_width(2)))?
        .label(format!(
            "{}: peak after recovery {} per {} ms",
            Strategy::FullJitter.label(),
            jitter.peak_after_recovery,
            jitter.bucket.as_millis()
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], JITTER.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(
            vec![(secs(cfg.outage), capacity), (horizon, capacity)],
            CAPACITY.stroke_width(2),
        ))?
        .label(format!(
            "server capacity ({capacity} per bucket) after the outage"
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CAPACITY.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("clients not yet served", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..horizon, 0f64..f64::from(cfg.clients) * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("clients waiting")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let waiting = |r: &SimResult| -> Vec<(f64, f64)> {
        r.waiting
            .iter()
            .enumerate()
            .map(|(i, w)| ((i + 1) as f64 * bucket, f64::from(*w)))
            .collect()
    };
    let done = |r: &SimResult| match r.all_served_at {
        Some(t) => format!(
            "all served at {:.1} s, {} attempts",
            secs(t),
            r.total_attempts
        ),
        None => format!(
            "{} of {} served in {} s, {} attempts",
            r.served, cfg.clients, horizon, r.total_attempts
        ),
    };
    chart
        .draw_series(LineSeries::new(waiting(fixed), FIXED.stroke_width(2)))?
        .label(format!(
            "{}: {}",
            Strategy::FixedDoubling.label(),
            done(fixed)
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], FIXED.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(waiting(jitter), JITTER.stroke_width(2)))?
        .label(format!(
            "{}: {}",
            Strategy::FullJitter.label(),
            done(jitter)
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], JITTER.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/retry-simulation.svg")
        });
    let cfg = SimConfig::default();
    let fixed = simulate(&cfg, Strategy::FixedDoubling);
    let jitter = simulate(&cfg, Strategy::FullJitter);
    println!("| strategy | peak retries / {} ms | peak attempts / {} ms after recovery | attempts | served | all served at |", fixed.bucket.as_millis(), fixed.bucket.as_millis());
    println!("|---|---|---|---|---|---|");
    for r in [&fixed, &jitter] {
        println!(
            "| {} | {} (at {:.1} s) | {} | {} | {} / {} | {} |",
            r.strategy.label(),
            r.peak_retries,
            secs(r.peak_retries_at),
            r.peak_after_recovery,
            r.total_attempts,
            r.served,
            cfg.clients,
            r.all_served_at.map_or_else(
                || format!("not within {} s", secs(cfg.horizon)),
                |t| format!("{:.2} s", secs(t))
            )
        );
    }
    if let Some(dir) = out.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    match draw(&out, &cfg, &fixed, &jitter) {
        Ok(()) => {
            let shown = out.canonicalize().unwrap_or(out);
            println!("wrote {}", shown.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot draw {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
