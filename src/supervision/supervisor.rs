//! `Supervisor`: an actor that starts its children, restarts one that fails (one_for_one, with backoff), and gives
//! up past its restart intensity: a role's supervisor escalates to the root, the root ends the process.

use super::link::{ChildExited, ExitReason, Link};
use super::policy::{Intensity, RestartPolicy};
use crate::metrics::metrics;
use actix::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// How to start one child, again and again: every (re)start makes a fresh instance holding a fresh [`Link`].
pub trait ChildSpec: 'static {
    fn name(&self) -> &str;
    fn start(&mut self, link: Link);
}

/// A stage actor on its own Arbiter. `on_start` sees each new instance's address (to publish it to the actors
/// that send it messages).
pub struct ActorSpec<A: Actor<Context = Context<A>>> {
    name: String,
    arbiter: actix::ArbiterHandle,
    make: Box<dyn FnMut(Link) -> A>,
    on_start: StartHook<A>,
}

/// Called with each new instance's address.
type StartHook<A> = Box<dyn FnMut(&Addr<A>)>;

impl<A: Actor<Context = Context<A>> + Send> ActorSpec<A> {
    pub fn new(name: impl Into<String>, arbiter: &actix::ArbiterHandle, make: impl FnMut(Link) -> A + 'static) -> Self {
        Self { name: name.into(), arbiter: arbiter.clone(), make: Box::new(make), on_start: Box::new(|_| {}) }
    }

    pub fn on_start(mut self, f: impl FnMut(&Addr<A>) + 'static) -> Self {
        self.on_start = Box::new(f);
        self
    }

    pub fn boxed(self) -> Box<dyn ChildSpec> {
        Box::new(self)
    }
}

impl<A: Actor<Context = Context<A>> + Send> ChildSpec for ActorSpec<A> {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(&mut self, link: Link) {
        // Built here, started on the target Arbiter: `started` (where pools and loops are made) runs there.
        let actor = (self.make)(link);
        let addr = A::start_in_arbiter(&self.arbiter, move |_| actor);
        (self.on_start)(&addr);
    }
}

/// A supervisor as the child of another: every (re)start builds its children afresh (the subtree restarts).
pub struct SupervisorSpec {
    name: String,
    policy: RestartPolicy,
    children: Box<dyn FnMut() -> Vec<Box<dyn ChildSpec>>>,
    tree: Tree,
}

impl SupervisorSpec {
    pub fn new(
        name: impl Into<String>,
        policy: RestartPolicy,
        tree: &Tree,
        children: impl FnMut() -> Vec<Box<dyn ChildSpec>> + 'static,
    ) -> Self {
        Self { name: name.into(), policy, children: Box::new(children), tree: tree.clone() }
    }
}

/// What every supervisor of one tree shares: where events go, and whether the tree is draining (graceful
/// shutdown has begun: children that end are not restarted any more).
#[derive(Clone)]
pub struct Tree {
    events: broadcast::Sender<SupervisionEvent>,
    draining: Arc<AtomicBool>,
}

impl Default for Tree {
    fn default() -> Self {
        Self { events: broadcast::channel(1024).0, draining: Arc::default() }
    }
}

impl Tree {
    /// Every restart and give-up from now on.
    pub fn events(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.events.subscribe()
    }

    /// Graceful shutdown has begun: nothing is restarted any more.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

impl ChildSpec for SupervisorSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(&mut self, link: Link) {
        let children = (self.children)();
        Supervisor::new(self.name.clone(), self.policy, children, &self.tree).linked(link).start();
    }
}

/// What supervisors do, for logs' readers and for tests to await (instead of sleeping).
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisionEvent {
    /// `child` of `supervisor` ended for `reason`; it starts again after `delay` (its `failures`-th in a row).
    Restarting { supervisor: String, child: String, reason: ExitReason, delay: Duration, failures: u32 },
    /// A new instance of `child` is up (its address published).
    Started { supervisor: String, child: String, generation: u64 },
    /// `supervisor` exceeded its restart intensity and stopped its children.
    GaveUp { supervisor: String, reason: String },
}

/// Stops a supervisor and its whole subtree (graceful shutdown: nothing is restarted any more).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

struct Child {
    spec: Box<dyn ChildSpec>,
    generation: u64,
    stopper: Option<Arc<watch::Sender<bool>>>,
    failures: u32,
    started_at: Instant,
}

