//! The contenders: their names, how each is started as a child process
//! with the run's client tuning, and how its CPU time and memory are read.
//!
//! The Rust contenders are this binary run again with the `job`
//! subcommand; Flink and Kafka Streams are the Maven projects in
//! `connectors/kafka-bench/jvm/`, run with `java` from their built
//! classes and copied dependencies. Every child gets the same arguments
//! (`JobArgs`), and the same tuning (`profile`) in its client's property
//! names. This module does not judge output (`watch` does).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::jobs::ClientProperties;
use crate::procfs::{self, ThreadCpu};
use crate::profile::Tuning;
use crate::visible::{Clocks, Cpu};
use crate::watch::Probe;

/// How long a contender may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(40);

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

impl System {
    fn on_the_jvm(self) -> bool {
        matches!(self, System::Flink | System::Kstreams)
    }
}

/// One contender: a system at a checkpoint or commit interval and a
/// parallelism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// Its name in the report, e.g. `exactly-eos-1s`.
    pub name: String,
    /// The contenders that differ from it only in parallelism share a
    /// group, named after the one at the run's parallelism: the summary
    /// takes each group's best figure within a round.
    pub group: String,
    /// What it runs.
    pub system: System,
    /// Checkpoint or commit interval.
    pub interval_ms: u64,
    /// Parallelism (threads for Kafka Streams; ignored by the loops).
    pub parallelism: usize,
}

impl Contender {
    /// The default line-up at `parallelism`: the raw pipe, then every
    /// system at 100 ms and 1 s; and exactly, Flink and Kafka Streams at
    /// 1 s with parallelism 1 too (`-p1`), so that each can be taken at its
    /// best.
    pub fn line_up(parallelism: usize) -> Vec<Contender> {
        let at = |name: &str, system, interval_ms, parallelism| Contender {
            name: name.to_owned(),
            group: name.to_owned(),
            system,
            interval_ms,
            parallelism,
        };
        let mut line_up = vec![
            at("raw", System::Raw, 1000, 1),
            at("hand-eos-100ms", System::Hand, 100, 1),
            at("hand-eos-1s", System::Hand, 1000, 1),
            at("exactly-eos-100ms", System::ExactlyEos, 100, parallelism),
            at("exactly-eos-1s", System::ExactlyEos, 1000, parallelism),
            at("exactly-alo-1s", System::ExactlyAlo, 1000, parallelism),
            at("flink-eos-100ms", System::Flink, 100, parallelism),
            at("flink-eos-1s", System::Flink, 1000, parallelism),
            at("kstreams-eos-100ms", System::Kstreams, 100, parallelism),
            at("kstreams-eos-1s", System::Kstreams, 1000, parallelism),
        ];
        if parallelism != 1 {
            for group in ["exactly-eos-1s", "flink-eos-1s", "kstreams-eos-1s"] {
                let index = line_up
                    .iter()
                    .position(|c| c.name == group)
                    .expect("the group is in the line-up");
                let single = Contender {
                    name: format!("{group}-p1"),
                    parallelism: 1,
                    ..line_up[index].clone()
                };
                line_up.insert(index + 1, single);
            }
        }
        line_up
    }

    /// Starts the contender on `input` → `output`, its output going to
    /// `log`.
    pub fn spawn(
        &self,
        setup: &Setup,
        input: &str,
        output: &str,
        id: &str,
        log: &Path,
    ) -> Result<Running, String> {
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
            .args(["--bootstrap", &setup.bootstrap])
            .args(["--input", input])
            .args(["--output", output])
            .args(["--interval-ms", &self.interval_ms.to_string()])
            .args(["--parallelism", &self.parallelism.to_string()])
            .args(["--id", id])
            .args(self.client_args(setup));
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
            broker_pid: setup.broker_pid,
            child,
        })
    }

    /// The changelog topic of its counts store when it keeps one (Kafka
    /// Streams, run with the application id `id`).
    pub fn changelog(&self, id: &str) -> Option<String> {
        (self.system == System::Kstreams).then(|| format!("{id}-counts-changelog"))
    }

    /// The run's tuning and extra properties as this contender's
    /// arguments: the tuning first, so that an extra property overrides it.
    fn client_args(&self, setup: &Setup) -> Vec<String> {
        let flagged = |flag: &str, properties: Vec<String>| -> Vec<String> {
            properties
                .into_iter()
                .flat_map(|property| [flag.to_owned(), property])
                .collect()
        };
        let tuning = &setup.tuning;
        if self.system.on_the_jvm() {
            let mut args = flagged(
                "--producer-property",
                [tuning.producer_properties(), setup.java.producer.clone()].concat(),
            );
            args.extend(flagged(
                "--consumer-property",
                [
                    tuning.java_consumer_properties(),
                    setup.java.consumer.clone(),
                ]
                .concat(),
            ));
            args
        } else {
            let properties = ClientProperties {
                producer: [tuning.producer_properties(), setup.rust.producer.clone()].concat(),
                consumer: setup.rust.consumer.clone(),
            };
            let mut args = properties.to_args();
            if let Some(records) = tuning.poll_records {
                args.extend(["--batch-size".to_owned(), records.to_string()]);
            }
            args
        }
    }
}

