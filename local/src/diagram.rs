//! `local diagram`: the template's wiring as a Graphviz DOT graph (rendered to
//! `docs/wiring.svg` by `make diagram`, shown in README.md's "The wiring").
//!
//! What is drawn, left to right:
//! - HTTP API routes (`METHOD /path`) → the function serving each;
//! - schedules (`Schedule`/`ScheduleV2` events) → their function;
//! - functions → the DynamoDB tables they name (environment or policies), the EventBridge bus
//!   they may `events:PutEvents` to, the queues whose URL their environment holds (direct sends,
//!   as the FIFO command queues), and the routes they may `execute-api:Invoke`;
//! - the bus → its rules (labelled with their pattern's detail-types, or sources) → their target
//!   queues (or functions) → the worker functions polling those queues (SQS event sources);
//! - each queue's dead-letter queue (`RedrivePolicy`), each rule target's (`DeadLetterConfig`);
//! - each CloudWatch alarm, fed by what its dimensions name.
//!
//! Nodes are identified by logical id (routes by `METHOD /path`, schedules by
//! `Function.Event`), which the SVG keeps as each node's tooltip. Everything is collected into
//! sorted maps before printing, so an unchanged template gives a byte-identical graph. The
//! graph's `comment` attribute is `wiring <fingerprint>`, the FNV-1a 64 hash of the rest of the
//! text; Graphviz copies it into the SVG as an XML comment, which is how the test below knows
//! the checked-in SVG was rendered from the checked-in DOT.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::template::{Function, Resource, Template};

/// Prefix of the graph's `comment`, followed by the 16 hex digits of [`fingerprint`].
const COMMENT_PREFIX: &str = "wiring ";
/// At most this many detail-types are listed on a rule; the rest are counted.
const MAX_PATTERN_LINES: usize = 3;

/// The DOT text of `template`'s wiring: `digraph wiring { ... }`, newline-terminated, with
/// `comment="wiring <16 hex digits>"` as its second line. Deterministic: the same template
/// always gives the same bytes (the template's path is not part of it).
pub fn render(template: &Template) -> String {
    let body = Graph::of(template).dot_body();
    let hash = fingerprint(&body);
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str("digraph wiring {\n");
    let _ = writeln!(out, "  comment=\"{COMMENT_PREFIX}{hash}\";");
    out.push_str(&body);
    out.push_str("}\n");
    out
}

/// FNV-1a 64 of `text` as 16 lower-case hex digits: a fixed algorithm, so stable across Rust
/// versions and machines (unlike std's `DefaultHasher`).
pub fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The fingerprint written in a graph made by [`render`] (`None` if it has no such comment).
pub fn fingerprint_of(dot: &str) -> Option<&str> {
    let marker = format!("comment=\"{COMMENT_PREFIX}");
    let start = dot.find(&marker)? + marker.len();
    dot.get(start..start + 16)
}

/// Groups of nodes, printed in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Routes,
    Schedules,
    /// Functions serving routes.
    ApiFunctions,
    /// Functions with neither routes nor queues (schedules only, or nothing).
    Functions,
    Events,
    Queues,
    /// Functions polling queues.
    Workers,
    DeadLetters,
    Tables,
    Alarms,
}

/// How a group is drawn.
enum Frame {
    /// A titled box.
    Cluster(&'static str),
    /// No box, but one column (`rank=same`), so functions of a kind line up.
    Column,
    /// Wherever the layout puts each node (alarms sit next to what they watch).
    Loose,
}

impl Group {
    fn frame(self) -> Frame {
        match self {
            Group::Routes => Frame::Cluster("HTTP API"),
            Group::Schedules => Frame::Cluster("schedules"),
            Group::ApiFunctions | Group::Workers => Frame::Column,
            Group::Functions | Group::Alarms => Frame::Loose,
            Group::Events => Frame::Cluster("EventBridge"),
            Group::Queues => Frame::Cluster("SQS"),
            Group::DeadLetters => Frame::Cluster("dead-letter queues"),
            Group::Tables => Frame::Cluster("DynamoDB"),
        }
    }

