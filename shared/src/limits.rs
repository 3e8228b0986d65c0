//! Size limits enforced by producers and consumers alike (`DESIGN.md` §2).

/// W3C Trace Context: at most 32 list members in `tracestate`.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;
/// W3C Trace Context: 512 characters is the length every vendor must be able to propagate.
pub const TRACESTATE_MAX_CHARS: usize = 512;
/// W3C Trace Context: when a `tracestate` must be cut, members longer than this go first.
pub const TRACESTATE_LONG_MEMBER_CHARS: usize = 128;
/// W3C Baggage: every platform must propagate at least 64 list members. OpenTelemetry's Rust SDK keeps no more
/// (some other SDKs keep 180), so a reader cuts to 64: what it says it kept is what the context carries.
pub const BAGGAGE_MAX_MEMBERS: usize = 64;
/// W3C Baggage: 8192 bytes is the size every platform must propagate; past it, members may be dropped.
pub const BAGGAGE_MAX_BYTES: usize = 8192;
/// Default limit on a job's JSON payload.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Limits on what one job may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES }
    }
}