/// Extra Java client properties for the Flink and Kafka Streams
/// contenders, to profile a setting.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JavaProperties {
    /// A Java producer property for Flink's sink and Kafka Streams,
    /// `KEY=VALUE`; repeatable.
    #[arg(long = "java-producer-property", value_name = "KEY=VALUE")]
    pub producer: Vec<String>,
    /// A Java consumer property for Flink's source and Kafka Streams' main
    /// consumer, `KEY=VALUE`; repeatable.
    #[arg(long = "java-consumer-property", value_name = "KEY=VALUE")]
    pub consumer: Vec<String>,
}

/// What every contender of a run is started with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The broker's address.
    pub bootstrap: String,
    /// The broker's process, whose CPU time is read with the contender's.
    pub broker_pid: u32,
    /// The profile's knobs.
    pub tuning: Tuning,
    /// Extra librdkafka properties for the Rust contenders.
    pub rust: ClientProperties,
    /// Extra Java client properties for the JVM contenders.
    pub java: JavaProperties,
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

/// A started contender; stopped when dropped.
pub struct Running {
    name: String,
    log: PathBuf,
    broker_pid: u32,
    child: Child,
}

impl Running {
    /// The process's peak resident memory so far, in bytes.
    pub fn peak_rss(&self) -> Result<u64, String> {
        procfs::peak_rss(self.child.id())
    }
}

/// The CPU clocks of a contender's process and of the broker's.
struct ProcessClocks {
    contender: u32,
    broker: u32,
}

impl Clocks for ProcessClocks {
    fn cpu(&self) -> Result<Cpu, String> {
        Ok(Cpu {
            contender: procfs::process_cpu(self.contender)?,
            broker: procfs::process_cpu(self.broker)?,
        })
    }

    fn threads(&self) -> Result<ThreadCpu, String> {
        procfs::thread_cpu(self.contender)
    }
}

impl Probe for Running {
    /// User + system time of all the process's threads, and the broker's.
    fn clocks(&self) -> Arc<dyn Clocks> {
        Arc::new(ProcessClocks {
            contender: self.child.id(),
            broker: self.broker_pid,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(tuning: Tuning) -> Setup {
        Setup {
            bootstrap: "127.0.0.1:9092".to_owned(),
            broker_pid: 1,
            tuning,
            rust: ClientProperties {
                producer: vec!["linger.ms=7".to_owned()],
                consumer: vec!["fetch.min.bytes=1".to_owned()],
            },
            java: JavaProperties {
                producer: vec!["acks=all".to_owned()],
                consumer: Vec::new(),
            },
        }
    }

    fn named<'a>(line_up: &'a [Contender], name: &str) -> &'a Contender {
        line_up.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn each_system_at_1s_also_runs_at_parallelism_1_in_its_group() {
        let line_up = Contender::line_up(2);
        for group in ["exactly-eos-1s", "flink-eos-1s", "kstreams-eos-1s"] {
            let single = named(&line_up, &format!("{group}-p1"));
            assert_eq!((single.group.as_str(), single.parallelism), (group, 1));
            assert_eq!(named(&line_up, group).parallelism, 2);
        }
        assert_eq!(named(&line_up, "raw").group, "raw");
        let at_one = Contender::line_up(1);
        assert!(at_one.iter().all(|c| !c.name.ends_with("-p1")));
    }

    #[test]
    fn the_tuning_reaches_each_client_by_its_own_names_and_extras_come_last() {
        let tuning = Tuning {
            linger_ms: Some(20),
            batch_bytes: None,
            poll_records: Some(2000),
        };
        let line_up = Contender::line_up(2);
        let args = |name| named(&line_up, name).client_args(&setup(tuning)).join(" ");
        assert_eq!(
            args("flink-eos-1s"),
            "--producer-property linger.ms=20 --producer-property acks=all --consumer-property max.poll.records=2000"
        );
        assert_eq!(
            args("exactly-eos-1s"),
            "--producer-property linger.ms=20 --producer-property linger.ms=7 --consumer-property fetch.min.bytes=1 --batch-size 2000"
        );
        let defaults = named(&line_up, "kstreams-eos-1s").client_args(&setup(Tuning::default()));
        assert_eq!(defaults.join(" "), "--producer-property acks=all");
    }
}