    /// Node attributes of the group (after the label).
    fn node_style(self) -> &'static str {
        match self {
            Group::Routes => "shape=plain",
            Group::Schedules => "shape=note, fillcolor=\"#fff8e1\"",
            Group::ApiFunctions | Group::Functions | Group::Workers => {
                "fillcolor=\"#ffe0b2\", color=\"#e65100\""
            }
            Group::Events => "fillcolor=\"#f3e5f5\", color=\"#6a1b9a\"",
            Group::Queues => "fillcolor=\"#e3f2fd\", color=\"#1565c0\"",
            Group::DeadLetters => "fillcolor=\"#ffebee\", color=\"#c62828\"",
            Group::Tables => "shape=cylinder, fillcolor=\"#e8f5e9\", color=\"#2e7d32\"",
            Group::Alarms => {
                "shape=octagon, fillcolor=\"#fffde7\", color=\"#f9a825\", fontsize=8, height=0.2"
            }
        }
    }
}

/// What an edge means; decides its style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Link {
    /// Route → function, schedule → function.
    Invokes,
    /// Function → table.
    Uses,
    /// Function → bus, bus → rule, rule → target.
    Events,
    /// Worker → bus: closes the loop bus → rule → queue → worker; see [`Link::backward`].
    EventsBack,
    /// Function → queue (direct send), queue → worker.
    Messages,
    /// Queue or rule → dead-letter queue.
    DeadLetter,
    /// Function → route it calls through the API; see [`Link::backward`].
    Calls,
    /// Watched resource → alarm.
    Alarm,
}

impl Link {
    fn style(self) -> &'static str {
        match self {
            Link::Invokes => "color=\"#757575\"",
            Link::Uses => "color=\"#2e7d32\"",
            Link::Events => "color=\"#6a1b9a\"",
            Link::EventsBack => "color=\"#6a1b9a\"",
            Link::Messages => "color=\"#1565c0\"",
            Link::DeadLetter => "color=\"#c62828\", style=dashed",
            Link::Calls => "color=\"#e65100\", style=dashed, label=\"calls\"",
            Link::Alarm => "color=\"#9e9e9e\", style=dotted, arrowhead=none",
        }
    }

    /// True for links that point right to left in the picture (to a node the layout puts
    /// further left): they are written `to -> from [dir=back]`, which draws the same arrow but
    /// lets Graphviz lay them out as ordinary left-to-right edges instead of routing a loop.
    fn backward(self) -> bool {
        matches!(self, Link::EventsBack | Link::Calls)
    }
}

#[derive(Debug)]
struct Node {
    group: Group,
    /// Orders the nodes of a group (routes by path, then method).
    sort_key: String,
    label: Vec<String>,
}

/// The nodes and edges, in sorted maps so printing is deterministic.
#[derive(Debug, Default)]
struct Graph {
    nodes: BTreeMap<String, Node>,
    edges: BTreeSet<(String, String, Link)>,
}

impl Graph {
    fn of(t: &Template) -> Graph {
        let mut g = Graph::default();
        g.resource_nodes(t);
        for (id, f) in &t.functions {
            g.function_links(t, id, f);
        }
        for (id, r) in &t.resources {
            g.resource_links(id, r);
        }
        g
    }

