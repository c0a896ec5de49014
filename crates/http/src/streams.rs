//! Reading streams over HTTP: from an offset, a timestamp, first, last or next (a
//! committed consumer-group offset), and committing and fetching named group offsets.

use axum::extract::State;
use axum::Json;
use ferrymq_core::stream::Stream;
use ferrymq_core::{QueueRef, StreamOffset};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Access, Auth};
use crate::convert::MessageJson;
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Records one read may return.
pub const READ_RECORDS_MAX: usize = 10_000;
/// Longest consumer-group name.
pub const GROUP_BYTES_MAX: usize = 255;

/// Where and how much to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// `first`, `last`, `next`, or an offset number (default `first`).
    #[serde(default)]
    pub offset: Option<String>,
    /// Start at the first record at or after this time (ms since epoch); overrides `offset`.
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
    /// Start at this consumer group's committed offset (falls back to `offset`).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub partition: u32,
    /// 1 to 10000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 10000)]
    pub max: Option<usize>,
    #[serde(default)]
    pub base64: bool,
}

/// A stream record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamRecordJson {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub message: MessageJson,
}

/// Records read, and where to continue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadResponse {
    pub records: Vec<StreamRecordJson>,
    /// The offset to read next.
    pub next_offset: u64,
    /// First retained offset and the offset the next append gets.
    pub first_offset: u64,
    pub end_offset: u64,
}

/// A stream by name.
pub fn stream(vh: &ferrymq_core::VHost, name: &str) -> ApiResult<Arc<Stream>> {
    match vh.queue(name) {
        Some(QueueRef::Stream(s)) => Ok(s),
        Some(QueueRef::Classic(_)) => Err(ApiError::conflict(
            "not_a_stream",
            format!("'{name}' is a queue, not a stream"),
        )),
        None => Err(ApiError::not_found(format!(
            "no stream '{name}' in vhost '{}'",
            vh.name
        ))),
    }
}

/// Checks a consumer-group name.
pub fn check_group(g: &str) -> ApiResult<()> {
    if g.is_empty() || g.len() > GROUP_BYTES_MAX || g.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::invalid(format!(
            "group names are 1 to {GROUP_BYTES_MAX} bytes, without '/' or control characters"
        )));
    }
    Ok(())
}

/// Parses `first`, `last`, `next` or a number.
pub fn parse_offset(s: &str) -> ApiResult<StreamOffset> {
    Ok(match s {
        "first" => StreamOffset::First,
        "last" => StreamOffset::Last,
        "next" => StreamOffset::Next,
        n => StreamOffset::Offset(n.parse().map_err(|_| {
            ApiError::invalid(format!(
                "offset must be first, last, next or a number, got {n:?}"
            ))
        })?),
    })
}

fn check_partition(s: &Stream, p: u32) -> ApiResult<()> {
    if p >= s.partition_count() {
        return Err(ApiError::not_found(format!(
            "stream '{}' has no partition {p} (it has {})",
            s.name(),
            s.partition_count()
        )));
    }
    Ok(())
}

/// Read records from a stream (non-destructive).
#[utoipa::path(get, path = "/api/streams/{vhost}/{name}/messages", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path), ReadQuery),
    responses((status = 200, body = ReadResponse), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn read(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult<Json<ReadResponse>> {
    let max = q.max.unwrap_or(100);
    if max == 0 || max > READ_RECORDS_MAX {
        return Err(ApiError::invalid(format!(
            "max must be 1 to {READ_RECORDS_MAX}"
        )));
    }
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let s = stream(&vh, &name)?;
    check_partition(&s, q.partition)?;
    let mut at = match (&q.timestamp_ms, &q.offset) {
        (Some(ts), _) => StreamOffset::Timestamp(*ts),
        (None, Some(o)) => parse_offset(o)?,
        (None, None) => StreamOffset::First,
    };
    if let Some(g) = &q.group {
        check_group(g)?;
        if let Some(o) = s.committed_offset(g, q.partition)? {
            at = StreamOffset::Offset(o);
        }
    }
    let from = s.resolve(q.partition, at)?;
    let records = s.read(q.partition, from, max)?;
    let (first_offset, end_offset) = s.bounds(q.partition)?;
    let next_offset = records
        .last()
        .map_or(from.max(first_offset), |r| r.offset + 1);
    Ok(Json(ReadResponse {
        records: records
            .into_iter()
            .map(|r| StreamRecordJson {
                partition: r.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                message: MessageJson::from_core(&r.message, q.base64),
            })
            .collect(),
        next_offset,
        first_offset,
        end_offset,
    }))
}

/// A group offset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OffsetJson {
    pub group: String,
    pub partition: u32,
    /// The next offset the group will read (absent: nothing committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// An offset to commit.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetCommit {
    /// The next offset to read.
    pub offset: u64,
    #[serde(default)]
    pub partition: u32,
}

/// Partition selector.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PartitionQuery {
    #[serde(default)]
    pub partition: u32,
}

/// Fetch a consumer group's committed offset.
#[utoipa::path(get, path = "/api/streams/{vhost}/{name}/offsets/{group}", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path), ("group" = String, Path), PartitionQuery),
    responses((status = 200, body = OffsetJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_offset(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name, group)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<PartitionQuery>,
) -> ApiResult<Json<OffsetJson>> {
    check_group(&group)?;
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let s = stream(&vh, &name)?;
    check_partition(&s, q.partition)?;
    let offset = s.committed_offset(&group, q.partition)?;
    Ok(Json(OffsetJson {
        group,
        partition: q.partition,
        offset,
    }))
}

/// Commit a consumer group's offset (durable before the answer).
#[utoipa::path(put, path = "/api/streams/{vhost}/{name}/offsets/{group}", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path), ("group" = String, Path)),
    request_body = OffsetCommit,
    responses((status = 200, body = OffsetJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn commit_offset(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name, group)): ApiPath<(String, String, String)>,
    ApiJson(c): ApiJson<OffsetCommit>,
) -> ApiResult<Json<OffsetJson>> {
    check_group(&group)?;
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let s = stream(&vh, &name)?;
    check_partition(&s, c.partition)?;
    let commit = s.commit_offset(&group, c.partition, c.offset)?;
    commit
        .await
        .map_err(|e| ApiError::from(ferrymq_core::CoreError::Storage(e)))?;
    Ok(Json(OffsetJson {
        group,
        partition: c.partition,
        offset: Some(c.offset),
    }))
}
