//! The soak's report (`target/soak/SOAK.md`, also printed): the run, what was sent and
//! answered, the faults injected, each check with its count, every violation, the DLQs, the
//! log's errors, and the command that replays the run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::Soak;
use super::traffic::Op;

/// `12345` → `12,345`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report, in Markdown.
pub fn markdown(s: &Soak) -> String {
    let o = &s.options;
    let mut md = String::new();
    let chaos = if o.chaos.trim().is_empty() {
        "off".to_owned()
    } else {
        format!("`{}`", o.chaos)
    };
    let _ = writeln!(
        md,
        "## Soak: seed {}, {} s, chaos {chaos}\n\n{} clients, {} binaries; traffic, drain and \
         quiet took {:.0} s; {} reads sampled while it ran. Replay: `{}`. Log: `{}`.\n",
        o.seed,
        o.seconds,
        o.clients,
        if o.release { "release" } else { "debug" },
        s.traffic.as_secs_f64(),
        thousands(s.samples),
        o.replay(),
        s.log_path.display()
    );

    let statuses: BTreeSet<u16> = s.calls.iter().map(|c| c.status).collect();
    let _ = write!(md, "### Commands sent, by final status\n\n| route | sent |");
    for st in &statuses {
        let _ = write!(
            md,
            " {} |",
            if *st == 0 {
                "no answer".into()
            } else {
                st.to_string()
            }
        );
    }
    let _ = write!(md, " retried |\n|---|---|");
    md += &"---|".repeat(statuses.len() + 1);
    md.push('\n');
    let mut by_route: BTreeMap<Op, Vec<&super::Call>> = BTreeMap::new();
    for c in &s.calls {
        by_route.entry(c.op).or_default().push(c);
    }
    for (op, calls) in &by_route {
        let _ = write!(md, "| `{}` | {} |", op.route(), thousands(calls.len()));
        for st in &statuses {
            let n = calls.iter().filter(|c| c.status == *st).count();
            let _ = write!(md, " {} |", thousands(n));
        }
        let retried = calls.iter().filter(|c| c.attempts.len() > 1).count();
        let _ = writeln!(md, " {} |", thousands(retried));
    }
    let _ = writeln!(
        md,
        "| all | {} |{}\n",
        thousands(s.calls.len()),
        " |".repeat(statuses.len() + 1)
    );

    let _ = writeln!(md, "### Faults injected\n");
    if s.faults.is_empty() {
        let _ = writeln!(md, "None.\n");
    } else {
        let list: Vec<String> = s.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            md,
            "{} (runner's summary: `{}`).\n",
            list.join(", "),
            s.summary.as_deref().unwrap_or("not printed")
        );
    }

    for stage in &s.stages {
        let quiet = match &stage.quiet {
            Ok(d) => format!("queues quiet after {:.0} s", d.as_secs_f64()),
            Err(e) => format!("**VIOLATION: {e}**"),
        };
        let _ = writeln!(
            md,
            "### {} ({quiet})\n\n| check | held | violations |\n|---|---|---|",
            stage.title
        );
        for c in &stage.checks {
            let _ = writeln!(
                md,
                "| {} | {} {} | {} |",
                c.name,
                thousands(c.ok),
                c.what,
                c.violations.len()
            );
        }
        md.push('\n');
        for c in &stage.checks {
            for v in &c.violations {
                let _ = writeln!(md, "- **{}**: {v}", c.name);
            }
            for n in &c.notes {
                let _ = writeln!(md, "- {} (note): {n}", c.name);
            }
        }
        if stage.dead.is_empty() {
            let _ = writeln!(md, "\nDLQs: empty.\n");
        } else {
            let _ = writeln!(
                md,
                "\nDLQs: {} message(s).\n\n| queue | type | envelope | correlation | reason (last error logged) |\n|---|---|---|---|---|",
                stage.dead.len()
            );
            for d in &stage.dead {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    d.queue,
                    d.kind,
                    d.id,
                    d.correlation,
                    d.reason
                        .as_deref()
                        .unwrap_or("none logged")
                        .replace('|', "/")
                );
            }
            md.push('\n');
        }
    }
    if !s.redrives.is_empty() {
        let _ = writeln!(md, "Redrives: {}.\n", s.redrives.join("; "));
    }

    let mut log: Vec<_> = s.log.iter().collect();
    log.sort_by(|a, b| b.1.cmp(a.1));
    let _ = writeln!(
        md,
        "### The log's errors and warnings ({} kinds)\n",
        log.len()
    );
    if !log.is_empty() {
        let _ = writeln!(
            md,
            "| function | level | message | lines |\n|---|---|---|---|"
        );
        for ((function, level, message), n) in log.iter().take(15) {
            let _ = writeln!(
                md,
                "| {function} | {level} | {} | {} |",
                message.replace('|', "/"),
                thousands(**n)
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "**Violations: {}.** Replay: `{}`",
        s.violations(),
        o.replay()
    );
    md
}
