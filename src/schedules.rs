//! Cron schedules: what a schedule is (`[[schedules]]` in configuration, or `schedule.create` at run time), its
//! validation, and the tick arithmetic the CronScheduler uses. Expressions are parsed by the `croner` crate: five
//! fields (minute resolution) or six with seconds first, `@hourly`-style aliases, `L`/`W`/`#`, read in an IANA time
//! zone (`chrono-tz`). Every time handed in or out is UTC; "now" is always the database's clock.

use crate::domain::{Action, MaxAttempts, NewTask, Payload, Priority, ValidationError};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Missed ticks counted one by one at most (an every-second schedule down for a year would otherwise cost a
/// long loop); past it the count is a lower bound, and the log says so.
pub const MAX_COUNTED_SKIPS: u64 = 100_000;

/// A schedule as declared: `[[schedules]]` in configuration, or the parameters of `schedule.create`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name: 1 to 128 letters, digits, '_', '-' or '.'.
    pub name: String,
    /// Cron expression: `min hour dom month dow`, or with seconds first (`*/5 * * * * *`), or `@hourly` etc.
    pub cron: String,
    /// The action of the tasks it enqueues.
    pub action: String,
    /// Their payload (a JSON object / TOML table).
    #[serde(default)]
    pub payload: Map<String, Value>,
    /// IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Priority of the tasks (-100..100).
    #[serde(default)]
    pub priority: i64,
    /// max_attempts of the tasks; unset: `retry.default_max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
}

fn utc() -> String {
    "UTC".into()
}

/// A schedule whose every part was checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: CronExpr,
    pub action: Action,
    pub payload: Payload,
    pub priority: Priority,
    pub max_attempts: Option<MaxAttempts>,
}

impl Schedule {
    /// Checks a declared schedule; the error names the field.
    pub fn parse(spec: &ScheduleSpec) -> Result<Schedule, ValidationError> {
        let name = parse_name(&spec.name)?;
        let cron = CronExpr::parse(&spec.cron, &spec.timezone)?;
        let action = Action::parse(spec.action.clone())?;
        let payload = Payload::parse(Value::Object(spec.payload.clone()))?;
        crate::protocol::params::check_payload(&payload)?;
        let priority = Priority::parse(spec.priority)?;
        let max_attempts = spec.max_attempts.map(MaxAttempts::parse).transpose()?;
        Ok(Schedule { name, cron, action, payload, priority, max_attempts })
    }

    /// The largest outbound message one of its tasks can become (checked against `transport.max_message_bytes`).
    pub fn outbound_size(&self) -> usize {
        crate::protocol::outbound_size(&NewTask::new(self.action.clone(), self.payload.clone()))
    }
}

/// Checks a schedule name (also the key of `schedule.delete`, `schedule.pause`, ...).
pub fn parse_name(name: &str) -> Result<String, ValidationError> {
    let ok = (1..=128).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(ValidationError::new("name", format!("must be 1 to 128 letters, digits, '_', '-' or '.', got {name:?}")))
    }
}

/// A parsed cron expression and the time zone it is read in.
#[derive(Debug, Clone)]
pub struct CronExpr {
    pub expression: String,
    pub timezone: Tz,
    cron: Cron,
}

/// What the CronScheduler does with a due schedule: enqueue `tick` (the most recent tick not after now), count
/// `skipped` older ticks it does not enqueue, and wait for `next` (None: the expression has no further tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickPlan {
    pub tick: DateTime<Utc>,
    pub skipped: u64,
    pub next: Option<DateTime<Utc>>,
}

impl CronExpr {
    /// Longest expression (characters): the `schedules.cron` column's limit, checked before the database sees it.
    pub const MAX_LEN: usize = 256;
    /// Longest time zone name (characters): the `schedules.timezone` column's limit.
    pub const MAX_TIMEZONE_LEN: usize = 64;

    pub fn parse(expression: &str, timezone: &str) -> Result<CronExpr, ValidationError> {
        let len = expression.chars().count();
        if len > Self::MAX_LEN {
            return Err(ValidationError::new(
                "cron",
                format!("must be at most {} characters, got {len}", Self::MAX_LEN),
            ));
        }
        if timezone.chars().count() > Self::MAX_TIMEZONE_LEN {
            return Err(ValidationError::new(
                "timezone",
                format!("must be at most {} characters", Self::MAX_TIMEZONE_LEN),
            ));
        }
        let timezone: Tz = timezone
            .parse()
            .map_err(|_| ValidationError::new("timezone", format!("unknown IANA time zone {timezone:?}")))?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| ValidationError::new("cron", format!("invalid cron expression {expression:?}: {e}")))?;
        let c = CronExpr { expression: expression.to_owned(), timezone, cron };
        // An expression that never matches (`0 0 31 2 *`) would be accepted by the parser and never fire.
        if c.next_after(Utc::now()).is_none() {
            return Err(ValidationError::new("cron", format!("cron expression {expression:?} has no upcoming tick")));
        }
        Ok(c)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron.find_next_occurrence(&local, false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The last tick at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron.find_previous_occurrence(&local, true).ok().map(|n| n.with_timezone(&Utc))
    }

