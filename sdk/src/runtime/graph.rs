//! The job graph: what a pipeline described with [`crate::Job`] compiles
//! to, and the runtime objects built from it for every attempt.
//!
//! A *stage* is a chain of fused elements with one parallelism: a head (a
//! source, or an exchange's receiving side), chained operators, and a tail
//! (a sink, or an exchange's sending side). An *exchange* connects the
//! tails of one or more stages to the head of the next.
//!
//! Owns: the stages and exchanges of a job ([`JobGraph`]), their validation,
//! and the translation of each described element into the runtime's own:
//! an [`OpenChain`] turns a source, an operator, a `key_by` or a sink into
//! the task loop, [`OperatorPipe`], [`ExchangePipe`] or
//! [`TwoPhaseCommitDriver`] that runs it, and [`JobGraph::gates`] creates
//! the queues of every exchange. All of it is built fresh for every attempt
//! from the factories stored here.
//!
//! Does not own the shape of a pipeline (which elements are chained, where
//! exchanges go, names and parallelism): that is [`crate::pipeline`], which
//! describes the job through this module's types. Does not own running the
//! graph: [`super::executor`].

use std::any::Any;
use std::sync::{Arc, Mutex};

use super::chain::OperatorPipe;
use super::element::{BoxFuture, KeyFn, Pipe};
use super::env::SubtaskEnv;
use super::exchange::{ExchangePipe, GateChannels, GateRegistry, Partitioner};
use super::task::{run_gate, run_source};
use super::two_phase_commit::TwoPhaseCommitDriver;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::operator::Operator;
use crate::preflight::PreflightCheck;
use crate::sink::TwoPhaseCommitSink;
use crate::source::Source;
use crate::storage::StageMetadata;

/// Builds one subtask of a stage for an attempt: returns its task future.
type StageRunner = Box<dyn Fn(SubtaskEnv) -> Result<BoxFuture<'static, Result<()>>> + Send + Sync>;

/// Builds the rest of a chain for one subtask.
type PipeFactory<T> = Box<dyn Fn(&SubtaskEnv) -> Result<Box<dyn Pipe<T>>> + Send + Sync>;

/// Creates the queues of one exchange for an attempt, from the
/// `(stage, parallelism)` of every upstream stage, the downstream
/// parallelism and the queue capacity.
type GateFactory =
    Box<dyn Fn(&[(usize, usize)], usize, usize) -> Box<dyn Any + Send + Sync> + Send + Sync>;

/// A stage whose head and operators are known but not yet its tail: the
/// elements so far, ending in records of `T`.
pub(crate) struct OpenChain<T>(Box<dyn FnOnce(PipeFactory<T>) -> StageRunner>);

impl<T: Send + 'static> OpenChain<T> {
    /// A chain headed by `source`, whose position is checkpointed under
    /// element id `id`. Every subtask runs a clone of the prototype.
    pub(crate) fn source<S: Source<Item = T>>(prototype: Arc<Mutex<S>>, id: String) -> Self {
        OpenChain(Box::new(move |tail| {
            Box::new(move |env| {
                let pipe = tail(&env)?;
                let source = prototype.lock().expect("source prototype poisoned").clone();
                Ok(Box::pin(run_source(source, id.clone(), env, pipe)))
            })
        }))
    }

    /// A chain headed by the receiving side of exchange `gate`.
    pub(crate) fn exchange(gate: usize) -> Self {
        OpenChain(Box::new(move |tail| {
            Box::new(move |env| {
                let pipe = tail(&env)?;
                Ok(Box::pin(run_gate::<T>(gate, env, pipe)))
            })
        }))
    }

    /// Chains an operator without keyed state.
    pub(crate) fn operator<O>(self, op: O) -> OpenChain<O::Out>
    where
        O: Operator<In = T>,
    {
        let OpenChain(finish) = self;
        OpenChain(Box::new(move |tail: PipeFactory<O::Out>| {
            finish(Box::new(move |env| {
                Ok(Box::new(OperatorPipe::unkeyed(op, env, tail(env)?)))
            }))
        }))
    }

    /// Chains an operator whose `#[state]` is scoped per key, snapshotted
    /// under element id `id`.
    pub(crate) fn keyed_operator<O, K>(
        self,
        op: O,
        key: KeyFn<T, K>,
        id: String,
    ) -> OpenChain<O::Out>
    where
        O: Operator<In = T>,
        K: Key,
    {
        let OpenChain(finish) = self;
        OpenChain(Box::new(move |tail: PipeFactory<O::Out>| {
            finish(Box::new(move |env| {
                let down = tail(env)?;
                Ok(Box::new(OperatorPipe::keyed(
                    op,
                    Arc::clone(&key),
                    id.clone(),
                    env,
                    down,
                )?))
            }))
        }))
    }

    /// Ends the chain in the sending side of exchange `gate`: by the hash
    /// `hash` returns (`key_by`), or round robin without one.
    fn into_exchange(self, gate: usize, hash: Option<KeyFn<T, u64>>) -> StageRunner {
        (self.0)(Box::new(move |env| {
            let senders = env.gates.get::<T>(gate).senders(env.stage, env.ctx.index);
            let partitioner = match &hash {
                Some(hash) => Partitioner::Hash(Arc::clone(hash)),
                None => Partitioner::Rebalance {
                    next: env.ctx.index,
                },
            };
            Ok(Box::new(ExchangePipe::new(
                senders,
                partitioner,
                env.task_name(),
            )))
        }))
    }

    /// Ends the chain in `sink`, whose transactions are checkpointed under
    /// element id `id`. Every subtask runs a clone of the prototype.
    fn into_sink<S>(self, prototype: Arc<Mutex<S>>, id: String) -> StageRunner
    where
        S: TwoPhaseCommitSink<Item = T>,
    {
        (self.0)(Box::new(move |env| {
            let sink = prototype.lock().expect("sink prototype poisoned").clone();
            Ok(Box::new(TwoPhaseCommitDriver::new(sink, id.clone(), env)?))
        }))
    }
}

