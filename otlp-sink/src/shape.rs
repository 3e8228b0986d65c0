//! The shape of jobstream's traces, checked on the spans a run exported: every job sent once, every attempt
//! processed once under (or linked to) its `send` span, every attempt settled, no span whose parent never
//! arrived, no trace past a size bound. [`check`] counts each violation and keeps a few examples; tests assert a
//! clean report, and `producer load --check-traces` prints it for users load-testing their tracing pipeline.
//!
//! What is what, by the messaging attributes (`docs/wire-format.md`): a `send` span has
//! `messaging.operation.type=send` (a replay, `messaging.operation.name=replay`, is a new send of its job); a
//! `process` span `process`; a settle span `settle`, either a child of the `process` span it settles (retry,
//! dead letter) or a batch linking to it (`ack`). A service that exports no settle span at all (the Node and
//! Python example workers) is held to the `settle` event on each of its `process` spans instead.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ReceivedSpan;

/// Bounds the check holds traces to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Most spans one trace may have (fan-outs and retries included).
    pub max_spans_per_trace: usize,
    /// Most attempts one job may have; `None` for no bound.
    pub max_attempts: Option<u32>,
}

impl Default for Rules {
    fn default() -> Self {
        Self { max_spans_per_trace: 10_000, max_attempts: None }
    }
}

/// A kind of violation, counted by [`Report::violations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// A job sent more than once (not counting replays, idempotent duplicates and failed sends).
    DuplicateSend,
    /// A `process` span continuing a trace, but neither its parent nor a link is its job's `send` span, which
    /// was exported.
    WrongParent,
    /// A `process` span continuing a trace whose job's `send` span was never exported.
    MissingSend,
    /// More than one `process` span for one attempt of one send.
    DuplicateProcess,
    /// A job sent (and counted by [`Violation::DuplicateSend`]'s rule) that no `process` span ran: a consumer
    /// that exported nothing, or a job still waiting.
    Unprocessed,
    /// A `process` span that did not continue its job's trace (`jobstream.trace.context` `missing` or
    /// `invalid`) although the job's `send` span was exported: the context was lost on the way.
    LostContext,
    /// A `process` span no settle span accounts for (neither a child settle span nor a link from one, failed
    /// settle spans not counting); for a worker that makes no settle spans at all (the Node and Python
    /// examples), one without a `settle` event.
    Unsettled,
    /// A span whose parent span was never exported.
    Orphan,
    /// A trace with more spans than [`Rules::max_spans_per_trace`].
    OversizedTrace,
    /// A job with more attempts than [`Rules::max_attempts`].
    TooManyAttempts,
}

impl Violation {
    /// A short, stable name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::DuplicateSend => "duplicate_send",
            Self::WrongParent => "wrong_parent",
            Self::MissingSend => "missing_send",
            Self::DuplicateProcess => "duplicate_process",
            Self::Unprocessed => "unprocessed",
            Self::LostContext => "lost_context",
            Self::Unsettled => "unsettled",
            Self::Orphan => "orphan",
            Self::OversizedTrace => "oversized_trace",
            Self::TooManyAttempts => "too_many_attempts",
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Spans checked.
    pub spans: usize,
    /// Distinct traces.
    pub traces: usize,
    /// Distinct job ids seen on `send` or `process` spans.
    pub jobs: usize,
    /// `send` spans (replays included).
    pub sends: usize,
    /// `process` spans.
    pub processes: usize,
    /// Settle spans (`ack`, `retry`, `dead_letter`).
    pub settles: usize,
    /// How many of each violation.
    pub violations: BTreeMap<Violation, usize>,
    /// Up to five examples of each violation, in words.
    pub examples: BTreeMap<Violation, Vec<String>>,
}