    /// Plans a schedule due at `due` (its stored next_run_at, a tick not after `now`): the most recent tick up to
    /// `now` runs once, the ones before it since `due` are skipped.
    pub fn plan(&self, due: DateTime<Utc>, now: DateTime<Utc>) -> TickPlan {
        let tick = self.last_at_or_before(now).filter(|t| *t >= due).unwrap_or(due);
        let mut skipped = 0;
        let mut t = due;
        while t < tick && skipped < MAX_COUNTED_SKIPS {
            skipped += 1;
            match self.next_after(t) {
                Some(n) => t = n,
                None => break,
            }
        }
        let next = self.next_after(now.max(tick));
        TickPlan { tick, skipped, next }
    }
}

/// The dedup key of a tick's task: equal in every process, so a tick can be enqueued only once.
pub fn tick_dedup_key(name: &str, tick: DateTime<Utc>) -> String {
    format!("cron:{name}:{}", tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `[[schedules]]` as a whole: each entry valid, names unique. The error names the entry.
pub fn validate_specs(specs: &[ScheduleSpec]) -> Result<Vec<Schedule>, String> {
    let mut out: Vec<Schedule> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let s = Schedule::parse(spec).map_err(|e| format!("schedules[{i}] ({:?}): {e}", spec.name))?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(format!("schedules[{i}] ({:?}): name: declared twice", spec.name));
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_field_expressions_and_zones() {
        let every_sec = CronExpr::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(every_sec.next_after(at("2026-01-01T00:00:00.300Z")), Some(at("2026-01-01T00:00:01Z")));
        let every_min = CronExpr::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(every_min.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T00:15:00Z")));
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = CronExpr::parse("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T08:00:00Z")));
        assert!(CronExpr::parse("@hourly", "UTC").is_ok());
    }

    #[test]
    fn bad_expressions_and_zones_name_the_field() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "nonsense", "0 0 31 2 *"] {
            let e = CronExpr::parse(bad, "UTC").unwrap_err();
            assert_eq!(e.field, "cron", "{bad}: {e}");
        }
        assert_eq!(CronExpr::parse("* * * * *", "Mars/Olympus").unwrap_err().field, "timezone");
    }

    #[test]
    fn a_missed_run_enqueues_the_latest_tick_once_and_counts_the_others() {
        let c = CronExpr::parse("*/10 * * * * *", "UTC").unwrap();
        // Due at :00, now :35.5 → ticks :00 :10 :20 :30 missed; :30 runs, three skipped, next :40.
        let p = c.plan(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:35.500Z"));
        assert_eq!(
            p,
            TickPlan { tick: at("2026-01-01T00:00:30Z"), skipped: 3, next: Some(at("2026-01-01T00:00:40Z")) }
        );
        // On time: nothing skipped.
        let p = c.plan(at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:10.020Z"));
        assert_eq!(
            p,
            TickPlan { tick: at("2026-01-01T00:00:10Z"), skipped: 0, next: Some(at("2026-01-01T00:00:20Z")) }
        );
        // Exactly on a tick: that tick runs, the next is the one after.
        let p = c.plan(at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:20Z"));
        assert_eq!(
            p,
            TickPlan { tick: at("2026-01-01T00:00:20Z"), skipped: 1, next: Some(at("2026-01-01T00:00:30Z")) }
        );
    }

    #[test]
    fn tick_keys_are_utc_seconds() {
        assert_eq!(tick_dedup_key("nightly", at("2026-01-01T01:00:00+01:00")), "cron:nightly:2026-01-01T00:00:00Z");
    }

    #[test]
    fn specs_are_checked_as_a_whole() {
        let spec = |name: &str, cron: &str| ScheduleSpec {
            name: name.into(),
            cron: cron.into(),
            action: "noop".into(),
            payload: Map::new(),
            timezone: "UTC".into(),
            priority: 0,
            max_attempts: None,
        };
        assert!(validate_specs(&[spec("a", "* * * * *"), spec("b", "* * * * * *")]).is_ok());
        let e = validate_specs(&[spec("a", "* * * * *"), spec("b", "every day")]).unwrap_err();
        assert!(e.contains("schedules[1]") && e.contains("\"b\"") && e.contains("cron"), "{e}");
        let e = validate_specs(&[spec("a", "* * * * *"), spec("a", "* * * * *")]).unwrap_err();
        assert!(e.contains("declared twice"), "{e}");
        assert!(validate_specs(&[spec("has space", "* * * * *")]).unwrap_err().contains("name"));
    }
}
