//! Tests of the group coordinator, under a paused tokio clock (no sleeps-and-hope).
//!
//! Requests that wait run in spawned tasks; `settle` lets every runnable task run
//! without advancing the paused clock, and `advance` moves time explicitly, so every
//! expiry happens exactly when a test says.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::task::JoinHandle;
use tokio::time::{advance, Duration};

use super::{GroupConfig, GroupCoordinator, GroupState};

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const JOIN_V: i16 = 9;
const SYNC_V: i16 = 5;
const HB_V: i16 = 4;

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn coordinator_with(config: GroupConfig) -> Arc<GroupCoordinator> {
    Arc::new(GroupCoordinator::new(config))
}

fn coordinator() -> Arc<GroupCoordinator> {
    coordinator_with(GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    })
}

/// Lets every runnable task run; the paused clock does not move.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn tick(ms: u64) {
    advance(Duration::from_millis(ms)).await;
    settle().await;
}

async fn done<T>(handle: JoinHandle<T>) -> T {
    settle().await;
    assert!(handle.is_finished(), "the request is still waiting");
    handle.await.expect("request task")
}

fn join_req(
    group: &str,
    member_id: &StrBytes,
    protocols: &[(&str, &'static [u8])],
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(member_id.clone())
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(REBALANCE_MS)
        .with_protocol_type(s("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|(name, metadata)| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(name))
                        .with_metadata(Bytes::from_static(metadata))
                })
                .collect(),
        )
}

const RANGE: &[(&str, &[u8])] = &[("range", b"meta")];

fn spawn_join(
    c: &Arc<GroupCoordinator>,
    req: JoinGroupRequest,
    version: i16,
) -> JoinHandle<JoinGroupResponse> {
    let c = Arc::clone(c);
    tokio::spawn(async move { c.join_group(req, version, "client-1", "/10.0.0.1").await })
}

fn sync_req(
    group: &str,
    generation: i32,
    member_id: &StrBytes,
    assignments: &[(&StrBytes, &str)],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(member_id.clone())
        .with_assignments(
            assignments
                .iter()
                .map(|(id, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id((*id).clone())
                        .with_assignment(Bytes::from(a.to_string()))
                })
                .collect(),
        )
}

fn spawn_sync(c: &Arc<GroupCoordinator>, req: SyncGroupRequest) -> JoinHandle<SyncGroupResponse> {
    let c = Arc::clone(c);
    tokio::spawn(async move { c.sync_group(req, SYNC_V).await })
}

fn heartbeat(c: &GroupCoordinator, group: &str, generation: i32, member_id: &StrBytes) -> i16 {
    c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(member_id.clone()),
        HB_V,
    )
    .error_code
}

/// The MEMBER_ID_REQUIRED round: returns the member id handed out.
async fn new_member_id(c: &GroupCoordinator, group: &str) -> StrBytes {
    let resp = c
        .join_group(
            join_req(group, &StrBytes::new(), RANGE),
            JOIN_V,
            "client-1",
            "/10.0.0.1",
        )
        .await;
    assert_eq!(resp.error_code, ResponseError::MemberIdRequired.code());
    assert!(!resp.member_id.is_empty());
    resp.member_id
}

/// Forms a Stable group of `n` dynamic members; returns (generation, member ids in
/// join order, leader).
async fn stable_group(
    c: &Arc<GroupCoordinator>,
    group: &str,
    n: usize,
) -> (i32, Vec<StrBytes>, StrBytes) {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(new_member_id(c, group).await);
    }
    let handles: Vec<_> = ids
        .iter()
        .map(|id| spawn_join(c, join_req(group, id, RANGE), JOIN_V))
        .collect();
    let mut responses = Vec::new();
    for h in handles {
        responses.push(done(h).await);
    }
    let generation = responses[0].generation_id;
    let leader = responses[0].leader.clone();
    for r in &responses {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, generation);
        assert_eq!(r.leader, leader);
    }
    let assignments: Vec<(StrBytes, String)> = ids
        .iter()
        .map(|id| (id.clone(), format!("assign-{id}")))
        .collect();
    let refs: Vec<(&StrBytes, &str)> = assignments.iter().map(|(id, a)| (id, a.as_str())).collect();
    let mut syncs = Vec::new();
    for id in &ids {
        let a = if *id == leader {
            refs.clone()
        } else {
            Vec::new()
        };
        syncs.push(spawn_sync(c, sync_req(group, generation, id, &a)));
    }
    for (id, h) in ids.iter().zip(syncs) {
        let r = done(h).await;
        assert_eq!(r.error_code, 0);
        assert_eq!(r.assignment, Bytes::from(format!("assign-{id}")));
    }
    assert_eq!(c.group_state(group), Some(GroupState::Stable));
    (generation, ids, leader)
}