    /// A node per table, queue, bus, rule, alarm and function.
    fn resource_nodes(&mut self, t: &Template) {
        let dead_letters = dead_letter_queues(t);
        for (id, r) in &t.resources {
            let p = &r.properties;
            match r.kind.as_str() {
                "AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable" => {
                    self.node(id, Group::Tables, vec![id.clone()]);
                }
                "AWS::SQS::Queue" => {
                    let mut label = vec![id.clone()];
                    if p.get("FifoQueue").is_some_and(is_true) {
                        label.push("(FIFO)".into());
                    }
                    let group = match dead_letters.contains(id) {
                        true => Group::DeadLetters,
                        false => Group::Queues,
                    };
                    self.node(id, group, label);
                }
                "AWS::Events::EventBus" => self.node(id, Group::Events, vec![id.clone()]),
                "AWS::Events::Rule" => {
                    let mut label = vec![short(id, "Rule").to_string()];
                    label.extend(rule_summary(p));
                    self.node(id, Group::Events, label);
                }
                "AWS::CloudWatch::Alarm" => {
                    self.node(id, Group::Alarms, vec![alarm_summary(id, p)]);
                }
                "AWS::Serverless::Function" => {
                    let f = &t.functions[id];
                    let group = if !f.routes.is_empty() {
                        Group::ApiFunctions
                    } else if !f.sqs_sources.is_empty() {
                        Group::Workers
                    } else {
                        Group::Functions
                    };
                    self.node(id, group, vec![short(id, "Function").to_string()]);
                }
                _ => {}
            }
        }
    }

    /// Function `id`'s routes, schedules and queues (in), tables, bus, direct queues and
    /// called routes (out).
    fn function_links(&mut self, t: &Template, id: &str, f: &Function) {
        let kind = |r: &str| t.kind_of(r).unwrap_or_default();
        for route in &f.routes {
            let node = route_id(&route.method, &route.path);
            let key = format!("{} {}", route.path, route.method);
            self.node_sorted(&node, Group::Routes, key, vec![node.clone()]);
            self.edge(&node, id, Link::Invokes);
        }
        for source in &f.sqs_sources {
            for queue in refs(&source.queue) {
                self.edge(&queue, id, Link::Messages);
            }
        }
        // A variable that is exactly one queue's URL: the function sends to it directly.
        for value in f.environment.values() {
            if let Some(queue) = direct_ref(value).filter(|r| kind(r) == "AWS::SQS::Queue") {
                self.edge(id, &queue, Link::Messages);
            }
        }
        let props = &t.resources[id].properties;
        let policies = props.get("Policies").unwrap_or(&Value::Null);
        let named = refs(policies)
            .into_iter()
            .chain(f.environment.values().flat_map(refs));
        for table in named {
            if matches!(
                kind(&table),
                "AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable"
            ) {
                self.edge(id, &table, Link::Uses);
            }
        }
        for statement in statements(policies) {
            let actions = strings(statement.get("Action"));
            let resources = statement.get("Resource").unwrap_or(&Value::Null);
            if actions.iter().any(|a| a == "events:PutEvents") {
                let link = match f.sqs_sources.is_empty() {
                    true => Link::Events,
                    false => Link::EventsBack,
                };
                for bus in refs(resources) {
                    self.edge(id, &bus, link);
                }
            }
            if actions.iter().any(|a| a == "execute-api:Invoke") {
                for route in invoked_routes(t, resources) {
                    self.edge(id, &route, Link::Calls);
                }
            }
        }
        let events = props.get("Events").and_then(Value::as_object);
        for (event, e) in events.into_iter().flatten() {
            if let Some(expr) = schedule_expression(e) {
                let node = format!("{id}.{event}");
                self.node(&node, Group::Schedules, vec![expr]);
                self.edge(&node, id, Link::Invokes);
            }
        }
    }

