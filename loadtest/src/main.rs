//! The `roomcast-loadtest` command: parses arguments, runs a scenario (or `compare`, or a hidden
//! worker), and turns the report into output and an exit status. The only place anyhow is used.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use roomcast_loadtest::cli::{self, Cli, Command, CompareArgs, Scenario};
use roomcast_loadtest::report::{self, Report};
use roomcast_loadtest::{client, orchestrator, plot, worker};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Worker => worker::main().map(|()| ExitCode::SUCCESS).map_err(anyhow::Error::from),
        Command::BenchRecv { messages } => bench(messages),
        Command::Scenario(s) => run_one(&s),
        Command::Compare(c) => compare(&c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roomcast-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_for(clean: bool) -> ExitCode {
    if clean { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

fn run_one(s: &Scenario) -> Result<ExitCode> {
    let cfg = cli::resolve(s, None)?;
    let report = orchestrator::run(&cfg)?;
    let mut out = std::io::stdout().lock();
    if cfg.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report::print_human(&report, &mut out)?;
    }
    if let Some(path) = &cfg.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cfg.plot {
        plot::write_svg(path, &[&report]).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(exit_for(report.clean))
}

fn compare(c: &CompareArgs) -> Result<ExitCode> {
    if c.scenario.common().spawn_server.is_some() {
        anyhow::bail!("compare starts both servers itself: drop --spawn-server (use --roomcast / --baseline)");
    }
    let baseline = match &c.baseline {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("roomcast-baseline").to_string_lossy().into_owned(),
    };
    let mut reports: Vec<Report> = Vec::new();
    for (name, cmd) in [("baseline", baseline.as_str()), ("roomcast", c.roomcast.as_str())] {
        let cfg = cli::resolve(&c.scenario, Some(cmd))?;
        if !cfg.quiet {
            eprintln!("compare: running against {name} ({cmd})");
        }
        let mut r = orchestrator::run(&cfg).with_context(|| format!("the run against {name}"))?;
        r.label = name.to_string();
        reports.push(r);
    }
    let (b, r) = (&reports[0], &reports[1]);
    let cfg = cli::resolve(&c.scenario, Some(&baseline))?;
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let cpu = |x: &Report| x.server.as_ref().and_then(|s| s.cpu_us_per_delivery);
    let rss = |x: &Report| x.server.as_ref().and_then(|s| s.rss_per_connection_kib);
    let doc = serde_json::json!({
        "roomcast": r,
        "baseline": b,
        "ratio": {
            "cpu_us_per_delivery": ratio(cpu(r), cpu(b)),
            "rss_per_connection_kib": ratio(rss(r), rss(b)),
            "latency_p99": ratio(Some(r.latency.p99_us as f64), Some(b.latency.p99_us as f64)),
        }
    });
    if let Some(path) = &cfg.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if cfg.json {
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        report::print_human(b, &mut out)?;
        writeln!(out)?;
        report::print_human(r, &mut out)?;
        writeln!(out)?;
        report::print_compare(r, b, &mut out)?;
    }
    if let Some(path) = &cfg.plot {
        plot::write_svg(path, &[r, b]).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(exit_for(r.clean && b.clean))
}

fn bench(messages: u64) -> Result<ExitCode> {
    let (rate, per_msg_ns) = client::bench_recv(messages)?;
    println!("receive path: {messages} messages, {rate:.0} messages/s on one core ({per_msg_ns:.0} ns each)");
    Ok(ExitCode::SUCCESS)
}
