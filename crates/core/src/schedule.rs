//! When scheduled runs fire.
//!
//! A schedule fires at most once per tick, and after downtime it fires once
//! for all the ticks it missed: the next fire time is always the first tick
//! after *now*, not after the tick that fired. Pure: times in, times out.

use crate::ids::TenantId;
use crate::workflow::{CronSchedule, Workflow};
use chrono::{DateTime, Utc};

/// The first tick of `cron` strictly after `after`.
pub fn next_after(cron: &CronSchedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.schedule.after(&after).next()
}

/// The schedule of `workflow` for `tenant`: the tenant's own, else the
/// integration's.
pub fn schedule_of<'a>(workflow: &'a Workflow, tenant: &TenantId) -> Option<&'a CronSchedule> {
    workflow
        .tenants
        .get(tenant)
        .and_then(|t| t.schedule.as_ref())
        .or(workflow.schedule.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_tick_is_after_now_so_missed_ticks_collapse() {
        let every_second = CronSchedule::parse("* * * * * *").unwrap();
        assert_eq!(
            next_after(&every_second, at("2026-01-01T00:00:00.5Z")),
            Some(at("2026-01-01T00:00:01Z"))
        );
        let quarter = CronSchedule::parse("*/15 * * * *").unwrap();
        // Down since 00:00: the next fire is the first tick after now, once.
        assert_eq!(
            next_after(&quarter, at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            next_after(&quarter, at("2026-01-01T10:15:00Z")),
            Some(at("2026-01-01T10:30:00Z"))
        );
    }

    #[test]
    fn a_tenant_schedule_overrides_the_integration_one() {
        let wf = Workflow::parse(
            "w.toml",
            r#"name = "w"
schedule = "0 * * * *"
source = "a"
target = "b"
[systems.a]
connector = "sql"
[systems.b]
connector = "sql"
[tenants.fast]
schedule = "* * * * *"
[tenants.plain]
"#,
        )
        .unwrap();
        assert_eq!(schedule_of(&wf, &"fast".into()).unwrap().expression, "* * * * *");
        assert_eq!(schedule_of(&wf, &"plain".into()).unwrap().expression, "0 * * * *");
    }
}