    /// Redrive policies, rules (bus in; targets and their dead-letter queues out) and what
    /// each alarm watches.
    fn resource_links(&mut self, id: &str, r: &Resource) {
        let p = &r.properties;
        match r.kind.as_str() {
            "AWS::SQS::Queue" => {
                let dlq = p.pointer("/RedrivePolicy/deadLetterTargetArn");
                for target in dlq.map(refs).unwrap_or_default() {
                    self.edge(id, &target, Link::DeadLetter);
                }
            }
            "AWS::Events::Rule" => {
                let bus = self.bus_of(p.get("EventBusName"));
                self.edge(&bus, id, Link::Events);
                let targets = p.get("Targets").and_then(Value::as_array);
                for target in targets.into_iter().flatten() {
                    for dest in target.get("Arn").map(refs).unwrap_or_default() {
                        self.edge(id, &dest, Link::Events);
                    }
                    let dlq = target.pointer("/DeadLetterConfig/Arn");
                    for dest in dlq.map(refs).unwrap_or_default() {
                        self.edge(id, &dest, Link::DeadLetter);
                    }
                }
            }
            "AWS::CloudWatch::Alarm" => {
                let mut watched = p.clone();
                if let Some(map) = watched.as_object_mut() {
                    for actions in ["AlarmActions", "OKActions", "InsufficientDataActions"] {
                        map.remove(actions);
                    }
                }
                for res in refs(&watched) {
                    self.edge(&res, id, Link::Alarm);
                }
            }
            _ => {}
        }
    }

    /// The node of a rule's `EventBusName`: the template's bus it refers to, else a node for
    /// the bus it names (`default` when absent).
    fn bus_of(&mut self, name: Option<&Value>) -> String {
        if let Some(bus) = name.and_then(|n| refs(n).into_iter().next()) {
            return bus;
        }
        let name = name.and_then(Value::as_str).unwrap_or("default");
        let id = format!("(bus {name})");
        self.node(&id, Group::Events, vec![format!("{name} bus")]);
        id
    }

    fn node(&mut self, id: &str, group: Group, label: Vec<String>) {
        self.node_sorted(id, group, id.to_string(), label);
    }

    fn node_sorted(&mut self, id: &str, group: Group, sort_key: String, label: Vec<String>) {
        self.nodes.entry(id.to_string()).or_insert(Node {
            group,
            sort_key,
            label,
        });
    }

    fn edge(&mut self, from: &str, to: &str, link: Link) {
        self.edges.insert((from.to_string(), to.to_string(), link));
    }

    /// Everything between the `comment` line and the closing brace.
    fn dot_body(&self) -> String {
        let mut out = String::new();
        out.push_str(concat!(
            "  // Generated by `local diagram` from template.yaml: run `make diagram`.\n",
            "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=12, nodesep=0.12, ",
            "ranksep=0.5];\n",
            "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded,filled\", ",
            "fillcolor=white, height=0.3, margin=\"0.08,0.03\"];\n",
            "  edge [fontname=\"Helvetica\", fontsize=9, arrowsize=0.6];\n",
        ));
        let mut groups: BTreeMap<Group, Vec<(&str, &String, &Node)>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            groups
                .entry(node.group)
                .or_default()
                .push((&node.sort_key, id, node));
        }
        for (group, mut nodes) in groups {
            nodes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            let frame = group.frame();
            let indent = match frame {
                Frame::Cluster(title) => {
                    let _ = writeln!(
                        out,
                        "  subgraph \"cluster {title}\" {{\n    label={}; style=\"rounded,dashed\"; color=\"#bdbdbd\";",
                        quote(title)
                    );
                    "    "
                }
                Frame::Column => {
                    out.push_str("  {\n    rank=same;\n");
                    "    "
                }
                Frame::Loose => "  ",
            };
            for (_, id, node) in nodes {
                let label = node.label.iter().map(|l| escape(l)).collect::<Vec<_>>();
                let _ = writeln!(
                    out,
                    "{indent}{} [label=\"{}\", {}];",
                    quote(id),
                    label.join("\\n"),
                    group.node_style()
                );
            }
            if !matches!(frame, Frame::Loose) {
                out.push_str("  }\n");
            }
        }
        for (from, to, link) in &self.edges {
            if self.nodes.contains_key(from) && self.nodes.contains_key(to) {
                let (tail, head, dir) = match link.backward() {
                    true => (to, from, ", dir=back"),
                    false => (from, to, ""),
                };
                let (tail, head, style) = (quote(tail), quote(head), link.style());
                let _ = writeln!(out, "  {tail} -> {head} [{style}{dir}];");
            }
        }
        out
    }
}

