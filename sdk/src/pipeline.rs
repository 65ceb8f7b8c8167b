//! The pipeline builder: [`Job`], [`Stream`] and [`KeyedStream`].
//!
//! Owns: the user-facing way to wire sources, operators, `key_by`, `union`
//! and sinks, and the description of the job it produces: which elements
//! are chained into one stage, where exchanges go, the names, state ids and
//! parallelism of every stage, and the mistakes found on the way. Also the
//! [`JobHandle`] a started job is watched and stopped through.
//!
//! Does not own the runtime objects built from that description (task
//! loops, operator pipes, exchange queues, sink drivers): that is the
//! runtime's job graph, `runtime/graph.rs`. Does not own execution: that is
//! the runtime's executor.
//!
//! ```no_run
//! use exactly::prelude::*;
//!
//! #[state]
//! #[derive(Default)]
//! struct Seen {
//!     count: u64,
//! }
//!
//! #[operator]
//! fn split(line: String, out: &mut Emitter<String>) {
//!     line.split_whitespace().for_each(|w| out.emit(w.to_owned()));
//! }
//!
//! #[operator]
//! fn count(word: String, #[state] seen: &mut Seen) -> (String, u64) {
//!     seen.count += 1;
//!     (word, seen.count)
//! }
//!
//! # fn main() -> exactly::Result<()> {
//! let job = Job::new("wordcount", JobConfig::new());
//! job.source(VecSource::new(vec!["a b".to_string(), "b".to_string()]))
//!     .operator(split)
//!     .key_by(|word: &String| word.clone())
//!     .operator(count)
//!     .sink(DiscardSink::new());
//! job.run()
//! # }
//! ```

use std::cell::RefCell;
use std::ffi::OsStr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::config::JobConfig;
use crate::error::{CallError, Error, Result, SavepointError};
use crate::key::{Key, key_hash};
use crate::metrics::{JobMetrics, MetricsSnapshot};
use crate::operator::{Operator, UnkeyedOperator};
use crate::runtime::coordinator::JobCommand;
use crate::runtime::element::KeyFn;
use crate::runtime::executor;
use crate::runtime::graph::{JobGraph, OpenChain};
use crate::sink::TwoPhaseCommitSink;
use crate::source::Source;
use crate::storage::Location;

type Graph = Rc<RefCell<JobGraph>>;

/// A streaming job: a name, a configuration, and the pipeline built on it.
pub struct Job {
    name: String,
    config: JobConfig,
    graph: Graph,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let graph = self.graph.borrow();
        let stages: Vec<String> = graph.stages.iter().map(|s| s.name()).collect();
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("stages", &stages)
            .finish()
    }
}

impl Job {
    /// A job named `name` (used in logs and checkpoint metadata).
    pub fn new(name: impl Into<String>, config: JobConfig) -> Self {
        Job {
            name: name.into(),
            config,
            graph: Rc::new(RefCell::new(JobGraph::default())),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Adds a source, with the job's default parallelism.
    pub fn source<S: Source>(&self, source: S) -> Stream<S::Item> {
        let name = source.name();
        let id = format!("0:{name}");
        let stage = self
            .graph
            .borrow_mut()
            .add_stage(name.clone(), self.config.parallelism, true);
        self.graph.borrow_mut().stages[stage]
            .operators
            .push(id.clone());
        let prototype = Arc::new(Mutex::new(source));
        let checked = Arc::clone(&prototype);
        self.graph.borrow_mut().preflight.push((
            format!("source {name}"),
            Box::new(move |settings| {
                checked
                    .lock()
                    .expect("source prototype poisoned")
                    .preflight(settings)
            }),
        ));
        Stream::chain(&self.graph, stage, OpenChain::source(prototype, id))
    }

    /// Runs the job to completion on a new tokio runtime, restarting it
    /// from its last checkpoint as the restart strategy allows. Blocks.
    ///
    /// # Errors
    ///
    /// A bad configuration or pipeline, a checkpoint that cannot be
    /// restored, or a failure after the restarts are spent.
    pub fn run(self) -> Result<()> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = self.config.worker_threads {
            builder.worker_threads(threads);
        }
        let runtime = builder.enable_all().build().map_err(Error::StartRuntime)?;
        runtime.block_on(async move { self.spawn()?.join().await.map(drop) })
    }

    /// Starts the job on the current tokio runtime and returns a handle to
    /// watch, stop or savepoint it.
    ///
    /// # Errors
    ///
    /// A bad configuration or pipeline, or no tokio runtime.
    pub fn spawn(self) -> Result<JobHandle> {
        self.config.validate()?;
        let graph = Rc::try_unwrap(self.graph).map_err(|_| {
            Error::Pipeline(
                "a stream of this job was not finished; end every stream with .sink(...)".into(),
            )
        })?;
        let mut graph = graph.into_inner();
        graph.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let started = executor::start(&runtime, self.name, self.config, graph);
        Ok(JobHandle {
            commands: started.commands,
            task: started.task,
            metrics: started.metrics,
        })
    }
}

/// A running job, from [`Job::spawn`].
#[derive(Debug)]
pub struct JobHandle {
    commands: UnboundedSender<JobCommand>,
    task: tokio::task::JoinHandle<Result<()>>,
    metrics: Arc<JobMetrics>,
}

impl JobHandle {
    /// The job's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Whether the job has ended (finished, failed or stopped); [`join`](Self::join)
    /// then returns at once.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the job gracefully: sources stop reading at a final
    /// checkpoint, which is committed; then the job ends. Started again with
    /// the same checkpoint directory, it resumes exactly there.
    pub fn stop(&self) {
        let _ = self.commands.send(JobCommand::Stop);
    }

