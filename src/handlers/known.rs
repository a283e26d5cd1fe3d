//! Which actions a submission may name: the handlers registered in this binary plus `[actions] known` (actions
//! whose workers are written in other languages), unless `[actions] accept_unknown = true`. A submission for any
//! other action is refused at submit time with JSON-RPC -32601 naming the action (over HTTP), dead-lettered with
//! reason `unknown_action` (from the inbound queue), and counted in
//! `scheduler_unknown_action_rejections_total{source}`; a schedule for one is refused when it is created.

use super::HandlerRegistry;
use crate::domain::Action;
use crate::metrics::metrics;
use crate::protocol::{RpcError, METHOD_NOT_FOUND};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The `[actions]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsSettings {
    /// Actions accepted besides the built-in handlers' (for workers written in other languages).
    pub known: Vec<String>,
    /// Accept submissions for any action (no check at submit time).
    pub accept_unknown: bool,
}

impl ActionsSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (i, a) in self.known.iter().enumerate() {
            Action::parse(a.clone()).map_err(|e| format!("actions.known[{i}] ({a:?}): {e}"))?;
        }
        Ok(())
    }
}

/// The set of actions a submission may name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KnownActions {
    names: Arc<BTreeSet<String>>,
    accept_unknown: bool,
}

impl KnownActions {
    /// The registry's actions plus `settings.known`, unless `settings.accept_unknown`.
    pub fn new(registry: &HandlerRegistry, settings: &ActionsSettings) -> KnownActions {
        let names = registry.actions().into_iter().chain(settings.known.iter().cloned()).collect();
        KnownActions { names: Arc::new(names), accept_unknown: settings.accept_unknown }
    }

    /// Every action is accepted.
    pub fn any() -> KnownActions {
        KnownActions { names: Arc::default(), accept_unknown: true }
    }

    pub fn is_known(&self, action: &str) -> bool {
        self.accept_unknown || self.names.contains(action)
    }

    /// -32601 naming the action when it is unknown, counted under `source` (see
    /// [`crate::metrics::REJECTION_SOURCES`]).
    pub fn check(&self, action: &Action, source: &'static str) -> Result<(), RpcError> {
        if self.is_known(action.as_str()) {
            return Ok(());
        }
        metrics().unknown_action_rejections.with_label_values(&[source]).inc();
        let known: Vec<&String> = self.names.iter().collect();
        Err(RpcError {
            code: METHOD_NOT_FOUND,
            message: format!(
                "unknown action {:?}: no handler is registered for it (known: {}); declare it in [actions] known, \
                 or set [actions] accept_unknown = true",
                action.as_str(),
                known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            data: Some(json!({"action": action.as_str(), "reason": "unknown_action"})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(s: &str) -> Action {
        Action::parse(s).unwrap()
    }

    #[test]
    fn registry_plus_declared_unless_anything_goes() {
        let declared = ActionsSettings { known: vec!["py_resize".into()], accept_unknown: false };
        let k = KnownActions::new(&HandlerRegistry::builtin(), &declared);
        assert!(k.check(&action("export"), "http").is_ok());
        assert!(k.check(&action("py_resize"), "http").is_ok());
        let e = k.check(&action("nosuch"), "http").unwrap_err();
        assert_eq!(e.code, METHOD_NOT_FOUND);
        assert!(e.message.contains("\"nosuch\""), "{e:?}");
        assert_eq!(e.reason(), "unknown_action");
        let open = ActionsSettings { accept_unknown: true, ..declared };
        assert!(KnownActions::new(&HandlerRegistry::builtin(), &open).check(&action("nosuch"), "http").is_ok());
    }
}
