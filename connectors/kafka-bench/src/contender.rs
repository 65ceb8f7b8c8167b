//! The contenders: their names, how each is started as a child process,
//! and how its CPU time is read.
//!
//! The Rust contenders are this binary run again with the `job`
//! subcommand; Flink and Kafka Streams are the Maven projects in
//! `connectors/kafka-bench/jvm/`, run with `java` from their built
//! classes and copied dependencies. Every child gets the same arguments
//! (`JobArgs`). This module does not judge output (`watch` does).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::jobs::{ClientProperties, JobArgs};
use crate::visible::CpuClock;
use crate::watch::Probe;

/// How long a contender may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(40);

/// Linux reports process times in clock ticks of 1/100 s (`USER_HZ`, fixed
/// at 100 for user space on every architecture Rust targets here).
const TICKS_PER_SECOND: u64 = 100;

/// Which program a contender runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// rdkafka consume → produce, at-least-once.
    Raw,
    /// A hand-written transactional rdkafka loop.
    Hand,
    /// exactly with `DeliveryGuarantee::ExactlyOnce`.
    ExactlyEos,
    /// exactly with `DeliveryGuarantee::AtLeastOnce`.
    ExactlyAlo,
    /// Apache Flink with `DeliveryGuarantee.EXACTLY_ONCE`.
    Flink,
    /// Kafka Streams with `exactly_once_v2`.
    Kstreams,
}

/// One contender: a system at a checkpoint or commit interval and a
/// parallelism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// Its name in the report, e.g. `exactly-eos-1s`.
    pub name: String,
    /// What it runs.
    pub system: System,
    /// Checkpoint or commit interval.
    pub interval_ms: u64,
    /// Parallelism (threads for Kafka Streams; ignored by the loops).
    pub parallelism: usize,
}

impl Contender {
    /// The default line-up at `parallelism`: the raw pipe first, then every
    /// system at 100 ms and 1 s, and Flink at parallelism 1 too.
    pub fn line_up(parallelism: usize) -> Vec<Contender> {
        let at = |name: &str, system, interval_ms, parallelism| Contender {
            name: name.to_owned(),
            system,
            interval_ms,
            parallelism,
        };
        vec![
            at("raw", System::Raw, 1000, 1),
            at("hand-eos-100ms", System::Hand, 100, 1),
            at("hand-eos-1s", System::Hand, 1000, 1),
            at("exactly-eos-100ms", System::ExactlyEos, 100, parallelism),
            at("exactly-eos-1s", System::ExactlyEos, 1000, parallelism),
            at("exactly-alo-1s", System::ExactlyAlo, 1000, parallelism),
            at("flink-eos-100ms", System::Flink, 100, parallelism),
            at("flink-eos-1s", System::Flink, 1000, parallelism),
            at("flink-eos-1s-p1", System::Flink, 1000, 1),
            at("kstreams-eos-100ms", System::Kstreams, 100, parallelism),
            at("kstreams-eos-1s", System::Kstreams, 1000, parallelism),
        ]
    }

    /// Starts the contender on `input` → `output`, its output going to
    /// `log`.
    pub fn spawn(
        &self,
        bootstrap: &str,
        input: &str,
        output: &str,
        id: &str,
        properties: &ClientProperties,
        log: &Path,
    ) -> Result<Running, String> {
        let args = JobArgs {
            bootstrap: bootstrap.to_owned(),
            input: input.to_owned(),
            output: output.to_owned(),
            interval_ms: self.interval_ms,
            parallelism: self.parallelism,
            id: id.to_owned(),
            properties: properties.clone(),
        };
        let mut command = match self.system {
            System::Flink => java("flink", "exactly.bench.FlinkCount")?,
            System::Kstreams => java("kstreams", "exactly.bench.StreamsCount")?,
            rust => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("this benchmark's own executable: {e}"))?;
                let mut command = Command::new(exe);
                command.arg("job").arg("--system").arg(
                    clap::ValueEnum::to_possible_value(&rust)
                        .expect("every system has a name")
                        .get_name(),
                );
                command
            }
        };
        command
            .args(["--bootstrap", &args.bootstrap])
            .args(["--input", &args.input])
            .args(["--output", &args.output])
            .args(["--interval-ms", &args.interval_ms.to_string()])
            .args(["--parallelism", &args.parallelism.to_string()])
            .args(["--id", &args.id]);
        if !matches!(self.system, System::Flink | System::Kstreams) {
            command.args(args.properties.to_args());
        }
        let file = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let errors = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.name))?;
        Ok(Running {
            name: self.name.clone(),
            log: log.to_owned(),
            child,
        })
    }
}

/// The Maven project of a JVM contender.
fn jvm_project(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jvm").join(name)
}

/// `java` with the built classes and dependencies of a JVM contender.
fn java(project: &str, main: &str) -> Result<Command, String> {
    let dir = jvm_project(project);
    let (classes, lib) = (dir.join("target/classes"), dir.join("target/lib"));
    if !classes.is_dir() || !lib.is_dir() {
        return Err(format!(
            "the {project} contender is not built: run `mvn -q -f {} package -DskipTests` (scripts/kafka-bench does)",
            dir.join("pom.xml").display()
        ));
    }
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}:{}/*", classes.display(), lib.display()))
        .arg(main);
    Ok(command)
}

/// A started contender; killed when dropped.
pub struct Running {
    name: String,
    log: PathBuf,
    child: Child,
}

/// User + system time of all the threads of process `pid`.
fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64, String> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {} is not a number", index + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / TICKS_PER_SECOND))
}

impl Probe for Running {
    /// User + system time of all the process's threads.
    fn cpu_clock(&self) -> CpuClock {
        let pid = self.child.id();
        Arc::new(move || process_cpu(pid))
    }

    /// Fails, naming the log, once the process has exited.
    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its output is in {}",
                self.name,
                self.log.display()
            )),
            Err(e) => Err(format!("waiting for {}: {e}", self.name)),
        }
    }
}

impl Drop for Running {
    /// Sends SIGTERM (the JVM contenders then stop cleanly and delete
    /// their temporary files), and SIGKILL after [`STOP_GRACE`].
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + STOP_GRACE;
        while terminated && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = self.child.kill().and_then(|()| self.child.wait().map(drop)) {
            eprintln!("kafka-bench: stopping {}: {e}", self.name);
        }
    }
}