    /// Takes a savepoint: a checkpoint copied to `target` (a directory
    /// that must not exist, or an `s3://bucket/prefix` holding no
    /// savepoint), never deleted by the job. Start from it with
    /// [`JobConfig::restore_from`].
    ///
    /// # Errors
    ///
    /// An invalid target, no checkpoint storage, the job already stopping,
    /// or a [`SavepointError`]; after any of them the job keeps running.
    pub async fn savepoint(&self, target: impl AsRef<OsStr>) -> Result<Location> {
        self.request_savepoint(Location::parse(target)?, false)
            .await
    }

    /// Takes a savepoint into `target` with the job's final checkpoint and
    /// stops the job (Flink's stop-with-savepoint): nothing is committed
    /// after the savepoint, so a job restored from it neither skips nor
    /// repeats output. Returns the savepoint's path; [`JobHandle::join`]
    /// then returns once the job has ended.
    ///
    /// The job stops only once the savepoint is written. If it fails, the
    /// job keeps running (as in Flink) and the error is returned: call this
    /// again once the cause is removed. (A [`JobHandle::stop`] received
    /// meanwhile, or the end of every source, still stops the job.)
    ///
    /// # Errors
    ///
    /// As [`JobHandle::savepoint`], in particular
    /// [`SavepointError::Export`] (the target cannot be written),
    /// [`SavepointError::Expired`] (the checkpoint timed out) and
    /// [`SavepointError::AttemptFailed`] (a task failed, for example a
    /// snapshot or a sink's pre-commit; the job restarts).
    pub async fn stop_with_savepoint(&self, target: impl AsRef<OsStr>) -> Result<Location> {
        self.request_savepoint(Location::parse(target)?, true).await
    }

    /// Asks the coordinator for a savepoint into `target` (the final one
    /// when `stop`) and waits for its answer.
    async fn request_savepoint(&self, target: Location, stop: bool) -> Result<Location> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(JobCommand::Savepoint {
                target,
                reply,
                stop,
            })
            .map_err(|_| SavepointError::JobEnded)?;
        answer
            .await
            .map_err(|_| SavepointError::EndedBeforeSavepoint)?
    }

    /// Waits for the job to end and returns its final counters.
    ///
    /// # Errors
    ///
    /// Whatever ended the job.
    pub async fn join(self) -> Result<MetricsSnapshot> {
        self.task
            .await
            .map_err(|e| CallError::from_join("the job's driver task", e))??;
        Ok(self.metrics.snapshot())
    }
}

/// A stream of `T` records.
///
/// Operators added to a stream are chained into the current stage (fused,
/// no queue between them); `key_by`, `union` and `rebalance` start a new
/// stage behind an exchange. Every stream must end in a
/// [`sink`](Stream::sink).
#[must_use = "a stream does nothing until it ends in .sink(...)"]
pub struct Stream<T> {
    graph: Graph,
    inner: Inner<T>,
}

enum Inner<T> {
    Chain { stage: usize, chain: OpenChain<T> },
    Union(Vec<Stream<T>>),
}

