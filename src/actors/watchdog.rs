//! Watchdog: the other half of supervision. actix's Supervisor restarts an actor that stops (`ctx.stop()`), but a
//! panic inside a handler kills the actor for good (its Addr goes dead). The Watchdog checks every actor's Addr
//! every 100 ms and starts a new one, under a new Supervisor on the same Arbiter, when it is gone.

use crate::metrics::metrics;
use actix::prelude::*;
use std::time::Duration;

/// One supervised actor the Watchdog can check and restart.
pub trait Watched: Send {
    fn name(&self) -> &str;
    fn alive(&self) -> bool;
    fn restart(&mut self);
}

/// An actor started by `make` on `arbiter` under actix's Supervisor; `on_start` publishes each new Addr.
pub struct WatchedActor<A: Actor<Context = Context<A>> + Supervised> {
    name: String,
    arbiter: actix::ArbiterHandle,
    make: Box<dyn Fn() -> A + Send + Sync>,
    on_start: Box<dyn Fn(&Addr<A>) + Send + Sync>,
    addr: Addr<A>,
}

impl<A: Actor<Context = Context<A>> + Supervised + Send> WatchedActor<A> {
    pub fn start(
        name: impl Into<String>,
        arbiter: &actix::ArbiterHandle,
        make: impl Fn() -> A + Send + Sync + 'static,
        on_start: impl Fn(&Addr<A>) + Send + Sync + 'static,
    ) -> Self {
        let make: Box<dyn Fn() -> A + Send + Sync> = Box::new(make);
        let addr = spawn(arbiter, &make);
        on_start(&addr);
        Self { name: name.into(), arbiter: arbiter.clone(), make, on_start: Box::new(on_start), addr }
    }

    pub fn addr(&self) -> Addr<A> {
        self.addr.clone()
    }
}

fn spawn<A: Actor<Context = Context<A>> + Supervised + Send>(
    arbiter: &actix::ArbiterHandle,
    make: &Box<dyn Fn() -> A + Send + Sync>,
) -> Addr<A> {
    // Built here, started on the target arbiter: `started` (where stores and loops are made) runs there.
    let actor = make();
    Supervisor::start_in_arbiter(arbiter, move |_| actor)
}

impl<A: Actor<Context = Context<A>> + Supervised + Send> Watched for WatchedActor<A> {
    fn name(&self) -> &str {
        &self.name
    }

    fn alive(&self) -> bool {
        self.addr.connected()
    }

    fn restart(&mut self) {
        self.addr = spawn(&self.arbiter, &self.make);
        (self.on_start)(&self.addr);
    }
}

pub struct Watchdog {
    watched: Vec<Box<dyn Watched>>,
}

impl Watchdog {
    pub fn new(watched: Vec<Box<dyn Watched>>) -> Self {
        Self { watched }
    }
}

impl Actor for Watchdog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(100), |act, _| {
            for w in act.watched.iter_mut() {
                if !w.alive() {
                    tracing::error!(actor = w.name(), "actor died (panic); restarting it");
                    metrics().actor_restarts.with_label_values(&[w.name()]).inc();
                    w.restart();
                }
            }
        });
    }
}

/// Stops the Watchdog's checks (at shutdown, so stopping actors are not restarted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopWatching;

impl Handler<StopWatching> for Watchdog {
    type Result = ();
    fn handle(&mut self, _: StopWatching, _: &mut Self::Context) {
        self.watched.clear();
    }
}
