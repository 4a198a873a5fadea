//! The `cadre` binary. Today it runs the supervision demo (`cadre demo`); the service
//! (`cadre serve`), its CLI and HTTP API arrive with the single-node runtime.

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cadre demo [--seconds N]\n\
  demo    run a live supervision tree: a worker that panics every few ticks is restarted in\n\
          place, a broken callback is disabled after its limit; prints the failure journal\n\
  --seconds N   stop after N seconds (default: run until Ctrl-C)";

fn parse(args: &[String]) -> Result<Option<Duration>, String> {
    match args {
        [cmd] if cmd == "demo" => Ok(None),
        [cmd, flag, n] if cmd == "demo" && flag == "--seconds" => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| Some(Duration::from_secs(n)))
            .ok_or_else(|| {
                format!("--seconds: expected a whole number of seconds above 0, got {n:?}")
            }),
        _ => Err("unknown command or arguments".to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("-h" | "--help" | "help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let duration = match parse(&args) {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("error: {reason}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CADRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = actix::System::new().block_on(cadre::demo::run(duration));
    match result {
        Ok(records) => {
            println!("failure journal ({} entries):", records.len());
            for r in records {
                println!(
                    "  #{} {} kind={} restart_count={} reason={:?}{}",
                    r.seq,
                    r.path,
                    r.kind,
                    r.restart_count,
                    r.message,
                    r.context
                        .map_or_else(String::new, |c| format!(" context={c}"))
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "demo failed");
            ExitCode::from(1)
        }
    }
}
