//! The supervision tree, after Erlang/OTP: per process a root supervisor, under it one supervisor per role, under
//! those the stage actors.
//!
//! ```text
//! root (restarts roles; past its intensity the process exits non-zero)
//! ├── submitter:  persister, inbound pollers
//! ├── scheduler:  acquirer, due listener, cron scheduler
//! ├── worker:     worker pool, outbound pollers
//! ├── resulter:   result sink, results pollers
//! ├── supervisor: stale reaper, stats
//! └── http:       http server (when `http.bind` is set)
//! ```
//!
//! Policy one_for_one: a child that ends without being asked to (a panic in a handler or in a future it spawned,
//! or a loop that gave up) is restarted alone, after an exponential backoff. A supervisor whose children fail more
//! than `max_restarts` times within `period` gives up: it stops its children and escalates to its parent, which
//! restarts the whole subtree. The root's own limit ends the process, so its orchestrator restarts it.
//!
//! Failures are seen at once, not polled: every supervised actor holds a [`Link`], and the actor's end drops it.
//! A panic unwinds through the actor's future, so the drop happens while the thread panics and is reported as a
//! panic.

mod link;
mod policy;
mod supervisor;

pub use link::{ExitReason, Link};
pub use policy::{Intensity, RestartPolicy, SupervisionSettings};
pub use supervisor::{ActorSpec, ChildSpec, Shutdown, SupervisionEvent, Supervisor, SupervisorSpec, Tree};