#[tokio::test(start_paused = true)]
async fn single_member_join_sync_stable() {
    let c = coordinator();
    let id = new_member_id(&c, "g").await;
    assert!(id.starts_with("client-1-"), "{id}");
    let resp = done(spawn_join(&c, join_req("g", &id, RANGE), JOIN_V)).await;
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.generation_id, 1);
    assert_eq!(resp.leader, id);
    assert_eq!(resp.member_id, id);
    assert_eq!(resp.protocol_type, Some(s("consumer")));
    assert_eq!(resp.protocol_name, Some(s("range")));
    assert_eq!(resp.members.len(), 1);
    assert_eq!(resp.members[0].metadata, Bytes::from_static(b"meta"));
    assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));

    let sync = done(spawn_sync(&c, sync_req("g", 1, &id, &[(&id, "A")]))).await;
    assert_eq!(sync.error_code, 0);
    assert_eq!(sync.assignment, Bytes::from_static(b"A"));
    assert_eq!(sync.protocol_type, Some(s("consumer")));
    assert_eq!(sync.protocol_name, Some(s("range")));
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    assert_eq!(heartbeat(&c, "g", 1, &id), 0);
    // Sessions are kept alive by heartbeats.
    for _ in 0..5 {
        tick(5_000).await;
        assert_eq!(heartbeat(&c, "g", 1, &id), 0);
    }
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
}