/// Queues some `RedrivePolicy` or rule target `DeadLetterConfig` names as dead-letter target.
fn dead_letter_queues(t: &Template) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in t.resources.values() {
        let p = &r.properties;
        if let Some(arn) = p.pointer("/RedrivePolicy/deadLetterTargetArn") {
            out.extend(refs(arn));
        }
        let targets = p.get("Targets").and_then(Value::as_array);
        for target in targets.into_iter().flatten() {
            if let Some(arn) = target.pointer("/DeadLetterConfig/Arn") {
                out.extend(refs(arn));
            }
        }
    }
    out
}

/// The lines under a rule's name: its schedule, or its pattern's detail-types (else sources),
/// at most [`MAX_PATTERN_LINES`] and a count of the rest.
fn rule_summary(props: &Value) -> Vec<String> {
    if let Some(expr) = props.get("ScheduleExpression").and_then(Value::as_str) {
        return vec![expr.to_string()];
    }
    let Some(pattern) = props.get("EventPattern") else {
        return Vec::new();
    };
    let mut items = strings(pattern.get("detail-type"));
    if items.is_empty() {
        items = strings(pattern.get("source"))
            .into_iter()
            .map(|s| format!("source {s}"))
            .collect();
    }
    if items.len() > MAX_PATTERN_LINES {
        let rest = items.len() - (MAX_PATTERN_LINES - 1);
        items.truncate(MAX_PATTERN_LINES - 1);
        items.push(format!("+{rest} more"));
    }
    items
}

/// `Errors > 0`, `MessagesVisible > 0`: the alarm's metric and condition, or its id.
fn alarm_summary(id: &str, props: &Value) -> String {
    let Some(metric) = props.get("MetricName").and_then(Value::as_str) else {
        return id.to_string();
    };
    let metric = metric.strip_prefix("ApproximateNumberOf").unwrap_or(metric);
    let op = match props.get("ComparisonOperator").and_then(Value::as_str) {
        Some("GreaterThanThreshold") => ">",
        Some("GreaterThanOrEqualToThreshold") => ">=",
        Some("LessThanThreshold") => "<",
        Some("LessThanOrEqualToThreshold") => "<=",
        _ => return metric.to_string(),
    };
    match props.get("Threshold") {
        Some(Value::Number(n)) => format!("{metric} {op} {n}"),
        Some(Value::String(s)) => format!("{metric} {op} {s}"),
        _ => metric.to_string(),
    }
}

/// The expression of a `Schedule` (`Schedule`) or `ScheduleV2` (`ScheduleExpression`) event,
/// or the event type itself when the expression is not a literal.
fn schedule_expression(event: &Value) -> Option<String> {
    let kind = event.get("Type").and_then(Value::as_str)?;
    let key = match kind {
        "Schedule" => "Schedule",
        "ScheduleV2" => "ScheduleExpression",
        _ => return None,
    };
    let expr = event.pointer(&format!("/Properties/{key}"));
    Some(expr.and_then(Value::as_str).unwrap_or(kind).to_string())
}

