//! The typed messages on the arrows between actors. Each carries a batch, never one task; request/response
//! (`send().await`) gives back-pressure: a poller receives again only when its stage settled what it handed on.

use crate::transport::{Message as QueueMessage, Queue};
use actix::prelude::*;

/// Poller → stage (Persister, WorkerPool, ResultSink): a batch just received from `queue`.
#[derive(Message)]
#[rtype(result = "Settled")]
pub struct Received {
    pub queue: Queue,
    pub messages: Vec<QueueMessage>,
}

/// Stage → poller, the answer to [`Received`]: receipts whose effect is durable (or that were dead-lettered),
/// which the poller deletes now. The rest come back after their visibility timeout. The WorkerPool deletes its
/// messages itself once their results are sent, so it settles none.
#[derive(Debug, Default, MessageResponse)]
pub struct Settled {
    pub receipts: Vec<String>,
}

/// Poller → stage, before each receive: how many messages can you take now? A WorkerPool answers with its free
/// handler slots (waiting until one is free); the commit stages take a full batch.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "usize")]
pub struct Capacity;

/// DueListener (LISTEN/NOTIFY), Persister, ResultSink, StaleReaper → Acquirer: tasks may have become due.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct TasksDue;

/// Its timer, or a test → StaleReaper: one pass now. Answers what it did.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Reaped")]
pub struct RunOnce;

/// What one StaleReaper pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, MessageResponse)]
pub struct Reaped {
    pub rescued: usize,
    pub cleaned: usize,
}

/// Test hook (cargo feature `test-hooks`): the receiving actor panics inside a handler.
#[cfg(feature = "test-hooks")]
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// The bounds a stage needs for its test hooks: none unless the `test-hooks` feature is on.
#[cfg(feature = "test-hooks")]
pub trait Hooks: Actor<Context = Context<Self>> + Handler<InjectPanic> {}
#[cfg(feature = "test-hooks")]
impl<A: Actor<Context = Context<A>> + Handler<InjectPanic>> Hooks for A {}
#[cfg(not(feature = "test-hooks"))]
pub trait Hooks {}
#[cfg(not(feature = "test-hooks"))]
impl<A> Hooks for A {}