#[tokio::test(start_paused = true)]
async fn member_id_required_round_and_old_versions() {
    let c = coordinator();
    // v4+: the first join only hands out an id; the group has no member yet.
    let id = new_member_id(&c, "g").await;
    assert_eq!(c.groups()[0].members, 0);
    // An id the coordinator never handed out is unknown.
    let resp = done(spawn_join(&c, join_req("g", &s("made-up"), RANGE), JOIN_V)).await;
    assert_eq!(resp.error_code, ResponseError::UnknownMemberId.code());
    // v3 and below join in one round.
    let old = done(spawn_join(&c, join_req("g2", &StrBytes::new(), RANGE), 3)).await;
    assert_eq!(old.error_code, 0);
    assert_eq!(old.generation_id, 1);
    assert_eq!(old.leader, old.member_id);
    // The handed-out id expires after the session timeout if unused.
    tick(SESSION_MS as u64 + 1).await;
    let resp = done(spawn_join(&c, join_req("g", &id, RANGE), JOIN_V)).await;
    assert_eq!(resp.error_code, ResponseError::UnknownMemberId.code());
    // Empty group id.
    let resp = done(spawn_join(
        &c,
        join_req("", &StrBytes::new(), RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(resp.error_code, ResponseError::InvalidGroupId.code());
    // Session timeout out of range.
    let resp = done(spawn_join(
        &c,
        join_req("g", &StrBytes::new(), RANGE).with_session_timeout_ms(10),
        JOIN_V,
    ))
    .await;
    assert_eq!(resp.error_code, ResponseError::InvalidSessionTimeout.code());
}

#[tokio::test(start_paused = true)]
async fn two_members_share_generation_and_leader_assignment_reaches_follower() {
    let c = coordinator();
    let a = new_member_id(&c, "g").await;
    let b = new_member_id(&c, "g").await;
    let ja = spawn_join(&c, join_req("g", &a, RANGE), JOIN_V);
    settle().await;
    // b's handed-out id is pending: the rebalance waits for it.
    assert!(!ja.is_finished());
    let jb = spawn_join(&c, join_req("g", &b, RANGE), JOIN_V);
    let (ra, rb) = (done(ja).await, done(jb).await);
    assert_eq!((ra.error_code, rb.error_code), (0, 0));
    assert_eq!(ra.generation_id, rb.generation_id);
    assert_eq!(ra.leader, a);
    assert_eq!(rb.leader, a);
    assert_eq!(ra.members.len(), 2);
    assert!(rb.members.is_empty());

    // The follower syncs first and waits for the leader.
    let sb = spawn_sync(&c, sync_req("g", rb.generation_id, &b, &[]));
    settle().await;
    assert!(!sb.is_finished());
    let sa = spawn_sync(
        &c,
        sync_req("g", ra.generation_id, &a, &[(&a, "for-a"), (&b, "for-b")]),
    );
    assert_eq!(done(sa).await.assignment, Bytes::from_static(b"for-a"));
    assert_eq!(done(sb).await.assignment, Bytes::from_static(b"for-b"));
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
}

#[tokio::test(start_paused = true)]
async fn third_member_triggers_rebalance() {
    let c = coordinator();
    let (generation, ids, leader) = stable_group(&c, "g", 2).await;
    let third = new_member_id(&c, "g").await;
    let jc = spawn_join(&c, join_req("g", &third, RANGE), JOIN_V);
    settle().await;
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert!(!jc.is_finished());
    for id in &ids {
        assert_eq!(
            heartbeat(&c, "g", generation, id),
            ResponseError::RebalanceInProgress.code()
        );
    }
    // SyncGroup and offset commits of the old generation are refused meanwhile.
    let sync = done(spawn_sync(&c, sync_req("g", generation, &ids[0], &[]))).await;
    assert_eq!(sync.error_code, ResponseError::RebalanceInProgress.code());
    let j0 = spawn_join(&c, join_req("g", &ids[0], RANGE), JOIN_V);
    settle().await;
    assert!(!j0.is_finished());
    let j1 = spawn_join(&c, join_req("g", &ids[1], RANGE), JOIN_V);
    let responses = [done(j0).await, done(j1).await, done(jc).await];
    for r in &responses {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, generation + 1);
        assert_eq!(r.leader, leader);
    }
    assert_eq!(
        responses.iter().filter(|r| !r.members.is_empty()).count(),
        1
    );
    assert_eq!(c.groups()[0].members, 3);
}

#[tokio::test(start_paused = true)]
async fn session_timeout_removes_silent_member_and_rebalances() {
    let c = coordinator();
    let (generation, ids, _) = stable_group(&c, "g", 2).await;
    let (alive, silent) = (&ids[0], &ids[1]);
    tick(4_000).await;
    assert_eq!(heartbeat(&c, "g", generation, alive), 0);
    tick(4_000).await;
    assert_eq!(heartbeat(&c, "g", generation, alive), 0);
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    tick(2_001).await;
    // The silent member's session (10 s) ran out.
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        heartbeat(&c, "g", generation, alive),
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        heartbeat(&c, "g", generation, silent),
        ResponseError::UnknownMemberId.code()
    );
    let r = done(spawn_join(&c, join_req("g", alive, RANGE), JOIN_V)).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.leader, *alive);
    assert_eq!(r.members.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn rebalance_timeout_removes_member_that_did_not_rejoin() {
    let c = coordinator();
    let (generation, ids, _) = stable_group(&c, "g", 2).await;
    let third = new_member_id(&c, "g").await;
    let jc = spawn_join(&c, join_req("g", &third, RANGE), JOIN_V);
    let j0 = spawn_join(&c, join_req("g", &ids[0], RANGE), JOIN_V);
    settle().await;
    // ids[1] keeps heartbeating but never rejoins.
    for _ in 0..5 {
        tick(5_000).await;
        assert_eq!(
            heartbeat(&c, "g", generation, &ids[1]),
            ResponseError::RebalanceInProgress.code()
        );
    }
    assert!(!j0.is_finished());
    tick(5_000).await; // 30 s: the rebalance timeout
    let (r0, rc) = (done(j0).await, done(jc).await);
    assert_eq!(r0.generation_id, generation + 1);
    assert_eq!(rc.generation_id, generation + 1);
    let leader_members = if r0.members.is_empty() {
        &rc.members
    } else {
        &r0.members
    };
    assert_eq!(leader_members.len(), 2);
    assert_eq!(
        heartbeat(&c, "g", generation + 1, &ids[1]),
        ResponseError::UnknownMemberId.code()
    );
}

#[tokio::test(start_paused = true)]
async fn leave_group_rebalances_then_empties_group() {
    let c = coordinator();
    let (generation, ids, _) = stable_group(&c, "g", 2).await;
    let resp = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![
                MemberIdentity::default().with_member_id(ids[1].clone()),
                MemberIdentity::default().with_member_id(s("nobody")),
            ]),
        5,
    );
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.members[0].error_code, 0);
    assert_eq!(
        resp.members[1].error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        heartbeat(&c, "g", generation, &ids[0]),
        ResponseError::RebalanceInProgress.code()
    );
    let r = done(spawn_join(&c, join_req("g", &ids[0], RANGE), JOIN_V)).await;
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.members.len(), 1);
    // v0 leave of the last member: the group becomes Empty in a new generation.
    let resp = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(ids[0].clone()),
        0,
    );
    assert_eq!(resp.error_code, 0);
    assert_eq!(c.group_state("g"), Some(GroupState::Empty));
    assert_eq!(c.groups()[0].generation_id, generation + 2);
    let resp = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(ids[0].clone()),
        1,
    );
    assert_eq!(resp.error_code, ResponseError::UnknownMemberId.code());
}