/// Routes named by `execute-api:Invoke` resources of the form
/// `...${Api}/<stage>/<METHOD>/<path>` (wildcards are not expanded).
fn invoked_routes(t: &Template, resources: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut texts = Vec::new();
    collect_sub_texts(resources, &mut texts);
    for text in texts {
        let Some((_, tail)) = text.rsplit_once('}') else {
            continue;
        };
        let mut parts = tail.trim_start_matches('/').splitn(3, '/');
        let (Some(_stage), Some(method), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = format!("/{path}");
        let served = t
            .functions
            .values()
            .flat_map(|f| &f.routes)
            .any(|r| r.method == method && r.path == path);
        if served {
            out.push(route_id(method, &path));
        }
    }
    out
}

fn collect_sub_texts<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (key, arg) in map {
                match (key.as_str(), arg) {
                    ("Fn::Sub", Value::String(text)) => out.push(text),
                    ("Fn::Sub", Value::Array(parts)) => {
                        out.extend(parts.first().and_then(Value::as_str));
                    }
                    _ => collect_sub_texts(arg, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_sub_texts(i, out)),
        _ => {}
    }
}

/// The inline policy statements among a function's `Policies` (managed policy names and SAM
/// policy templates have none).
fn statements(policies: &Value) -> Vec<&Value> {
    let docs: Vec<&Value> = match policies {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![policies],
        _ => Vec::new(),
    };
    docs.into_iter()
        .filter_map(|d| d.get("Statement"))
        .flat_map(|s| match s {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        })
        .collect()
}

/// Every logical id `v` refers to through `Ref`, `Fn::GetAtt` or `Fn::Sub` (`${Id}`,
/// `${Id.Attribute}`), sorted; parameters and pseudo parameters (`AWS::Region`) included only
/// as the names they are, which match no node.
pub fn refs(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect_refs(v, &mut out);
    out
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (key, arg) in map {
                match (key.as_str(), arg) {
                    ("Ref", Value::String(id)) => {
                        out.insert(id.clone());
                    }
                    ("Fn::GetAtt", Value::Array(parts)) => {
                        out.extend(parts.first().and_then(Value::as_str).map(str::to_string));
                    }
                    ("Fn::GetAtt", Value::String(dotted)) => {
                        out.insert(dotted.split('.').next().unwrap_or(dotted).to_string());
                    }
                    ("Fn::Sub", Value::String(text)) => sub_refs(text, out),
                    ("Fn::Sub", Value::Array(parts)) => {
                        if let Some(text) = parts.first().and_then(Value::as_str) {
                            sub_refs(text, out);
                        }
                        parts.iter().skip(1).for_each(|p| collect_refs(p, out));
                    }
                    _ => collect_refs(arg, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

/// The resources of `${Id}` and `${Id.Attribute}` in a `Fn::Sub` text (`${!x}` is a literal).
fn sub_refs(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.starts_with('!') {
            out.insert(name.split('.').next().unwrap_or(name).to_string());
        }
        rest = &after[end + 1..];
    }
}

/// The resource when `v` is exactly `Ref Id` or `Fn::GetAtt [Id, _]` (not inside a join).
fn direct_ref(v: &Value) -> Option<String> {
    let map = v.as_object().filter(|m| m.len() == 1)?;
    if map.contains_key("Ref") || map.contains_key("Fn::GetAtt") {
        refs(v).into_iter().next()
    } else {
        None
    }
}

/// The strings of a scalar-or-list field (`Action: x` or `Action: [x, y]`).
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn is_true(v: &Value) -> bool {
    matches!(v, Value::Bool(true)) || v.as_str() == Some("true")
}

fn route_id(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

/// `id` without `suffix`, unless that leaves nothing.
fn short<'a>(id: &'a str, suffix: &str) -> &'a str {
    id.strip_suffix(suffix)
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
}

/// A DOT quoted string.
fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

/// Escapes `\` and `"` for the inside of a DOT quoted string.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn repo_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
    }

    /// docs/wiring.dot is what `local diagram` prints for template.yaml today, and
    /// docs/wiring.svg was rendered from that DOT (its fingerprint comment matches).
    #[test]
    fn checked_in_diagram_is_current() {
        let template = Template::load(repo_file("template.yaml")).unwrap();
        let dot = render(&template);
        let stale = "the wiring diagram is stale: run `make diagram` and commit docs/wiring.*";
        let checked_in = std::fs::read_to_string(repo_file("docs/wiring.dot"))
            .unwrap_or_else(|e| panic!("docs/wiring.dot: {e}; {stale}"));
        if checked_in != dot {
            let line = checked_in
                .lines()
                .zip(dot.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| checked_in.lines().count().min(dot.lines().count()));
            panic!(
                "docs/wiring.dot differs from template.yaml's wiring at line {}:\n  checked in: {:?}\n  generated:  {:?}\n{stale}",
                line + 1,
                checked_in.lines().nth(line).unwrap_or("(end of file)"),
                dot.lines().nth(line).unwrap_or("(end of file)"),
            );
        }
        let hash = fingerprint_of(&dot).expect("render writes a fingerprint");
        let svg = std::fs::read_to_string(repo_file("docs/wiring.svg"))
            .unwrap_or_else(|e| panic!("docs/wiring.svg: {e}; {stale}"));
        assert!(
            svg.contains(&format!("<!-- {COMMENT_PREFIX}{hash} -->")),
            "docs/wiring.svg was not rendered from docs/wiring.dot ({hash}); {stale}"
        );
        // Regeneration is byte-identical, and the fingerprint covers the body.
        assert_eq!(render(&template), dot);
        let body_start = dot.find('\n').unwrap() + 1;
        let body_start = body_start + dot[body_start..].find('\n').unwrap() + 1;
        assert_eq!(fingerprint(&dot[body_start..dot.len() - 2]), hash);
    }

    const SMALL: &str = include_str!("../tests/stacks/small.yaml");

    #[test]
    fn draws_the_wiring_of_a_small_template() {
        let t = Template::parse(SMALL, "small.yaml").unwrap();
        let dot = render(&t);
        for edge in [
            r#""GET /things" -> "ApiFunction""#,
            r#""ApiFunction" -> "Table""#,
            r#""ApiFunction" -> "Bus""#,
            r#""ApiFunction" -> "Fifo""#,
            r#""Bus" -> "Rule""#,
            r#""Rule" -> "Queue""#,
            r#""Queue" -> "Worker""#,
            r#""Fifo" -> "Worker""#,
            r##""Queue" -> "Dlq" [color="#c62828", style=dashed]"##,
            r#""Dlq" -> "DlqAlarm""#,
            r#""Worker.Tick" -> "Worker""#,
            r#""(bus default)" -> "Nightly""#,
            r##""GET /things" -> "Worker" [color="#e65100", style=dashed, label="calls", dir=back]"##,
        ] {
            assert!(dot.contains(edge), "missing {edge} in\n{dot}");
        }
        for label in [
            r#""Rule" [label="Rule\nA\nB\n+2 more""#,
            r#""Fifo" [label="Fifo\n(FIFO)""#,
            r#""DlqAlarm" [label="MessagesVisible > 0""#,
            r#""Worker.Tick" [label="rate(5 minutes)""#,
            r#""Nightly" [label="Nightly\nrate(1 day)""#,
            r#""(bus default)" [label="default bus""#,
            r#""ApiFunction" [label="Api""#,
        ] {
            assert!(dot.contains(label), "missing {label} in\n{dot}");
        }
        // The DLQ sits with the dead-letter queues; alarm actions are not what it watches.
        let dlq_cluster = dot.find("cluster dead-letter queues").unwrap();
        assert!(dot[dlq_cluster..].starts_with("cluster dead-letter queues\" {\n    label"));
        assert!(dot[dlq_cluster..].contains("\n    \"Dlq\" [label"));
        assert!(!dot.contains(r#""Table" -> "DlqAlarm""#));
        assert!(!dot.contains(r#""Worker" -> "Table""#));
        // Deterministic, fingerprinted, and the fingerprint follows the content.
        assert_eq!(render(&t), dot);
        let hash = fingerprint_of(&dot).unwrap();
        assert_eq!(hash.len(), 16);
        let other = Template::parse(&SMALL.replace("/things", "/items"), "small.yaml").unwrap();
        assert_ne!(fingerprint_of(&render(&other)).unwrap(), hash);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn fingerprint_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint("foobar"), "85944171f73967e8");
    }
}
