//! Reporting actions whose settings row is at fault (see `store/faults.rs`): every acquire call returns them; the
//! log says so when the set changes (and once a minute while it lasts), `scheduler_action_setting_faults` is 1 for
//! each, and `/readyz` names them.

use crate::domain::ActionFault;
use crate::metrics::metrics;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a persisting fault is logged again.
const REPEAT_LOG: Duration = Duration::from_secs(60);

struct Reported {
    faults: Vec<ActionFault>,
    logged_at: Option<Instant>,
}

static REPORTED: Mutex<Reported> = Mutex::new(Reported { faults: Vec::new(), logged_at: None });

/// Called with the faults of every acquire call (empty when none): updates the gauge and logs changes.
pub fn report(faults: &[ActionFault]) {
    let mut sorted = faults.to_vec();
    sorted.sort_by(|a, b| (&a.action, &a.setting).cmp(&(&b.action, &b.setting)));
    sorted.dedup();
    let mut r = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    let changed = r.faults != sorted;
    if changed {
        let gauge = &metrics().action_setting_faults;
        for f in &r.faults {
            let _ = gauge.remove_label_values(&[f.action.as_str(), f.setting.as_str()]);
        }
        for f in &sorted {
            gauge.with_label_values(&[f.action.as_str(), f.setting.as_str()]).set(1);
        }
        if sorted.is_empty() {
            tracing::info!("no action's settings are at fault any more");
        }
    }
    let due = r.logged_at.is_none_or(|t| t.elapsed() >= REPEAT_LOG);
    if !sorted.is_empty() && (changed || due) {
        for f in &sorted {
            tracing::error!(
                action = %f.action,
                setting = %f.setting,
                "the action's settings row holds a value the acquire statement cannot compute with: its tasks are \
                 not acquired (fix it with action.configure); every other action's are"
            );
        }
        r.logged_at = Some(Instant::now());
    }
    r.faults = sorted;
}