fn static_join(
    group: &str,
    member_id: &StrBytes,
    instance: &str,
    protocols: &[(&str, &'static [u8])],
) -> JoinGroupRequest {
    join_req(group, member_id, protocols).with_group_instance_id(Some(s(instance)))
}

#[tokio::test(start_paused = true)]
async fn static_member_rejoins_without_rebalance_and_old_id_is_fenced() {
    let c = coordinator_with(GroupConfig::default()); // initial delay 3 s
                                                      // A dynamic leader, then a static follower (static members skip MEMBER_ID_REQUIRED).
    let leader = new_member_id(&c, "g").await;
    let jl = spawn_join(&c, join_req("g", &leader, RANGE), JOIN_V);
    settle().await;
    let js = spawn_join(
        &c,
        static_join("g", &StrBytes::new(), "instance-1", RANGE),
        JOIN_V,
    );
    settle().await;
    // The static member joined during the initial delay, which extends it once.
    tick(3_000).await;
    tick(3_000).await;
    let (rl, rs) = (done(jl).await, done(js).await);
    assert_eq!(rs.error_code, 0);
    let old_id = rs.member_id.clone();
    assert!(old_id.starts_with("instance-1-"));
    let generation = rl.generation_id;
    let ss = spawn_sync(&c, sync_req("g", generation, &old_id, &[]));
    let sl = spawn_sync(
        &c,
        sync_req("g", generation, &leader, &[(&leader, "L"), (&old_id, "S")]),
    );
    assert_eq!(done(sl).await.error_code, 0);
    assert_eq!(done(ss).await.assignment, Bytes::from_static(b"S"));

    // The static member restarts: new member id, same metadata, no rebalance.
    let r = done(spawn_join(
        &c,
        static_join("g", &StrBytes::new(), "instance-1", RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(r.error_code, 0);
    assert_ne!(r.member_id, old_id);
    assert_eq!(r.generation_id, generation);
    assert_eq!(r.leader, leader);
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
    let new_id = r.member_id;
    let sync = done(spawn_sync(
        &c,
        sync_req("g", generation, &new_id, &[]).with_group_instance_id(Some(s("instance-1"))),
    ))
    .await;
    assert_eq!(sync.assignment, Bytes::from_static(b"S"));

    // The old incarnation is fenced.
    let hb = c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(old_id.clone())
            .with_group_instance_id(Some(s("instance-1"))),
        HB_V,
    );
    assert_eq!(hb.error_code, ResponseError::FencedInstanceId.code());
    let rejoin = done(spawn_join(
        &c,
        static_join("g", &old_id, "instance-1", RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(rejoin.error_code, ResponseError::FencedInstanceId.code());
    assert_eq!(
        c.validate_commit("g", generation, &old_id, Some("instance-1")),
        Err(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        c.validate_commit("g", generation, &new_id, Some("instance-1")),
        Ok(())
    );
    assert_eq!(heartbeat(&c, "g", generation, &leader), 0);

    // A restart with changed metadata does rebalance.
    let js = spawn_join(
        &c,
        static_join(
            "g",
            &StrBytes::new(),
            "instance-1",
            &[("range", b"changed")],
        ),
        JOIN_V,
    );
    settle().await;
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    let jl = spawn_join(&c, join_req("g", &leader, RANGE), JOIN_V);
    let (rs, rl) = (done(js).await, done(jl).await);
    assert_eq!(rs.generation_id, generation + 1);
    assert_eq!(rl.members.len(), 2);

    // Administrative removal by instance id.
    let resp = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![
                MemberIdentity::default().with_group_instance_id(Some(s("instance-1")))
            ]),
        4,
    );
    assert_eq!(resp.members[0].error_code, 0);
    assert_eq!(c.groups()[0].members, 1);
}

#[tokio::test(start_paused = true)]
async fn static_leader_rejoin_skips_assignment_from_v9() {
    let c = coordinator();
    let r = done(spawn_join(
        &c,
        static_join("g", &StrBytes::new(), "i-lead", RANGE),
        JOIN_V,
    ))
    .await;
    let old = r.member_id.clone();
    assert_eq!(r.leader, old);
    assert_eq!(
        done(spawn_sync(&c, sync_req("g", 1, &old, &[(&old, "X")])))
            .await
            .error_code,
        0
    );
    // v8: the old leader id comes back, so the member does not compute an assignment.
    let r8 = done(spawn_join(
        &c,
        static_join("g", &StrBytes::new(), "i-lead", RANGE),
        8,
    ))
    .await;
    assert_eq!(r8.error_code, 0);
    assert_eq!(r8.leader, old);
    assert!(r8.members.is_empty());
    // v9: it is told it leads, with the members, and to skip the assignment.
    let r9 = done(spawn_join(
        &c,
        static_join("g", &StrBytes::new(), "i-lead", RANGE),
        9,
    ))
    .await;
    assert_eq!(r9.leader, r9.member_id);
    assert!(r9.skip_assignment);
    assert_eq!(r9.members.len(), 1);
    assert_eq!(r9.generation_id, 1);
    let sync = done(spawn_sync(&c, sync_req("g", 1, &r9.member_id, &[]))).await;
    assert_eq!(sync.assignment, Bytes::from_static(b"X"));
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));
}

#[tokio::test(start_paused = true)]
async fn delete_groups_only_deletes_empty_groups() {
    let c = coordinator();
    let (_, ids, _) = stable_group(&c, "busy", 1).await;
    assert_eq!(c.validate_commit("idle", -1, "", None), Ok(()));
    assert_eq!(c.group_state("idle"), Some(GroupState::Empty));
    let resp = c.delete_groups(
        DeleteGroupsRequest::default().with_groups_names(vec![
            GroupId(s("busy")),
            GroupId(s("idle")),
            GroupId(s("unknown")),
            GroupId(s("")),
        ]),
        2,
    );
    let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            ResponseError::NonEmptyGroup.code(),
            0,
            ResponseError::GroupIdNotFound.code(),
            ResponseError::InvalidGroupId.code()
        ]
    );
    assert_eq!(c.group_state("idle"), None);
    assert_eq!(c.group_state("busy"), Some(GroupState::Stable));
    let _ = ids;
}

#[tokio::test(start_paused = true)]
async fn validate_commit_follows_kafka() {
    let c = coordinator();
    assert_eq!(
        c.validate_commit("", -1, "", None),
        Err(ResponseError::InvalidGroupId)
    );
    // Unknown group: a simple commit is allowed, a generation is not.
    assert_eq!(
        c.validate_commit("nogroup", 3, "m", None),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(c.validate_commit("simple", -1, "", None), Ok(()));
    assert_eq!(c.validate_commit("simple", -1, "", None), Ok(()));

    let (generation, ids, _) = stable_group(&c, "g", 1).await;
    assert_eq!(c.validate_commit("g", generation, &ids[0], None), Ok(()));
    assert_eq!(
        c.validate_commit("g", generation + 1, &ids[0], None),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.validate_commit("g", generation, "stranger", None),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.validate_commit("g", -1, "", None),
        Err(ResponseError::UnknownMemberId)
    );

    // PreparingRebalance: the old generation may still commit.
    let newcomer = new_member_id(&c, "g").await;
    let jn = spawn_join(&c, join_req("g", &newcomer, RANGE), JOIN_V);
    settle().await;
    assert_eq!(c.validate_commit("g", generation, &ids[0], None), Ok(()));
    // CompletingRebalance: not until the assignment is known.
    let j0 = spawn_join(&c, join_req("g", &ids[0], RANGE), JOIN_V);
    let (_, r0) = (done(jn).await, done(j0).await);
    assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));
    assert_eq!(
        c.validate_commit("g", r0.generation_id, &ids[0], None),
        Err(ResponseError::RebalanceInProgress)
    );
}

#[tokio::test(start_paused = true)]
async fn protocol_selection_by_votes_among_common_protocols() {
    let c = coordinator();
    let members: [&[(&str, &[u8])]; 3] = [
        &[("range", b"r1"), ("sticky", b"s1")],
        &[("sticky", b"s2"), ("range", b"r2"), ("roundrobin", b"rr2")],
        &[("roundrobin", b"rr3"), ("sticky", b"s3"), ("range", b"r3")],
    ];
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(new_member_id(&c, "g").await);
    }
    let handles: Vec<_> = ids
        .iter()
        .zip(members)
        .map(|(id, p)| spawn_join(&c, join_req("g", id, p), JOIN_V))
        .collect();
    let mut responses = Vec::new();
    for h in handles {
        responses.push(done(h).await);
    }
    // Common: range and sticky. Votes: range 1, sticky 2 (roundrobin is not common).
    for r in &responses {
        assert_eq!(r.protocol_name, Some(s("sticky")));
    }
    let leader = &responses[0];
    let metadata: Vec<&[u8]> = leader.members.iter().map(|m| m.metadata.as_ref()).collect();
    assert_eq!(metadata, vec![&b"s1"[..], b"s2", b"s3"]);

    // A member sharing no protocol with the group, or of another type, is refused.
    let stranger = done(spawn_join(
        &c,
        join_req("g", &StrBytes::new(), &[("other", b"")]),
        JOIN_V,
    ))
    .await;
    assert_eq!(
        stranger.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let connect = done(spawn_join(
        &c,
        join_req("g", &StrBytes::new(), RANGE).with_protocol_type(s("connect")),
        JOIN_V,
    ))
    .await;
    assert_eq!(
        connect.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let none = done(spawn_join(
        &c,
        join_req("g2", &StrBytes::new(), &[]),
        JOIN_V,
    ))
    .await;
    assert_eq!(
        none.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // The failed join did not leave an empty group behind.
    assert_eq!(c.group_state("g2"), None);

    // SyncGroup v5 checks the protocol type and name.
    let generation = leader.generation_id;
    let bad = done(spawn_sync(
        &c,
        sync_req("g", generation, &ids[0], &[]).with_protocol_name(Some(s("range"))),
    ))
    .await;
    assert_eq!(
        bad.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let bad = done(spawn_sync(
        &c,
        sync_req("g", generation, &ids[0], &[]).with_protocol_type(Some(s("connect"))),
    ))
    .await;
    assert_eq!(
        bad.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
}

#[tokio::test(start_paused = true)]
async fn tie_goes_to_the_first_members_choice() {
    let c = coordinator();
    let a = new_member_id(&c, "g").await;
    let b = new_member_id(&c, "g").await;
    let ja = spawn_join(&c, join_req("g", &a, &[("x", b""), ("y", b"")]), JOIN_V);
    let jb = spawn_join(&c, join_req("g", &b, &[("y", b""), ("x", b"")]), JOIN_V);
    assert_eq!(done(ja).await.protocol_name, Some(s("x")));
    assert_eq!(done(jb).await.protocol_name, Some(s("x")));
}

#[tokio::test(start_paused = true)]
async fn dropped_join_future_does_not_wedge_the_group() {
    let c = coordinator();
    let a = new_member_id(&c, "g").await;
    let b = new_member_id(&c, "g").await;
    let ja = spawn_join(&c, join_req("g", &a, RANGE), JOIN_V);
    settle().await;
    // a's connection closes while its JoinGroup waits.
    ja.abort();
    settle().await;
    let rb = done(spawn_join(&c, join_req("g", &b, RANGE), JOIN_V)).await;
    assert_eq!(rb.error_code, 0);
    assert_eq!(rb.leader, a);
    // b waits for a leader that is gone.
    let sb = spawn_sync(&c, sync_req("g", rb.generation_id, &b, &[]));
    for _ in 0..2 {
        tick(4_000).await;
        assert_eq!(heartbeat(&c, "g", rb.generation_id, &b), 0);
    }
    tick(2_001).await;
    // a's session expired (10 s): b is told to rejoin.
    assert_eq!(
        heartbeat(&c, "g", rb.generation_id, &b),
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        done(sb).await.error_code,
        ResponseError::RebalanceInProgress.code()
    );
    let rb2 = done(spawn_join(&c, join_req("g", &b, RANGE), JOIN_V)).await;
    assert_eq!(rb2.generation_id, rb.generation_id + 1);
    assert_eq!(rb2.leader, b);
    let sync = done(spawn_sync(
        &c,
        sync_req("g", rb2.generation_id, &b, &[(&b, "all")]),
    ))
    .await;
    assert_eq!(sync.assignment, Bytes::from_static(b"all"));
    assert_eq!(c.group_state("g"), Some(GroupState::Stable));

    // A dropped SyncGroup is harmless too: the next one gets the assignment.
    let (generation, ids, _) = stable_group(&c, "h", 2).await;
    let j0 = spawn_join(&c, join_req("h", &ids[0], &[("range", b"v2")]), JOIN_V);
    let j1 = spawn_join(&c, join_req("h", &ids[1], RANGE), JOIN_V);
    let (r0, r1) = (done(j0).await, done(j1).await);
    assert_eq!(r0.generation_id, generation + 1);
    let follower = if r0.leader == ids[0] {
        &ids[1]
    } else {
        &ids[0]
    };
    let leader = &r0.leader;
    let sf = spawn_sync(&c, sync_req("h", r1.generation_id, follower, &[]));
    settle().await;
    sf.abort();
    settle().await;
    let sl = done(spawn_sync(
        &c,
        sync_req("h", r1.generation_id, leader, &[(follower, "F")]),
    ))
    .await;
    assert_eq!(sl.error_code, 0);
    let again = done(spawn_sync(
        &c,
        sync_req("h", r1.generation_id, follower, &[]),
    ))
    .await;
    assert_eq!(again.assignment, Bytes::from_static(b"F"));
}

#[tokio::test(start_paused = true)]
async fn initial_rebalance_delay_waits_and_extends_for_new_members() {
    let c = coordinator_with(GroupConfig::default()); // 3000 ms
    let a = new_member_id(&c, "g").await;
    let ja = spawn_join(&c, join_req("g", &a, RANGE), JOIN_V);
    settle().await;
    tick(2_000).await;
    assert!(!ja.is_finished());
    let b = new_member_id(&c, "g").await;
    let jb = spawn_join(&c, join_req("g", &b, RANGE), JOIN_V);
    settle().await;
    tick(1_000).await;
    // b arrived during the delay: it is extended by another 3 s.
    assert!(!ja.is_finished());
    tick(2_999).await;
    assert!(!ja.is_finished());
    tick(1).await;
    let (ra, rb) = (done(ja).await, done(jb).await);
    assert_eq!(ra.generation_id, 1);
    assert_eq!(rb.generation_id, 1);
    assert_eq!(ra.members.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn group_size_is_bounded() {
    let c = coordinator_with(GroupConfig {
        initial_rebalance_delay_ms: 0,
        group_members_max: 2,
        ..GroupConfig::default()
    });
    stable_group(&c, "g", 2).await;
    let resp = done(spawn_join(
        &c,
        join_req("g", &StrBytes::new(), RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(resp.error_code, ResponseError::GroupMaxSizeReached.code());
    // Handed-out ids count too.
    new_member_id(&c, "h").await;
    new_member_id(&c, "h").await;
    let resp = done(spawn_join(
        &c,
        join_req("h", &StrBytes::new(), RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(resp.error_code, ResponseError::GroupMaxSizeReached.code());

    let c = coordinator_with(GroupConfig {
        initial_rebalance_delay_ms: 0,
        groups_max: 1,
        ..GroupConfig::default()
    });
    new_member_id(&c, "one").await;
    let resp = done(spawn_join(
        &c,
        join_req("two", &StrBytes::new(), RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(
        resp.error_code,
        ResponseError::CoordinatorNotAvailable.code()
    );
    assert_eq!(
        c.register_group("two"),
        Err(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(c.register_group("one"), Ok(()));

    // A full group still takes back a restarting static member.
    let c = coordinator_with(GroupConfig {
        initial_rebalance_delay_ms: 0,
        group_members_max: 1,
        ..GroupConfig::default()
    });
    let first = done(spawn_join(
        &c,
        static_join("s", &StrBytes::new(), "i", RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(first.error_code, 0);
    assert_eq!(
        done(spawn_sync(&c, sync_req("s", 1, &first.member_id, &[])))
            .await
            .error_code,
        0
    );
    let again = done(spawn_join(
        &c,
        static_join("s", &StrBytes::new(), "i", RANGE),
        JOIN_V,
    ))
    .await;
    assert_eq!(again.error_code, 0);
    assert_ne!(again.member_id, first.member_id);
}

#[tokio::test(start_paused = true)]
async fn sync_and_heartbeat_errors() {
    let c = coordinator();
    let (generation, ids, leader) = stable_group(&c, "g", 2).await;
    let sync =
        |generation, member: &StrBytes| spawn_sync(&c, sync_req("g", generation, member, &[]));
    assert_eq!(
        done(sync(generation + 7, &leader)).await.error_code,
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        done(sync(generation, &s("who"))).await.error_code,
        ResponseError::UnknownMemberId.code()
    );
    let unknown_group = done(spawn_sync(&c, sync_req("nope", 1, &leader, &[]))).await;
    assert_eq!(
        unknown_group.error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        heartbeat(&c, "g", generation + 1, &ids[0]),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&c, "g", generation, &s("who")),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        heartbeat(&c, "", generation, &ids[0]),
        ResponseError::InvalidGroupId.code()
    );
    assert_eq!(
        heartbeat(&c, "nope", generation, &ids[0]),
        ResponseError::UnknownMemberId.code()
    );
}

#[tokio::test(start_paused = true)]
async fn describe_and_list_groups() {
    let c = coordinator();
    let (generation, ids, leader) = stable_group(&c, "g", 2).await;
    assert_eq!(c.validate_commit("offsets-only", -1, "", None), Ok(()));
    let resp = c.describe_groups(
        DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(s("g")), GroupId(s("missing"))])
            .with_include_authorized_operations(true),
        5,
    );
    let g = &resp.groups[0];
    assert_eq!(g.error_code, 0);
    assert_eq!(g.group_state, s("Stable"));
    assert_eq!(g.protocol_type, s("consumer"));
    assert_eq!(g.protocol_data, s("range"));
    assert_ne!(g.authorized_operations, i32::MIN);
    assert_eq!(g.members.len(), 2);
    for m in &g.members {
        assert_eq!(m.client_id, s("client-1"));
        assert_eq!(m.client_host, s("/10.0.0.1"));
        assert_eq!(m.member_metadata, Bytes::from_static(b"meta"));
        assert_eq!(
            m.member_assignment,
            Bytes::from(format!("assign-{}", m.member_id))
        );
    }
    assert_eq!(resp.groups[1].error_code, 0);
    assert_eq!(resp.groups[1].group_state, s("Dead"));
    let v6 = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![GroupId(s("missing"))]),
        6,
    );
    assert_eq!(
        v6.groups[0].error_code,
        ResponseError::GroupIdNotFound.code()
    );

    let all = c.list_groups(ListGroupsRequest::default(), 4);
    let names: Vec<&str> = all.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(names, vec!["g", "offsets-only"]);
    let empty = c.list_groups(
        ListGroupsRequest::default().with_states_filter(vec![s("empty")]),
        4,
    );
    assert_eq!(empty.groups.len(), 1);
    assert_eq!(empty.groups[0].group_id, GroupId(s("offsets-only")));
    assert_eq!(empty.groups[0].group_state, s("Empty"));
    let consumer = c.list_groups(
        ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        5,
    );
    assert!(consumer.groups.is_empty());
    let classic = c.list_groups(
        ListGroupsRequest::default().with_types_filter(vec![s("Classic")]),
        5,
    );
    assert_eq!(classic.groups.len(), 2);
    let _ = (generation, ids, leader);
}

/// Every response the wire layer builds encodes at every version it can be asked for.
#[tokio::test(start_paused = true)]
async fn responses_encode_at_every_version() {
    fn encodes<T: Encodable>(value: &T, version: i16) {
        let mut buf = BytesMut::new();
        if let Err(e) = value.encode(&mut buf, version) {
            panic!("v{version}: {e}");
        }
    }
    let c = coordinator();
    let (generation, ids, leader) = stable_group(&c, "g", 2).await;
    for version in 0..=9 {
        let r = done(spawn_join(&c, join_req("g", &ids[1], RANGE), version)).await;
        encodes(&r, version);
        let group = format!("x{version}");
        let r = done(spawn_join(
            &c,
            join_req(&group, &StrBytes::new(), RANGE),
            version,
        ))
        .await;
        encodes(&r, version);
    }
    for version in 0..=5 {
        let r = done(spawn_sync(&c, sync_req("g", generation, &leader, &[]))).await;
        encodes(&r, version);
    }
    for version in 0..=4 {
        encodes(
            &c.heartbeat(
                HeartbeatRequest::default().with_group_id(GroupId(s("g"))),
                version,
            ),
            version,
        );
    }
    for version in 0..=6 {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(s("g")), GroupId(s("missing"))])
            .with_include_authorized_operations(version >= 3);
        encodes(&c.describe_groups(req, version), version);
    }
    for version in 0..=5 {
        encodes(
            &c.list_groups(ListGroupsRequest::default(), version),
            version,
        );
    }
    for version in 0..=2 {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]);
        encodes(&c.delete_groups(req, version), version);
    }
    for version in 0..=5 {
        let req = if version < 3 {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_member_id(s("nobody"))
        } else {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_members(vec![MemberIdentity::default().with_member_id(s("nobody"))])
        };
        encodes(&c.leave_group(req, version), version);
    }
}

#[tokio::test(start_paused = true)]
async fn lost_join_response_is_answered_again_during_completing_rebalance() {
    let c = coordinator();
    let a = new_member_id(&c, "g").await;
    let b = new_member_id(&c, "g").await;
    let ja = spawn_join(&c, join_req("g", &a, RANGE), JOIN_V);
    let jb = spawn_join(&c, join_req("g", &b, RANGE), JOIN_V);
    let (ra, rb) = (done(ja).await, done(jb).await);
    assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));
    // Heartbeats are fine while the leader computes the assignment.
    assert_eq!(heartbeat(&c, "g", ra.generation_id, &b), 0);
    // Same metadata: the same answer, no new rebalance.
    let again = done(spawn_join(&c, join_req("g", &b, RANGE), JOIN_V)).await;
    assert_eq!(again.error_code, 0);
    assert_eq!(again.generation_id, rb.generation_id);
    assert_eq!(again.leader, a);
    let leader_again = done(spawn_join(&c, join_req("g", &a, RANGE), JOIN_V)).await;
    assert_eq!(leader_again.members.len(), 2);
    assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));
    // Changed metadata: a new rebalance; the follower waiting in SyncGroup must rejoin.
    let sb = spawn_sync(&c, sync_req("g", rb.generation_id, &b, &[]));
    settle().await;
    let ja = spawn_join(&c, join_req("g", &a, &[("range", b"new")]), JOIN_V);
    settle().await;
    assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        done(sb).await.error_code,
        ResponseError::RebalanceInProgress.code()
    );
    let jb = spawn_join(&c, join_req("g", &b, RANGE), JOIN_V);
    assert_eq!(done(ja).await.generation_id, ra.generation_id + 1);
    assert_eq!(done(jb).await.generation_id, ra.generation_id + 1);
}