impl<T: Send + 'static> Stream<T> {
    fn chain(graph: &Graph, stage: usize, chain: OpenChain<T>) -> Self {
        Stream {
            graph: Rc::clone(graph),
            inner: Inner::Chain { stage, chain },
        }
    }

    /// The open chains this stream is made of.
    fn into_chains(self) -> Vec<(usize, OpenChain<T>)> {
        match self.inner {
            Inner::Chain { stage, chain } => vec![(stage, chain)],
            Inner::Union(members) => members.into_iter().flat_map(Stream::into_chains).collect(),
        }
    }

    /// This stream as one chain: a union is first merged through an
    /// exchange.
    fn into_chain(self) -> (usize, OpenChain<T>) {
        match self.inner {
            Inner::Chain { stage, chain } => (stage, chain),
            Inner::Union(_) => self.exchange("union", None).into_chain(),
        }
    }

    /// Ends every chain of this stream in an exchange into a new stage.
    fn exchange(self, head: &str, key: Option<KeyFn<T, u64>>) -> Stream<T> {
        let graph = Rc::clone(&self.graph);
        let parallelism = match &self.inner {
            Inner::Chain { stage, .. } => graph.borrow().stages[*stage].parallelism,
            Inner::Union(_) => self.first_parallelism(),
        };
        let chains = self.into_chains();
        let (down, gate) = {
            let mut g = graph.borrow_mut();
            let down = g.add_stage(head.to_owned(), parallelism, false);
            let upstream = chains.iter().map(|(stage, _)| *stage).collect();
            let gate = g.add_exchange::<T>(upstream, down);
            for (stage, chain) in chains {
                g.end_in_exchange(stage, chain, gate, key.clone());
            }
            (down, gate)
        };
        Stream::chain(&graph, down, OpenChain::exchange(gate))
    }

    fn first_parallelism(&self) -> usize {
        match &self.inner {
            Inner::Chain { stage, .. } => self.graph.borrow().stages[*stage].parallelism,
            Inner::Union(members) => members
                .iter()
                .map(Stream::first_parallelism)
                .max()
                .unwrap_or(1),
        }
    }

    /// Applies a stateless operator: a function marked `#[operator]`
    /// without `#[state]` parameters. It is chained into the current stage.
    pub fn operator<O>(self, op: O) -> Stream<O::Out>
    where
        O: UnkeyedOperator<In = T>,
    {
        let graph = Rc::clone(&self.graph);
        let (stage, chain) = self.into_chain();
        graph.borrow_mut().stages[stage]
            .parts
            .push(O::NAME.to_owned());
        Stream::chain(&graph, stage, chain.operator(op))
    }

    /// Repartitions by key: records with equal keys go to the same subtask
    /// of the next stage, whose `#[state]` is then scoped per key.
    pub fn key_by<K, F>(self, key: F) -> KeyedStream<K, T>
    where
        K: Key,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let key: KeyFn<T, K> = Arc::new(key);
        let hash_key = Arc::clone(&key);
        let hash: KeyFn<T, u64> = Arc::new(move |record| key_hash(&hash_key(record)));
        KeyedStream {
            stream: self.exchange("key_by", Some(hash)),
            key,
        }
    }

    /// Merges this stream with `other`. The next operator reads both, and
    /// aligns their checkpoint barriers.
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        let graph = Rc::clone(&self.graph);
        let mut members = match self.inner {
            Inner::Union(members) => members,
            chain => vec![Stream {
                graph: Rc::clone(&graph),
                inner: chain,
            }],
        };
        members.push(other);
        Stream {
            graph,
            inner: Inner::Union(members),
        }
    }

    /// Redistributes batches round robin into a new stage, so that the
    /// operators after it can have another parallelism.
    pub fn rebalance(self) -> Stream<T> {
        self.exchange("rebalance", None)
    }

    /// Sets the parallelism of the current stage: everything since the
    /// source or the last `key_by`, `union` or `rebalance`.
    pub fn parallelism(self, parallelism: usize) -> Stream<T> {
        let graph = Rc::clone(&self.graph);
        let (stage, chain) = self.into_chain();
        set_parallelism(&graph, stage, parallelism);
        Stream::chain(&graph, stage, chain)
    }

    /// Ends the stream in a sink, chained into the current stage.
    pub fn sink<S>(self, sink: S)
    where
        S: TwoPhaseCommitSink<Item = T>,
    {
        let graph = Rc::clone(&self.graph);
        let (stage, chain) = self.into_chain();
        let name = sink.name();
        let id = {
            let mut g = graph.borrow_mut();
            let spec = &mut g.stages[stage];
            let id = format!("{}:{name}", spec.parts.len());
            spec.parts.push(name.clone());
            spec.operators.push(id.clone());
            id
        };
        let prototype = Arc::new(Mutex::new(sink));
        let checked = Arc::clone(&prototype);
        graph.borrow_mut().preflight.push((
            format!("sink {name}"),
            Box::new(move |settings| {
                checked
                    .lock()
                    .expect("sink prototype poisoned")
                    .preflight(settings)
            }),
        ));
        graph.borrow_mut().end_in_sink(stage, chain, prototype, id);
    }
}

