use super::*;
use crate::template::Template;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

/// The fire time after `after` of `expression` (for a cron the origin plays no part).
fn next(expression: &str, after: &str) -> Option<String> {
    let e = Expression::parse(expression).unwrap_or_else(|e| panic!("{e}"));
    e.next_after(at("2024-01-01T00:00:00Z"), at(after))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The instant most cases start from.
const MARCH: &str = "2024-03-01T00:00:00Z";

/// Asserts [`next`] of each `(expression, after, expected)`.
fn assert_next(cases: &[(&str, &str, &str)]) {
    for &(expression, after, expected) in cases {
        assert_eq!(
            next(expression, after).as_deref(),
            Some(expected),
            "{expression} after {after}"
        );
    }
}

#[test]
fn rates_fire_a_whole_number_of_periods_after_the_start() {
    let origin = at("2024-03-01T10:00:00.500Z");
    let five = Expression::parse("rate(5 minutes)").unwrap();
    // (after, next), the first one period in.
    let steps = [
        ("2024-03-01T10:00:00.500Z", "2024-03-01T10:05:00.500Z"),
        ("2024-03-01T10:05:00.500Z", "2024-03-01T10:10:00.500Z"),
        ("2024-03-01T10:07:00Z", "2024-03-01T10:10:00.500Z"),
        ("2024-03-01T10:10:00.499Z", "2024-03-01T10:10:00.500Z"),
        ("2024-03-01T09:00:00Z", "2024-03-01T10:05:00.500Z"),
    ];
    for (after, expected) in steps {
        assert_eq!(
            five.next_after(origin, at(after)).unwrap(),
            at(expected),
            "after {after}"
        );
    }
    for (text, period) in [
        ("rate(1 day)", TimeDelta::days(1)),
        (" rate(2 hours) ", TimeDelta::hours(2)),
        ("rate(1 minute)", TimeDelta::minutes(1)),
    ] {
        assert_eq!(Expression::parse(text).unwrap(), Expression::Rate(period));
    }
}

#[test]
fn cron_fields_follow_aws_rules() {
    let noon = "cron(0 12 * * ? *)";
    let lists = "cron(0/15 8-9 ? * 2,4 *)";
    assert_next(&[
        // Every day at noon UTC; strictly after the given instant.
        (noon, "2024-03-01T11:59:30Z", "2024-03-01T12:00:00Z"),
        (noon, "2024-03-01T12:00:00Z", "2024-03-02T12:00:00Z"),
        // Weekday names and ranges: 2024-03-01 is a Friday, so the next weekday is Monday.
        (
            "cron(15 10 ? * MON-FRI *)",
            "2024-03-01T11:00:00Z",
            "2024-03-04T10:15:00Z",
        ),
        // Day-of-week numbers count 1-7 from Sunday.
        ("cron(0 9 ? * 1 *)", MARCH, "2024-03-03T09:00:00Z"),
        ("cron(0 9 ? * 7 *)", MARCH, "2024-03-02T09:00:00Z"),
        // Lists, ranges and steps: quarter hours from 08:00 to 09:45 on Mondays and Wednesdays.
        (lists, "2024-03-04T09:30:00Z", "2024-03-04T09:45:00Z"),
        (lists, "2024-03-04T09:50:00Z", "2024-03-06T08:00:00Z"),
        // Month names, with a day of month.
        ("cron(30 6 1 JAN,JUL ? *)", MARCH, "2024-07-01T06:30:00Z"),
    ]);
}

#[test]
fn cron_l_w_and_hash() {
    let last = "cron(0 0 L * ? *)";
    assert_next(&[
        // L in day-of-month: the last day of the month (2024 is a leap year).
        (last, "2024-02-10T00:00:00Z", "2024-02-29T00:00:00Z"),
        (last, "2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"),
        // L alone in day-of-week: the week's last day, Saturday.
        ("cron(0 0 ? * L *)", MARCH, "2024-03-02T00:00:00Z"),
        // 6L: the month's last Friday.
        ("cron(0 18 ? * 6L *)", MARCH, "2024-03-29T18:00:00Z"),
        // 3#2: the month's second Tuesday.
        ("cron(0 10 ? * 3#2 *)", MARCH, "2024-03-12T10:00:00Z"),
        // 15W: the weekday nearest the 15th; 2024-06-15 is a Saturday, so Friday the 14th.
        (
            "cron(0 9 15W * ? *)",
            "2024-06-01T00:00:00Z",
            "2024-06-14T09:00:00Z",
        ),
    ]);
}

#[test]
fn cron_year_field_bounds_the_schedule() {
    let years = "cron(0 0 1 1 ? 2026-2027)";
    assert_next(&[
        (years, MARCH, "2026-01-01T00:00:00Z"),
        (years, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ]);
    assert_eq!(
        next(years, "2027-01-01T00:00:00Z"),
        None,
        "no fire time after 2027"
    );
}

#[test]
fn bad_expressions_are_clear_errors() {
    let cases = [
        (
            "rate(1 minutes)",
            "the unit must be singular for the value 1",
        ),
        ("rate(5 minute)", "the unit must be plural for the value 5"),
        ("rate(0 minutes)", "not a positive integer"),
        ("rate(-1 minute)", "not a positive integer"),
        ("rate(5 weeks)", "none of minute, minutes"),
        ("rate(5)", "rate(value unit)"),
        ("cron(0 12 * * ?)", "a cron has 6 fields"),
        (
            "cron(0 12 * * * *)",
            "exactly one of day-of-month and day-of-week must be ?",
        ),
        (
            "cron(0 12 ? * ? *)",
            "exactly one of day-of-month and day-of-week must be ?",
        ),
        ("cron(0 12 * * ? x)", "illegal character"),
        ("cron(60 12 * * ? *)", "cron(60 12 * * ? *): "),
        ("cron(0 0 ? * 8 *)", "cron(0 0 ? * 8 *): "),
        ("cron(0 0 ? * 0 *)", "cron(0 0 ? * 0 *): "),
        (
            "every 5 minutes",
            "expected rate(value unit) or cron(fields)",
        ),
    ];
    for (text, expected) in cases {
        let err = Expression::parse(text).unwrap_err();
        assert!(
            err.contains(expected),
            "{text}: {err:?} should say {expected:?}"
        );
    }
}

fn schedule(kind: ScheduleKind, input: Option<&str>) -> Schedule {
    Schedule {
        function: "Fn".into(),
        event: "Tick".into(),
        kind,
        expression_text: "rate(1 minute)".into(),
        expression: Expression::parse("rate(1 minute)").unwrap(),
        name: "s-FnTick".into(),
        arn: "arn:aws:events:eu-west-1:123456789012:rule/s-FnTick".into(),
        input: input.map(str::to_string),
        enabled: true,
        warning: None,
        region: "eu-west-1".into(),
        account_id: "123456789012".into(),
    }
}

#[test]
fn payloads_are_what_aws_sends() {
    let t = at("2024-03-01T12:00:00.250Z");
    let event = schedule(ScheduleKind::Rule, None).payload(t).unwrap();
    assert_eq!(event["version"], "0");
    assert_eq!(event["detail-type"], "Scheduled Event");
    assert_eq!(event["source"], "aws.events");
    assert_eq!(event["account"], "123456789012");
    assert_eq!(event["region"], "eu-west-1");
    assert_eq!(event["time"], "2024-03-01T12:00:00Z");
    assert_eq!(
        event["resources"],
        json!(["arn:aws:events:eu-west-1:123456789012:rule/s-FnTick"])
    );
    assert_eq!(event["detail"], json!({}));
    let id = event["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let again = schedule(ScheduleKind::Rule, None).payload(t).unwrap();
    assert_ne!(again["id"], event["id"], "each firing has its own id");

    // A rule's Input is sent as is (no context attributes: those are Scheduler's).
    let custom = schedule(
        ScheduleKind::Rule,
        Some(r#"{"job": "<aws.scheduler.scheduled-time>"}"#),
    );
    assert_eq!(
        custom.payload(t).unwrap(),
        json!({"job": "<aws.scheduler.scheduled-time>"})
    );

    // Scheduler: {} without Input; its context attributes replaced in an Input.
    let mut v2 = schedule(ScheduleKind::Scheduler, None);
    v2.arn = "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/FnTick".into();
    assert_eq!(v2.payload(t).unwrap(), json!({}));
    v2.input = Some(
        r#"{"arn": "<aws.scheduler.schedule-arn>", "at": "<aws.scheduler.scheduled-time>", "run": "<aws.scheduler.execution-id>", "try": "<aws.scheduler.attempt-number>"}"#
            .into(),
    );
    let sent = v2.payload(t).unwrap();
    assert_eq!(sent["arn"], v2.arn);
    assert_eq!(sent["at"], "2024-03-01T12:00:00Z");
    assert_eq!(sent["try"], "1");
    assert_eq!(sent["run"].as_str().unwrap().len(), 16);
}

const TEMPLATE: &str = include_str!("../../tests/stacks/schedules.yaml");

#[test]
fn schedules_resolve_names_arns_and_inputs_against_the_stack() {
    let template = Template::parse(TEMPLATE, "t.yaml").unwrap();
    let stack = Stack::new(&template, "s", "eu-west-1", "http://127.0.0.1:3000");
    let all = Schedules::from_template(&template, &stack).unwrap();
    let by_event = |e: &str| all.schedules.iter().find(|s| s.event == e).unwrap();

    let tick = by_event("Tick");
    assert_eq!(tick.kind, ScheduleKind::Rule);
    assert_eq!(
        tick.arn,
        "arn:aws:events:eu-west-1:123456789012:rule/s-FnTick"
    );
    assert!(tick.enabled);
    assert_eq!(tick.input, None);

    let report = by_event("Report");
    assert_eq!(report.name, "s-weekly");
    assert_eq!(
        report.payload(Utc::now()).unwrap(),
        json!({"report": "weekly"})
    );

    let off = by_event("Off");
    assert_eq!(
        off.expression_text, "rate(2 hours)",
        "a parameter's default"
    );
    assert!(!off.enabled);

    let later = by_event("Later");
    assert_eq!(later.kind, ScheduleKind::Scheduler);
    assert_eq!(
        later.arn,
        "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/FnLater"
    );
    assert!(!later.enabled);
    assert!(
        later
            .warning
            .as_deref()
            .unwrap()
            .contains("Europe/Paris not applied locally")
    );

    let table = all.describe().join("\n");
    assert!(table.contains("rate(1 minute)"), "{table}");
    assert!(table.contains("-> Fn"), "{table}");
    assert!(table.contains("s-weekly"), "{table}");
    assert!(
        table.contains("FnLater, disabled, time zone Europe/Paris"),
        "{table}"
    );
}

#[test]
fn an_expression_that_resolves_to_nonsense_is_a_clear_error() {
    let text = TEMPLATE.replace("Default: rate(2 hours)", "Default: hourly");
    let template = Template::parse(&text, "t.yaml").unwrap();
    let stack = Stack::new(&template, "s", "eu-west-1", "http://127.0.0.1:3000");
    let err = Schedules::from_template(&template, &stack).unwrap_err();
    assert!(
        err.starts_with("Fn: schedule event Off: \"hourly\" is not a schedule expression"),
        "{err}"
    );
}

/// The schedule clock runs `speedup` times faster than real time.
#[test]
fn the_clock_runs_faster_by_the_speedup() {
    let start = tokio::time::Instant::now();
    let clock = Clock {
        start,
        origin: at("2024-03-01T00:00:00Z"),
        speedup: 60,
    };
    assert_eq!(clock.at(start), clock.origin);
    assert_eq!(
        clock.at(start + Duration::from_secs(2)),
        at("2024-03-01T00:02:00Z")
    );
    assert_eq!(
        clock.at(start + Duration::from_millis(1500)),
        at("2024-03-01T00:01:30Z")
    );
    let one_minute_in = at("2024-03-01T00:01:00Z");
    assert_eq!(
        clock.real_between(clock.origin, one_minute_in),
        Duration::from_secs(1)
    );
    assert_eq!(
        clock.real_between(one_minute_in, at("2024-03-02T00:01:00Z")),
        Duration::from_secs(1440)
    );
    assert_eq!(
        clock.real_between(one_minute_in, clock.origin),
        Duration::ZERO,
        "passed"
    );
}
