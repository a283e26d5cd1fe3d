//! `Slot`: the current address of a restartable actor, published by its supervisor's start hook.

use actix::prelude::*;
use std::sync::{Arc, RwLock};

/// The current address of a restartable actor, for the actors that send it messages: its supervisor's start
/// hook publishes every new instance here, so a restarted stage is found by its pollers at once.
pub struct Slot<M: actix::Message + Send>(Arc<RwLock<Option<Recipient<M>>>>)
where
    M::Result: Send;

impl<M: actix::Message + Send> Clone for Slot<M>
where
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<M: actix::Message + Send> Default for Slot<M>
where
    M::Result: Send,
{
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<M: actix::Message + Send> Slot<M>
where
    M::Result: Send,
{
    pub fn set(&self, r: Recipient<M>) {
        *self.0.write().unwrap() = Some(r);
    }

    /// The current instance, if one is running.
    pub fn get(&self) -> Option<Recipient<M>> {
        self.0.read().unwrap().clone().filter(|r| r.connected())
    }
}