/// One stage.
pub(crate) struct StageSpec {
    /// Display names of the chained elements, head first.
    pub(crate) parts: Vec<String>,
    /// Ids of the elements that keep state, in chain order.
    pub(crate) operators: Vec<String>,
    pub(crate) parallelism: usize,
    pub(crate) is_source: bool,
    /// Set when the chain gets its tail.
    runner: Option<StageRunner>,
}

impl StageSpec {
    /// The stage's name: its elements, head first.
    pub(crate) fn name(&self) -> String {
        self.parts.join(" -> ")
    }

    /// What a checkpoint records of the stage.
    pub(crate) fn metadata(&self) -> StageMetadata {
        StageMetadata {
            name: self.name(),
            operators: self.operators.clone(),
            parallelism: self.parallelism,
        }
    }

    /// Builds the subtask `env` describes: its chain and task future.
    pub(crate) fn build(&self, env: SubtaskEnv) -> Result<BoxFuture<'static, Result<()>>> {
        let runner = self
            .runner
            .as_ref()
            .expect("validated before the first attempt");
        runner(env)
    }
}

/// One exchange.
struct GateSpec {
    upstream: Vec<usize>,
    downstream: usize,
    create: GateFactory,
}

/// All stages and exchanges of a job, plus the mistakes found while
/// describing it (reported when the job starts).
#[derive(Default)]
pub(crate) struct JobGraph {
    pub(crate) stages: Vec<StageSpec>,
    gates: Vec<GateSpec>,
    /// Mistakes found while the pipeline was described.
    pub(crate) errors: Vec<Error>,
    /// The start-up checks of every source and sink, by element name.
    pub(crate) preflight: Vec<(String, PreflightCheck)>,
}

impl JobGraph {
    /// Adds a stage headed by `head`; returns its index.
    pub(crate) fn add_stage(&mut self, head: String, parallelism: usize, is_source: bool) -> usize {
        self.stages.push(StageSpec {
            parts: vec![head],
            operators: Vec::new(),
            parallelism,
            is_source,
            runner: None,
        });
        self.stages.len() - 1
    }

    /// Adds an exchange of `T` records from the tails of the `upstream`
    /// stages into the head of stage `downstream`; returns its index.
    pub(crate) fn add_exchange<T: Send + 'static>(
        &mut self,
        upstream: Vec<usize>,
        downstream: usize,
    ) -> usize {
        self.gates.push(GateSpec {
            upstream,
            downstream,
            create: Box::new(|upstream, downstream, capacity| {
                Box::new(GateChannels::<T>::new(upstream, downstream, capacity))
            }),
        });
        self.gates.len() - 1
    }

    /// Ends the chain of stage `stage` in the sending side of exchange
    /// `gate` (see [`JobGraph::add_exchange`]).
    pub(crate) fn end_in_exchange<T: Send + 'static>(
        &mut self,
        stage: usize,
        chain: OpenChain<T>,
        gate: usize,
        hash: Option<KeyFn<T, u64>>,
    ) {
        self.stages[stage].runner = Some(chain.into_exchange(gate, hash));
    }

    /// Ends the chain of stage `stage` in a sink (see [`OpenChain::source`]
    /// for the prototype).
    pub(crate) fn end_in_sink<S: TwoPhaseCommitSink>(
        &mut self,
        stage: usize,
        chain: OpenChain<S::Item>,
        prototype: Arc<Mutex<S>>,
        id: String,
    ) {
        self.stages[stage].runner = Some(chain.into_sink(prototype, id));
    }

    /// The queues of every exchange for one attempt, each `capacity`
    /// batches deep.
    pub(crate) fn gates(&self, capacity: usize) -> GateRegistry {
        let mut registry = GateRegistry::default();
        for gate in &self.gates {
            let upstream: Vec<(usize, usize)> = gate
                .upstream
                .iter()
                .map(|&s| (s, self.stages[s].parallelism))
                .collect();
            let downstream = self.stages[gate.downstream].parallelism;
            registry
                .gates
                .push((gate.create)(&upstream, downstream, capacity));
        }
        registry
    }

    /// Checks that the graph can run.
    ///
    /// # Errors
    ///
    /// Every mistake found, at once: those recorded while the pipeline was
    /// described, a job without a source, and every stream that does not
    /// end in a sink.
    pub(crate) fn validate(&mut self) -> Result<()> {
        let mut errors = std::mem::take(&mut self.errors);
        if self.stages.is_empty() {
            errors.push(Error::Pipeline(
                "the job has no source; add one with Job::source".into(),
            ));
        }
        for stage in &self.stages {
            if stage.runner.is_none() {
                errors.push(Error::Pipeline(format!(
                    "the stream `{}` does not end in a sink; finish it with .sink(...)",
                    stage.name()
                )));
            }
        }
        Error::from_all(errors)
    }
}
