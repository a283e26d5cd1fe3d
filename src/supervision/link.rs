//! `Link`: what ties a supervised actor to its supervisor (Erlang's link). Dropped when the actor ends, it
//! reports why: a panic, a request to stop, an escalation, or an unexpected stop.

use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// A panic in a handler or in a future the actor spawned.
    Panic,
    /// The actor stopped on its own (a loop ended that should not have).
    Stopped,
    /// A supervisor gave up on its children (restart intensity exceeded).
    Escalated,
    /// Its supervisor asked it to stop (shutdown or a restart of its subtree): not a failure.
    Requested,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Panic => "panic",
            ExitReason::Stopped => "stopped",
            ExitReason::Escalated => "escalated",
            ExitReason::Requested => "requested",
        }
    }
}

/// Sent by a [`Link`] to its supervisor when the linked actor ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub child: usize,
    pub generation: u64,
    pub reason: ExitReason,
}

/// Held by a supervised actor for its whole life. Call [`Link::attach`] in `started`.
pub struct Link {
    supervisor: Recipient<ChildExited>,
    child: usize,
    generation: u64,
    stop: Arc<watch::Sender<bool>>,
    escalated: bool,
}

impl Link {
    pub(super) fn new(supervisor: Recipient<ChildExited>, child: usize, generation: u64) -> Link {
        Link { supervisor, child, generation, stop: Arc::new(watch::channel(false).0), escalated: false }
    }

    /// The handle a supervisor keeps to ask this child to stop.
    pub(super) fn stopper(&self) -> Arc<watch::Sender<bool>> {
        self.stop.clone()
    }

    /// Stops the actor when its supervisor asks.
    pub fn attach<A: Actor<Context = Context<A>>>(&self, ctx: &mut Context<A>) {
        let mut rx = self.stop.subscribe();
        let asked = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        ctx.spawn(actix::fut::wrap_future::<_, A>(asked).map(|_, _, ctx: &mut Context<A>| ctx.stop()));
    }

    /// Whether the supervisor asked this actor to stop.
    pub fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// Marks the end as an escalation (a supervisor that gives up on its children).
    pub(super) fn escalate(&mut self) {
        self.escalated = true;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            ExitReason::Panic
        } else if self.escalated {
            ExitReason::Escalated
        } else if self.stop_requested() {
            ExitReason::Requested
        } else {
            ExitReason::Stopped
        };
        self.supervisor.do_send(ChildExited { child: self.child, generation: self.generation, reason });
    }
}
