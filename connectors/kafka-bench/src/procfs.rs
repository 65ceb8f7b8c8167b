//! What the driver reads from Linux's `/proc` about a process: its CPU
//! time, the CPU time of a JVM's JIT compiler and garbage-collector
//! threads, and its peak resident memory; and which process is the broker.
//!
//! Written by hand rather than with a procfs crate: it is four fields of
//! two text files, and the parsing (a command name in parentheses that may
//! hold spaces) is tested below. This module measures nothing over time;
//! `visible` samples these readings.

use std::path::Path;
use std::time::Duration;

/// Linux reports process times in clock ticks of 1/100 s (`USER_HZ`, fixed
/// at 100 for user space on every architecture Rust targets here).
const TICKS_PER_SECOND: u64 = 100;

/// The command name and user + system CPU time in a `/proc/…/stat` line.
fn parse_stat(stat: &str, path: &str) -> Result<(String, Duration), String> {
    // The command name is in parentheses and may hold spaces and
    // parentheses itself; the fields after the last `)` start with the
    // state (field 3), utime is field 14 and stime 15.
    let (head, after) = stat
        .rsplit_once(')')
        .ok_or_else(|| format!("{path}: no command name"))?;
    let name = head
        .split_once('(')
        .map(|(_, name)| name.to_owned())
        .ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64, String> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {} is not a number", index + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok((name, Duration::from_millis(total * 1000 / TICKS_PER_SECOND)))
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

/// User + system time of all the threads of process `pid`, exited ones
/// included.
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&read(&path)?, &path).map(|(_, cpu)| cpu)
}

/// The CPU time of a JVM's service threads, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThreadCpu {
    /// The JIT compiler threads (`C1 CompilerThread…`, `C2 CompilerThread…`).
    pub jit: Duration,
    /// The garbage collector's threads (`GC Thread#…`, and G1's `G1 …`
    /// marking, refinement and service threads).
    pub gc: Duration,
}

/// Which kind of JVM service thread `name` (a thread's `comm`, at most 15
/// bytes) is, if any.
fn jvm_thread_kind(name: &str) -> Option<fn(&mut ThreadCpu) -> &mut Duration> {
    if name.starts_with("C1 Compiler") || name.starts_with("C2 Compiler") {
        Some(|t| &mut t.jit)
    } else if name.starts_with("GC Thread") || name.starts_with("G1 ") {
        Some(|t| &mut t.gc)
    } else {
        None
    }
}

/// The CPU time of process `pid`'s live JIT and GC threads; zero for a
/// process that has none (a Rust contender). A compiler thread that the
/// JVM stopped takes its time with it, so the JIT figure can only be low.
pub fn thread_cpu(pid: u32) -> Result<ThreadCpu, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = ThreadCpu::default();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("listing {dir}: {e}"))?;
    for entry in entries.flatten() {
        let path = entry.path().join("stat");
        let path = path.to_string_lossy();
        // A thread that ended since the listing is no longer counted.
        let Ok(stat) = std::fs::read_to_string(path.as_ref()) else {
            continue;
        };
        let (name, cpu) = parse_stat(&stat, &path)?;
        if let Some(slot) = jvm_thread_kind(&name) {
            *slot(&mut total) += cpu;
        }
    }
    Ok(total)
}

/// The peak resident set size of process `pid` so far (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    parse_peak_rss(&read(&path)?).ok_or_else(|| format!("{path}: no VmHWM line"))
}

fn parse_peak_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The broker's process: `explicit` when given, else the pid that
/// `scripts/kafka-up` wrote for the port of `bootstrap` under the
/// workspace's `target/kafka/`. Either way it must be a running
/// `kafka.Kafka` JVM: the broker's CPU is part of every figure.
pub fn broker_pid(workspace: &Path, bootstrap: &str, explicit: Option<u32>) -> Result<u32, String> {
    let pid = match explicit {
        Some(pid) => pid,
        None => {
            let port = bootstrap
                .rsplit_once(':')
                .map_or(bootstrap, |(_, port)| port);
            let file = workspace.join(format!("target/kafka/broker-{port}/pid"));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "the broker's pid (its CPU time is measured): reading {}: {e}; start the broker with scripts/kafka-up, or pass --broker-pid",
                    file.display()
                )
            })?;
            text.trim().parse().map_err(|_| {
                format!(
                    "{}: `{}` is not a pid; pass --broker-pid",
                    file.display(),
                    text.trim()
                )
            })?
        }
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka") {
        Ok(pid)
    } else {
        Err(format!(
            "process {pid} is not a running Kafka broker (kafka.Kafka); start one with scripts/kafka-up, or pass --broker-pid"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_even_with_spaces_and_parentheses_in_the_name() {
        let stat = "4242 (C2 CompilerThre) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20";
        assert_eq!(
            parse_stat(stat, "x").unwrap(),
            ("C2 CompilerThre".to_owned(), Duration::from_millis(3800))
        );
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd, "x").unwrap().1, Duration::from_millis(30));
        assert_eq!(
            parse_stat("7 (x) R 1 2", "/proc/7/stat").unwrap_err(),
            "/proc/7/stat: field 14 is not a number"
        );
    }

    #[test]
    fn jvm_service_threads_are_sorted_into_jit_and_gc() {
        let mut cpu = ThreadCpu::default();
        for (name, ms) in [
            ("C1 CompilerThre", 1),
            ("C2 CompilerThre", 2),
            ("GC Thread#0", 10),
            ("G1 Conc#0", 20),
            ("G1 Main Marker", 40),
            ("VM Thread", 1000),
            ("main", 1000),
            ("data-plane-kafk", 1000),
        ] {
            if let Some(slot) = jvm_thread_kind(name) {
                *slot(&mut cpu) += Duration::from_millis(ms);
            }
        }
        assert_eq!(
            cpu,
            ThreadCpu {
                jit: Duration::from_millis(3),
                gc: Duration::from_millis(70),
            }
        );
    }

    #[test]
    fn peak_rss_is_read_from_vm_hwm() {
        let status = "Name:\tjava\nVmPeak:\t 9000 kB\nVmHWM:\t  372084 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_peak_rss(status), Some(372_084 * 1024));
        assert_eq!(parse_peak_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_readable_and_not_a_broker() {
        let me = std::process::id();
        assert!(process_cpu(me).is_ok());
        assert!(peak_rss(me).unwrap() > 0);
        assert_eq!(thread_cpu(me).unwrap(), ThreadCpu::default());
        let error = broker_pid(Path::new("/nonexistent"), "127.0.0.1:1", Some(me)).unwrap_err();
        assert!(error.contains("not a running Kafka broker"), "{error}");
        let error = broker_pid(Path::new("/nonexistent"), "127.0.0.1:1", None).unwrap_err();
        assert!(error.contains("target/kafka/broker-1/pid"), "{error}");
    }
}
