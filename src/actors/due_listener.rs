//! DueListener: LISTEN `tasks_due` on a dedicated connection and tell the Acquirer [`TasksDue`] on every
//! notification (raised by inserts into `tasks`, from any process). Reconnects after a pause when the
//! connection is lost; meanwhile the Acquirer's own timer still finds work. [`listen`] is the LISTEN loop itself,
//! also used by the WorkerPool for `tasks_cancel`.

use super::messages::TasksDue;
use super::Shared;
use crate::metrics::metrics;
use crate::supervision::Link;
use actix::prelude::*;
use futures::StreamExt;
use std::time::Duration;

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
        let run = listen(self.shared.settings.database.clone(), "tasks_due", move |_| {
            metrics().actor_messages.with_label_values(&["due_listener", "notification"]).inc();
            if let Some(a) = acquirer.get() {
                a.do_send(TasksDue);
            }
        });
        ctx.spawn(run.into_actor(self));
    }
}

/// LISTENs on `channel` on a dedicated connection and calls `on` with each notification's payload, for ever:
/// reconnects a second after the connection is lost (notifications sent meanwhile are missed; callers have a
/// fallback: a timer, a heartbeat).
pub async fn listen(settings: crate::db::DatabaseSettings, channel: &'static str, mut on: impl FnMut(&str)) {
    // The same connections as the pools: TLS per sslmode, connect timeout, TCP keepalive (a LISTEN connection is
    // idle most of the time: keepalive is what notices that it died).
    let connector = match crate::db::Connector::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "database.url unusable; no notification connection");
            return;
        }
    };
    loop {
        match connector.connect().await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = futures::channel::mpsc::unbounded();
                let stream =
                    futures::stream::poll_fn(move |cx| conn.poll_message(cx)).map(|r| r.map_err(|e| e.to_string()));
                let driver = stream.forward(futures::SinkExt::sink_map_err(tx, |e| e.to_string()));
                let listen = async {
                    client.batch_execute(&format!("LISTEN {channel}")).await?;
                    while let Some(msg) = rx.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                            on(n.payload());
                        }
                    }
                    Ok::<_, tokio_postgres::Error>(())
                };
                tokio::select! {
                    r = driver => if let Err(e) = r { tracing::warn!(error = %e, "notification connection lost") },
                    r = listen => if let Err(e) = r { tracing::warn!(error = %e, "LISTEN failed") },
                }
            }
            Err(e) => tracing::warn!(error = %crate::db::describe(&e), "cannot open the notification connection"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
