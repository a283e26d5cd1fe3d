//! `HttpServerActor`: the HTTP server as a supervised actor, the only child of the `http` role's supervisor. It binds
//! and runs the actix-web server when it starts; if the server ends on its own, the actor stops and its supervisor
//! starts it again (rebinding). Asked to stop, it stops the server gracefully.

use super::{bind_server, HttpState};
use crate::supervision::Link;
use actix::prelude::*;
use actix_web::dev::ServerHandle;

pub struct HttpServerActor {
    state: HttpState,
    link: Link,
    handle: Option<ServerHandle>,
}

impl HttpServerActor {
    pub fn new(state: HttpState, link: Link) -> Self {
        Self { state, link, handle: None }
    }
}

impl Actor for HttpServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        match bind_server(self.state.clone()) {
            Ok((handle, server, _addr)) => {
                self.handle = Some(handle);
                ctx.spawn(
                    async move {
                        if let Err(e) = server.await {
                            tracing::error!(error = %e, "HTTP server failed");
                        }
                    }
                    .into_actor(self)
                    .map(|_, act, ctx| {
                        if !act.link.stop_requested() {
                            ctx.stop(); // ended on its own: its supervisor starts it again
                        }
                    }),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the HTTP server");
                ctx.stop();
            }
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(h) = self.handle.take() {
            actix_rt::spawn(async move { h.stop(true).await });
        }
        Running::Stop
    }
}
