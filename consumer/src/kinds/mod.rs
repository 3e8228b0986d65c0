//! The job kinds the consumer ships: `demo` (the seed's four steps), `noop` (load tests) and `fanout`
//! (follow-up jobs: a multi-hop trace). Each records its completion in the queue's `done` hash
//! ([`jobstream::results`]) so a run can be checked for lost and duplicated jobs.

pub mod demo;
pub mod fanout;
pub mod noop;