pub struct Supervisor {
    name: String,
    policy: RestartPolicy,
    children: Vec<Child>,
    intensity: Intensity,
    link: Option<Link>,
    on_give_up: Option<Box<dyn FnOnce(String)>>,
    tree: Tree,
    stopping: bool,
}

impl Supervisor {
    pub fn new(name: impl Into<String>, policy: RestartPolicy, children: Vec<Box<dyn ChildSpec>>, tree: &Tree) -> Self {
        let children = children
            .into_iter()
            .map(|spec| Child { spec, generation: 0, stopper: None, failures: 0, started_at: Instant::now() })
            .collect();
        Self {
            name: name.into(),
            policy,
            children,
            intensity: Intensity::default(),
            link: None,
            on_give_up: None,
            tree: tree.clone(),
            stopping: false,
        }
    }

    /// Under a parent supervisor: giving up escalates to it.
    fn linked(mut self, link: Link) -> Self {
        self.link = Some(link);
        self
    }

    /// The root: giving up calls `f` (which ends the process).
    pub fn on_give_up(mut self, f: impl FnOnce(String) + 'static) -> Self {
        self.on_give_up = Some(Box::new(f));
        self
    }

    fn start_child(&mut self, i: usize, ctx: &mut Context<Self>) {
        let child = &mut self.children[i];
        child.generation += 1;
        let link = Link::new(ctx.address().recipient(), i, child.generation);
        child.stopper = Some(link.stopper());
        child.started_at = Instant::now();
        child.spec.start(link);
        let _ = self.tree.events.send(SupervisionEvent::Started {
            supervisor: self.name.clone(),
            child: child.spec.name().to_owned(),
            generation: child.generation,
        });
    }

    fn stop_children(&mut self) {
        self.stopping = true;
        for c in &mut self.children {
            if let Some(s) = c.stopper.take() {
                s.send_replace(true);
            }
        }
    }

    fn give_up(&mut self, reason: String, ctx: &mut Context<Self>) {
        tracing::error!(supervisor = %self.name, reason = %reason, "restart intensity exceeded; giving up on the subtree");
        metrics().supervisor_give_ups.with_label_values(&[self.name.as_str()]).inc();
        let _ =
            self.tree.events.send(SupervisionEvent::GaveUp { supervisor: self.name.clone(), reason: reason.clone() });
        self.stop_children();
        if let Some(link) = self.link.as_mut() {
            link.escalate();
            ctx.stop();
        } else if let Some(f) = self.on_give_up.take() {
            f(reason);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(link) = &self.link {
            link.attach(ctx);
        }
        for i in 0..self.children.len() {
            self.start_child(i, ctx);
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.stop_children();
        Running::Stop
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        let Some(child) = self.children.get_mut(msg.child) else { return };
        if self.stopping
            || self.tree.draining()
            || msg.generation != child.generation
            || msg.reason == ExitReason::Requested
        {
            return;
        }
        let now = Instant::now();
        if now.duration_since(child.started_at) >= self.policy.reset_after {
            child.failures = 0; // it ran quietly long enough: start over from the initial delay
        }
        child.failures += 1;
        let name = child.spec.name().to_owned();
        if !self.intensity.allow(&self.policy, now) {
            let reason = format!(
                "{name} ended ({}) and its supervisor already restarted {} children within {:?}",
                msg.reason.as_str(),
                self.policy.max_restarts,
                self.policy.period
            );
            self.give_up(reason, ctx);
            return;
        }
        let (failures, generation) = (child.failures, child.generation);
        let delay = self.policy.backoff(failures);
        tracing::warn!(supervisor = %self.name, actor = %name, reason = msg.reason.as_str(), failures,
            delay_ms = delay.as_millis() as u64, "actor ended; restarting it after a backoff");
        metrics().actor_restarts.with_label_values(&[name.as_str(), msg.reason.as_str()]).inc();
        let _ = self.tree.events.send(SupervisionEvent::Restarting {
            supervisor: self.name.clone(),
            child: name,
            reason: msg.reason,
            delay,
            failures,
        });
        let i = msg.child;
        ctx.run_later(delay, move |act, ctx| {
            if !act.stopping && !act.tree.draining() && act.children[i].generation == generation {
                act.start_child(i, ctx);
            }
        });
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.stop_children();
        ctx.stop();
    }
}
