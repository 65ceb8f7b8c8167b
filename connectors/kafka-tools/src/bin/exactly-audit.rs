//! `exactly-audit`: checks a Kafka topic written by an exactly-once
//! pipeline — transactions per partition and producer id, records visible
//! under read_committed, a stuck last stable offset, duplicates and gaps.
//!
//! ```text
//! exactly-audit --topic orders --key-field user --seq-field seq
//! exactly-audit --topic orders --dedup-field id --json
//! exactly-audit --help
//! ```
//!
//! A thin shell around [`exactly_kafka_tools::audit`]: parse the arguments,
//! run the audit, print the report, exit with its code (0 clean, 1
//! findings, 2 usage or read error). See `docs/audit.md`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use exactly_kafka::bootstrap_from_env;
use exactly_kafka_tools::audit::{self, AuditArgs, EXIT_ERROR};

fn main() -> ExitCode {
    // Warnings of the clients it uses; the report itself goes to stdout.
    exactly_kafka_tools::logging::init("warn");
    let cli = match AuditArgs::try_parse() {
        Ok(args) => match args.options(bootstrap_from_env()) {
            Ok(options) => options,
            Err(error) => return fail(&error),
        },
        Err(help) if help.exit_code() == 0 => return print(&help.render().to_string(), 0),
        Err(error) => return fail(&audit::usage_line(&error)),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(audit::audit(&cli.audit)) {
        Ok(report) if cli.json => print(&report.to_json(), report.exit_code),
        Ok(report) => print(&report.to_text(cli.max_listed), report.exit_code),
        Err(error) => fail(&error.to_string()),
    }
}

/// Prints `text` on stdout and exits with `code`, or with 2 when stdout is
/// gone.
fn print(text: &str, code: u8) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", text.trim_end()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::from(code),
        Err(error) => fail(&format!("cannot write the report: {error}")),
    }
}

/// Prints one error line on stderr and exits with 2.
fn fail(message: &str) -> ExitCode {
    eprintln!("exactly-audit: error: {message}");
    ExitCode::from(EXIT_ERROR)
}