impl Report {
    /// True when nothing was violated.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn violated(&mut self, violation: Violation, example: impl FnOnce() -> String) {
        *self.violations.entry(violation).or_default() += 1;
        let examples = self.examples.entry(violation).or_default();
        if examples.len() < 5 {
            examples.push(example());
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "trace shapes: {} spans in {} traces; {} jobs, {} sends, {} process spans, {} settle spans",
            self.spans, self.traces, self.jobs, self.sends, self.processes, self.settles
        )?;
        if self.is_clean() {
            return writeln!(f, "violations: none");
        }
        for (violation, count) in &self.violations {
            writeln!(f, "violation {}: {count}", violation.name())?;
            for example in self.examples.get(violation).into_iter().flatten() {
                writeln!(f, "  e.g. {example}")?;
            }
        }
        Ok(())
    }
}

fn operation(span: &ReceivedSpan) -> Option<&str> {
    span.attr("messaging.operation.type")
}

/// Checks the shape of every trace in `spans` against `rules`.
pub fn check(spans: &[ReceivedSpan], rules: &Rules) -> Report {
    let mut report = Report { spans: spans.len(), ..Report::default() };
    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();

    // Traces and their sizes; spans whose parent never arrived.
    let mut per_trace: HashMap<&str, usize> = HashMap::new();
    for span in spans {
        *per_trace.entry(&span.trace_id).or_default() += 1;
        if let Some(parent) = &span.parent_span_id {
            if !by_id.contains_key(parent.as_str()) {
                report.violated(Violation::Orphan, || {
                    format!("{} ({}) in trace {}: parent {parent} not exported", span.name, span.span_id, span.trace_id)
                });
            }
        }
    }
    report.traces = per_trace.len();
    let mut sizes: Vec<(&str, usize)> = per_trace.into_iter().filter(|(_, n)| *n > rules.max_spans_per_trace).collect();
    sizes.sort_unstable();
    for (trace, n) in sizes {
        report.violated(Violation::OversizedTrace, || {
            format!("trace {trace} has {n} spans (bound {})", rules.max_spans_per_trace)
        });
    }

    // Sends: one per job, but for replays, duplicates and failures.
    let sends: Vec<&ReceivedSpan> = spans.iter().filter(|s| operation(s) == Some("send")).collect();
    report.sends = sends.len();
    let send_ids: HashSet<&str> = sends.iter().map(|s| s.span_id.as_str()).collect();
    let mut sent_jobs: BTreeMap<&str, usize> = BTreeMap::new();
    let mut jobs: HashSet<&str> = HashSet::new();
    for send in &sends {
        let Some(job) = send.attr("jobstream.job.id") else { continue };
        jobs.insert(job);
        let counted = send.attr("messaging.operation.name") != Some("replay")
            && send.attr("jobstream.idempotent.duplicate") != Some("true")
            && send.status != "error";
        if counted {
            *sent_jobs.entry(job).or_default() += 1;
        }
    }
    for (job, n) in &sent_jobs {
        if *n > 1 {
            report.violated(Violation::DuplicateSend, || format!("job {job} has {n} send spans"));
        }
    }

    // Settle spans: which process spans they account for.
    let settles: Vec<&ReceivedSpan> = spans.iter().filter(|s| operation(s) == Some("settle")).collect();
    report.settles = settles.len();
    let mut settled: HashSet<&str> = HashSet::new();
    // A failed settle (an `XACK` given up, a move refused) settled nothing.
    for settle in settles.iter().filter(|s| s.status != "error") {
        settled.extend(settle.parent_span_id.as_deref());
        settled.extend(settle.links.iter().map(|(_, span)| span.as_str()));
    }
    // Services that make settle spans are held to them; the others (workers in other languages) to the
    // `settle` event every worker writes on its `process` span.
    let settling: HashSet<&str> = settles.iter().map(|s| s.service_name.as_str()).collect();
    let is_settled = |process: &ReceivedSpan| {
        settled.contains(process.span_id.as_str())
            || (!settling.contains(process.service_name.as_str())
                && process.events.iter().any(|(name, _)| name == "settle"))
    };

    // Process spans: under (or linked to) their send, once per attempt, settled.
    let processes: Vec<&ReceivedSpan> = spans.iter().filter(|s| operation(s) == Some("process")).collect();
    report.processes = processes.len();
    let mut attempts: HashMap<(&str, &str), usize> = HashMap::new();
    let mut job_attempts: HashMap<&str, u32> = HashMap::new();
    for process in &processes {
        let job = process.attr("jobstream.job.id");
        jobs.extend(job);
        let attempt = process.attr("jobstream.job.attempt").unwrap_or("?");
        if let (Some(job), Ok(n)) = (job, attempt.parse::<u32>()) {
            let most = job_attempts.entry(job).or_default();
            *most = (*most).max(n);
        }
        if !is_settled(process) {
            report.violated(Violation::Unsettled, || {
                format!("process span {} of job {} attempt {attempt}", process.span_id, job.unwrap_or("?"))
            });
        }
        // A worker that does not say (the attribute is optional) is held to its parent or link like one that
        // continued the context.
        if matches!(process.attr("jobstream.trace.context"), Some("missing" | "invalid")) {
            if job.is_some_and(|j| sent_jobs.contains_key(j)) {
                report.violated(Violation::LostContext, || {
                    format!(
                        "process span {} of job {}: context {:?} though its send was exported",
                        process.span_id,
                        job.unwrap_or("?"),
                        process.attr("jobstream.trace.context")
                    )
                });
            }
            continue;
        }
        let send = process
            .parent_span_id
            .as_deref()
            .filter(|p| send_ids.contains(p))
            .or_else(|| process.links.iter().map(|(_, s)| s.as_str()).find(|s| send_ids.contains(s)));
        match send {
            Some(send) => {
                let n = attempts.entry((send, attempt)).or_default();
                *n += 1;
                if *n == 2 {
                    report.violated(Violation::DuplicateProcess, || {
                        format!("send {send} attempt {attempt} has more than one process span")
                    });
                }
            }
            None if job.is_some_and(|j| sent_jobs.contains_key(j)) => {
                report.violated(Violation::WrongParent, || {
                    format!(
                        "process span {} of job {} attempt {attempt}: parent {:?}, links {:?}",
                        process.span_id,
                        job.unwrap_or("?"),
                        process.parent_span_id,
                        process.links
                    )
                });
            }
            None => report.violated(Violation::MissingSend, || {
                format!("process span {} of job {}: no send span exported", process.span_id, job.unwrap_or("?"))
            }),
        }
    }
    for job in sent_jobs.keys().filter(|job| !job_attempts.contains_key(*job)) {
        if !processes.iter().any(|p| p.attr("jobstream.job.id") == Some(*job)) {
            report.violated(Violation::Unprocessed, || format!("job {job} was sent but no process span ran it"));
        }
    }
    if let Some(max) = rules.max_attempts {
        let mut over: Vec<(&str, u32)> = job_attempts.into_iter().filter(|(_, n)| *n > max).collect();
        over.sort_unstable();
        for (job, n) in over {
            report.violated(Violation::TooManyAttempts, || format!("job {job} ran {n} attempts (bound {max})"));
        }
    }
    report.jobs = jobs.len();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, trace: &str, parent: Option<&str>, op: &str, attrs: &[(&str, &str)]) -> ReceivedSpan {
        let mut attributes: BTreeMap<String, String> =
            attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        attributes.insert("messaging.operation.type".into(), op.into());
        ReceivedSpan {
            service_name: "t".into(),
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_owned),
            name: op.into(),
            kind: "internal",
            attribute_types: attributes.keys().map(|k| (k.clone(), "string")).collect(),
            attributes,
            status: "unset",
            status_message: String::new(),
            events: vec![],
            links: vec![],
            start_ns: 0,
            end_ns: 0,
        }
    }

    fn job(id: &str, attempt: &str) -> [(&'static str, String); 3] {
        [
            ("jobstream.job.id", id.to_owned()),
            ("jobstream.job.attempt", attempt.to_owned()),
            ("jobstream.trace.context", "continued".to_owned()),
        ]
    }

    fn with(mut span: ReceivedSpan, attrs: [(&'static str, String); 3]) -> ReceivedSpan {
        for (k, v) in attrs {
            span.attributes.insert(k.into(), v);
        }
        span
    }

    #[test]
    fn a_sent_processed_and_acknowledged_job_is_clean() {
        let send = with(span("s1", "t1", None, "send", &[]), job("j1", "1"));
        let process = with(span("p1", "t1", Some("s1"), "process", &[]), job("j1", "1"));
        let mut ack = span("a1", "t2", None, "settle", &[]);
        ack.links.push(("t1".into(), "p1".into()));
        let report = check(&[send, process, ack], &Rules::default());
        assert!(report.is_clean(), "{report}");
        assert_eq!((report.sends, report.processes, report.settles, report.jobs, report.traces), (1, 1, 1, 1, 2));
    }

    #[test]
    fn a_worker_without_settle_spans_is_held_to_its_settle_events() {
        let send = with(span("s1", "t1", None, "send", &[]), job("j1", "1"));
        let mut process = with(span("p1", "t1", Some("s1"), "process", &[]), job("j1", "1"));
        process.service_name = "node-worker".into();
        let report = check(&[send.clone(), process.clone()], &Rules::default());
        assert_eq!(report.violations.get(&Violation::Unsettled), Some(&1), "{report}");
        process.events.push(("settle".into(), BTreeMap::new()));
        let report = check(&[send.clone(), process.clone()], &Rules::default());
        assert!(report.is_clean(), "{report}");
        // A service that does make settle spans gets no such pass.
        let mut ack = span("a1", "t2", None, "settle", &[]);
        ack.service_name = "node-worker".into();
        let report = check(&[send, process, ack], &Rules::default());
        assert_eq!(report.violations.get(&Violation::Unsettled), Some(&1), "{report}");
    }

    #[test]
    fn each_violation_is_counted() {
        let send = with(span("s1", "t1", None, "send", &[]), job("j1", "1"));
        let again = with(span("s2", "t1", None, "send", &[]), job("j1", "1"));
        let unsettled = with(span("p1", "t1", Some("s1"), "process", &[]), job("j1", "1"));
        let twice = with(span("p2", "t1", Some("s1"), "process", &[]), job("j1", "1"));
        let astray = with(span("p3", "t1", Some("x9"), "process", &[]), job("j1", "2"));
        let unsent = with(span("p4", "t3", None, "process", &[]), job("j2", "1"));
        let never_run = with(span("s3", "t4", None, "send", &[]), job("j3", "1"));
        let mut lost = with(span("p5", "t5", None, "process", &[]), job("j1", "3"));
        lost.attributes.insert("jobstream.trace.context".into(), "missing".into());
        let mut failed_ack = span("a1", "t6", None, "settle", &[]);
        failed_ack.status = "error";
        failed_ack.links.push(("t1".into(), "p1".into()));
        let rules = Rules { max_spans_per_trace: 4, max_attempts: Some(1) };
        let report = check(&[send, again, unsettled, twice, astray, unsent, never_run, lost, failed_ack], &rules);
        let count = |v| report.violations.get(&v).copied().unwrap_or(0);
        assert_eq!(count(Violation::DuplicateSend), 1, "{report}");
        assert_eq!(count(Violation::DuplicateProcess), 1, "{report}");
        assert_eq!(count(Violation::Unsettled), 5, "a failed ack settles nothing: {report}");
        assert_eq!(count(Violation::Unprocessed), 1, "{report}");
        assert_eq!(count(Violation::LostContext), 1, "{report}");
        assert_eq!(count(Violation::WrongParent), 1, "{report}");
        assert_eq!(count(Violation::MissingSend), 1, "{report}");
        assert_eq!(count(Violation::Orphan), 1, "{report}");
        assert_eq!(count(Violation::OversizedTrace), 1, "{report}");
        assert_eq!(count(Violation::TooManyAttempts), 1, "j1 ran 3 attempts: {report}");
    }
}
