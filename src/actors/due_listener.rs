//! DueListener: LISTEN `tasks_due` on a dedicated connection and tell the Acquirer [`TasksDue`] on every
//! notification (raised by inserts into `tasks`, from any process). Reconnects after a pause when the
//! connection is lost; meanwhile the Acquirer's own timer still finds work. The LISTEN loop itself is
//! [`crate::db::listen`], also used by the WorkerPool for `tasks_cancel`.

use super::messages::TasksDue;
use super::Shared;
use crate::metrics::metrics;
use crate::supervision::Link;
use actix::prelude::*;

pub struct DueListener {
    shared: Shared,
    link: Link,
}

impl DueListener {
    pub fn new(shared: Shared, link: Link) -> Self {
        Self { shared, link }
    }
}

impl Actor for DueListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let acquirer = self.shared.acquirer.clone();
        let run = crate::db::listen(self.shared.settings.database.clone(), "tasks_due", move |_| {
            metrics().actor_messages.with_label_values(&["due_listener", "notification"]).inc();
            if let Some(a) = acquirer.get() {
                a.do_send(TasksDue);
            }
        });
        ctx.spawn(run.into_actor(self));
    }
}
