//! The consumers of a group: removing those that are gone.
//!
//! Redis keeps a consumer in its group until someone deletes it, so every worker that ever ran (each pod, each
//! restart, `<hostname>-<pid>`) stays listed in `XINFO CONSUMERS`, and in every tool that reads it, forever.
//! [`remove_idle`] removes the consumers idle past a bound **that hold no pending entry**: deleting a consumer
//! drops its pending entries with it, which would lose their jobs. The check and the delete are one script
//! (`lua/remove_idle_consumers.lua`), so an entry claimed by that consumer in between cannot be lost. A live
//! worker removed by mistake (paused longer than the bound with nothing pending) loses nothing: Redis adds it
//! back at its next read.

use std::sync::LazyLock;
use std::time::Duration;

use crate::keys::{GroupName, Keys};

static REMOVE_IDLE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/remove_idle_consumers.lua")));

/// Most consumers one call removes, so that one run stays short however many have piled up.
pub const REMOVE_AT_ONCE: usize = 100;

/// Removes from `group` up to [`REMOVE_AT_ONCE`] consumers idle for at least `min_idle` that hold no pending
/// entry, never `keep` (the caller's own name); returns the names removed. A missing stream or group removes
/// nothing.
pub async fn remove_idle(
    pool: &crate::connection::Pool,
    keys: &Keys,
    group: &GroupName,
    min_idle: Duration,
    keep: &str,
) -> crate::Result<Vec<String>> {
    let mut conn = pool.get().await?;
    Ok(REMOVE_IDLE
        .key(&keys.stream)
        .arg(group.as_str())
        .arg(min_idle.as_millis() as u64)
        .arg(keep)
        .arg(REMOVE_AT_ONCE)
        .invoke_async(&mut conn)
        .await?)
}
