//! Property tests: no entry, however malformed, makes the decoder or the context extraction panic, and every
//! job the encoder writes decodes back to itself.

use jobstream::job::{field, Fields, Job};
use jobstream::propagation::{extract, ContextStatus, TraceHeaders};
use jobstream::{JobKind, Limits, Payload};
use opentelemetry::trace::TraceContextExt;
use proptest::prelude::*;

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(field::VERSION.to_owned()),
        Just(field::ID.to_owned()),
        Just(field::KIND.to_owned()),
        Just(field::PAYLOAD.to_owned()),
        Just(field::ENQUEUED_AT.to_owned()),
        Just(field::ATTEMPT.to_owned()),
        Just(field::TRACEPARENT.to_owned()),
        Just(field::TRACESTATE.to_owned()),
        Just(field::BAGGAGE.to_owned()),
        "[a-z.]{1,12}",
    ]
}

fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("{}".to_owned()),
        Just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        "[0-9a-f-]{0,60}",
        any::<String>(),
        "\\PC{0,300}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_fields_never_panics(fields in prop::collection::btree_map(field_name(), field_value(), 0..12)) {
        let _ = Job::from_fields(fields, &Limits::default());
    }

    #[test]
    fn extracting_arbitrary_trace_fields_never_panics(
        traceparent in prop::option::of(field_value()),
        tracestate in prop::option::of(field_value()),
        baggage in prop::option::of(field_value()),
    ) {
        let pairs: Vec<(&str, &str)> = [("traceparent", &traceparent), ("tracestate", &tracestate), ("baggage", &baggage)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect();
        let (cx, status) = extract(&TraceHeaders::from_pairs(pairs));
        // A context is continued exactly when it is valid.
        prop_assert_eq!(status == ContextStatus::Continued, cx.span().span_context().is_valid());
    }

    #[test]
    fn encoded_jobs_decode_to_themselves(
        kind in "[A-Za-z0-9._:-]{1,64}",
        payload in prop_oneof![
            Just(serde_json::json!({})),
            any::<i64>().prop_map(|n| serde_json::json!({"n": n})),
            "\\PC{0,50}".prop_map(|s| serde_json::json!([s])),
        ],
        attempt in 1u32..1000,
        extra in prop::collection::btree_map("x-[a-z]{1,8}", "\\PC{0,20}", 0..3),
    ) {
        let limits = Limits::default();
        let mut job = Job::new(JobKind::parse(&kind).unwrap(), Payload::from_value(&payload, &limits).unwrap());
        job.attempt = attempt;
        job.extra = extra;
        let fields: Fields = job.to_fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        prop_assert_eq!(Job::from_fields(fields, &limits).unwrap(), job);
    }
}