fn set_parallelism(graph: &Graph, stage: usize, parallelism: usize) {
    let mut g = graph.borrow_mut();
    if parallelism == 0 {
        let name = g.stages[stage].name();
        g.errors.push(Error::config(
            format!("parallelism of `{name}`"),
            "the parallelism must be at least 1, got 0",
        ));
    } else {
        g.stages[stage].parallelism = parallelism;
    }
}

/// A stream partitioned by key, from [`Stream::key_by`]. Operators applied
/// to it keep their `#[state]` per key.
#[must_use = "a keyed stream does nothing until an operator and a sink follow"]
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key: KeyFn<T, K>,
}

impl<K: Key, T: Send + 'static> KeyedStream<K, T> {
    /// Applies an operator; its `#[state]` is scoped to the record's key.
    pub fn operator<O>(self, op: O) -> Stream<O::Out>
    where
        O: Operator<In = T>,
    {
        let graph = Rc::clone(&self.stream.graph);
        let (stage, chain) = self.stream.into_chain();
        let id = {
            let mut g = graph.borrow_mut();
            let spec = &mut g.stages[stage];
            let id = format!("{}:{}", spec.parts.len(), O::NAME);
            spec.parts.push(O::NAME.to_owned());
            if !O::STATE_NAMES.is_empty() {
                spec.operators.push(id.clone());
            }
            id
        };
        let chain = if O::STATE_NAMES.is_empty() {
            chain.operator(op)
        } else {
            chain.keyed_operator(op, self.key, id)
        };
        Stream::chain(&graph, stage, chain)
    }

    /// Sets the parallelism of the keyed stage.
    pub fn parallelism(self, parallelism: usize) -> Self {
        KeyedStream {
            stream: self.stream.parallelism(parallelism),
            key: self.key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::DiscardSink;
    use crate::source::VecSource;

    #[test]
    fn every_mistake_in_a_pipeline_is_reported_at_once() {
        let job = Job::new("mistakes", JobConfig::new());
        job.source(VecSource::new(vec![1u64]))
            .parallelism(0)
            .sink(DiscardSink::new());
        let unfinished = job
            .source(VecSource::new(vec![2u64]))
            .rebalance()
            .parallelism(0);
        drop(unfinished);
        let err = job.run().unwrap_err();
        let Error::Many(errors) = &err else {
            panic!("only one error reported: {err}")
        };
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].contains("parallelism of `vec`"), "{}", errors[0]);
        assert!(
            errors[1].contains("parallelism of `rebalance`"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].contains("`rebalance` does not end in a sink"),
            "{}",
            errors[2]
        );
        assert!(err.to_string().starts_with("3 errors:\n- "), "{err}");
    }

    fn one_record_job(name: &str) -> Job {
        let job = Job::new(name, JobConfig::new());
        job.source(VecSource::new(vec![1u64]))
            .sink(DiscardSink::new());
        job
    }

    #[test]
    fn spawning_outside_a_tokio_runtime_is_a_typed_error() {
        let err = one_record_job("no-runtime").spawn().unwrap_err();
        assert!(matches!(err, Error::NoRuntime(_)), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn a_savepoint_of_an_ended_job_is_a_typed_error() {
        let handle = one_record_job("ended").spawn().unwrap();
        while !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let err = handle.savepoint("unused").await.unwrap_err();
        assert!(
            matches!(err, Error::Savepoint(SavepointError::JobEnded)),
            "{err:?}"
        );
    }
}
