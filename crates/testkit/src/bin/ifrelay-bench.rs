//! `ifrelay-bench`: the benchmark behind `make bench` (see
//! `docs/performance.md` and `ifrelay_testkit::bench`).
//!
//! Prints progress lines, then the report; the last line is always the
//! one-line summary `bench: frames_per_s=… ratio=… …`. Exit codes: 0 done
//! (targets missed or not), 2 usage error, 1 the benchmark could not run.
//!
//! `ifrelay-bench box --config FILE` is how the benchmark starts each box
//! under test as a child process (the same start as `ifrelay run`).

use std::path::PathBuf;
use std::process::ExitCode;

use ifrelay_testkit::bench::proc::{serve_box, BoxCommand};
use ifrelay_testkit::bench::BenchOptions;

const USAGE: &str = "\
usage:
  ifrelay-bench [--quick] [--dir DIR] [--box-exe PATH]
      --quick          a smoke run of a few seconds per phase
      --dir DIR        working folder, emptied first (default var/bench,
                       var/bench-quick with --quick)
      --box-exe PATH   run the boxes as `PATH run --config FILE` (the
                       production ifrelay binary) instead of this binary;
                       commits per second are then not available
      --wait-quiet S   first wait up to S seconds until other processes
                       use under a quarter of a core (shared machines)
  ifrelay-bench box --config FILE
      serve one box (used by the benchmark itself)
  ifrelay-bench records [--quick]
      only the records phase: fill (or reuse) var/bench-records and
      measure search (IFRELAY_BENCH_RECORDS sets the record count)
  ifrelay-bench retention [--quick]
      only the retention phase, in var/bench-retention
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["box", "--config", file] = args.as_slice() {
        init_tracing("info");
        return match serve_box(&PathBuf::from(file)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(e.as_ref()),
        };
    }
    init_tracing("warn");
    if let ["records", rest @ ..] = args.as_slice() {
        let opts = match rest {
            [] => ifrelay_testkit::bench::records::RecordsOptions::full(),
            ["--quick"] => ifrelay_testkit::bench::records::RecordsOptions::quick(
                std::path::Path::new("var/bench-quick-records"),
            ),
            _ => {
                eprint!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        let run = ifrelay_testkit::bench::records::run(&opts).map_err(|e| e.to_string());
        let mut text = String::new();
        ifrelay_testkit::bench::records::render(&mut text, &run);
        print!("{text}");
        return if run.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let ["retention", rest @ ..] = args.as_slice() {
        let quick = match rest {
            [] => false,
            ["--quick"] => true,
            _ => {
                eprint!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        let run = ifrelay_testkit::bench::retention::run(
            std::path::Path::new("var/bench-retention/retention.redb"),
            ifrelay_testkit::bench::retention::entries(quick),
            if quick { 10 } else { 200 },
        )
        .map_err(|e| e.to_string());
        let mut text = String::new();
        ifrelay_testkit::bench::retention::render(&mut text, &run);
        print!("{text}");
        return if run.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(text) => {
            eprintln!("ifrelay-bench: {text}");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failure(&e),
    };
    match rt.block_on(ifrelay_testkit::bench::run(&opts)) {
        Ok(report) => {
            let text = report.render();
            let _ = std::fs::write(opts.dir.join("report.txt"), &text);
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(e.as_ref()),
    }
}

fn parse(args: &[&str]) -> Result<BenchOptions, String> {
    let quick = args.contains(&"--quick");
    let mut dir = None;
    let mut box_exe = None;
    let mut wait_quiet = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--quick" => {}
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a folder")?)),
            "--box-exe" => {
                box_exe = Some(PathBuf::from(it.next().ok_or("--box-exe needs a path")?));
            }
            "--wait-quiet" => {
                let secs: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--wait-quiet needs a number of seconds")?;
                wait_quiet = Some(std::time::Duration::from_secs(secs));
            }
            "help" | "--help" | "-h" => return Err("help".to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let cmd = match box_exe {
        Some(p) => BoxCommand::Ifrelay(p),
        None => BoxCommand::self_exec().map_err(|e| e.to_string())?,
    };
    let mut opts = if quick {
        BenchOptions::quick(cmd)
    } else {
        BenchOptions::full(cmd)
    };
    if let Some(d) = dir {
        opts.dir = d;
    }
    if let Some(w) = wait_quiet {
        opts.wait_quiet = w;
    }
    Ok(opts)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn failure(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("ifrelay-bench: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}
