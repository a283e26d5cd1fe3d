//! Ranges every numeric setting of the configuration keeps, whatever its section: a duration (`*_secs`, `*_ms`)
//! must be finite, not negative and at most [`MAX_DURATION_SECS`] (Rust's `Duration::from_secs_f64` panics past
//! u64 seconds, `Instant + Duration` past the clock's range, PostgreSQL intervals fail past 178 million years);
//! any other integer at most `i32::MAX` (it may be bound as an SQL integer, multiplied by another setting, or
//! allocated). The sections' own `validate` keep their tighter ranges; this catches what they leave open.

use serde_json::Value;

/// Ten years: longer than any timeout, delay, interval or retention anyone means, far inside every clock's range.
pub const MAX_DURATION_SECS: f64 = 315_360_000.0;
/// Largest integer setting that is not a duration.
pub const MAX_INTEGER: u64 = i32::MAX as u64;

/// Checks every number of `settings` (serialised, so a setting added later is covered too), except the
/// `[[schedules]]` entries, which `Schedule::parse` checks field by field. The error names the key.
pub fn check_numeric_ranges(settings: &impl serde::Serialize) -> Result<(), String> {
    let v = serde_json::to_value(settings).map_err(|e| e.to_string())?;
    let Value::Object(sections) = v else { return Ok(()) };
    for (section, body) in sections.iter().filter(|(k, _)| k.as_str() != "schedules") {
        walk(section, body)?;
    }
    Ok(())
}

fn walk(path: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Object(m) => m.iter().try_for_each(|(k, v)| walk(&format!("{path}.{k}"), v)),
        Value::Array(a) => a.iter().enumerate().try_for_each(|(i, v)| walk(&format!("{path}[{i}]"), v)),
        Value::Number(n) => check_number(path, n),
        _ => Ok(()),
    }
}

fn check_number(key: &str, n: &serde_json::Number) -> Result<(), String> {
    let name = key.rsplit('.').next().unwrap_or(key);
    let scale = if name.ends_with("_secs") {
        Some(1.0)
    } else if name.ends_with("_ms") {
        Some(1000.0)
    } else {
        None
    };
    let f = n.as_f64().unwrap_or(f64::INFINITY);
    match scale {
        Some(scale) => {
            let max = MAX_DURATION_SECS * scale;
            if !(f.is_finite() && (0.0..=max).contains(&f)) {
                return Err(format!("{key}: must be between 0 and {max} (ten years), got {n}"));
            }
        }
        None if n.is_f64() => {
            if !f.is_finite() || f.abs() > MAX_INTEGER as f64 {
                return Err(format!("{key}: must be a finite number of magnitude at most {MAX_INTEGER}, got {n}"));
            }
        }
        None => {
            if n.as_u64().is_none_or(|u| u > MAX_INTEGER) && n.as_i64().is_none_or(|i| i.unsigned_abs() > MAX_INTEGER) {
                return Err(format!("{key}: must be at most {MAX_INTEGER}, got {n}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Settings;

    #[test]
    fn defaults_hold_and_each_kind_of_excess_is_named() {
        let s = Settings::default();
        assert_eq!(check_numeric_ranges(&s), Ok(()));
        let mut s = Settings::default();
        s.reaper.retention_secs = 1e300;
        assert!(check_numeric_ranges(&s).unwrap_err().starts_with("reaper.retention_secs: "));
        let mut s = Settings::default();
        s.retry.max_delay_secs = -1.0;
        assert!(check_numeric_ranges(&s).unwrap_err().starts_with("retry.max_delay_secs: "));
        let mut s = Settings::default();
        s.acquirer.idle_wakeup_ms = u64::MAX;
        assert!(check_numeric_ranges(&s).unwrap_err().starts_with("acquirer.idle_wakeup_ms: "));
        let mut s = Settings::default();
        s.persister.pollers = usize::MAX;
        assert!(check_numeric_ranges(&s).unwrap_err().starts_with("persister.pollers: "));
    }
}
