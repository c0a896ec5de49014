//! The classic Kafka consumer-group coordinator (JoinGroup/SyncGroup/Heartbeat/LeaveGroup).
//!
//! One [`GroupCoordinator`] per broker holds every group in memory (tier T0: group
//! membership is lost on restart, as it is meaningless across a restart anyway;
//! committed offsets are not kept here). It follows Apache Kafka's classic
//! `GroupCoordinator` (KIP-62 session/rebalance timeouts, KIP-345 static membership,
//! KIP-394 `MEMBER_ID_REQUIRED`, KIP-814 `skip_assignment`) state for state and error
//! for error, so that real clients see the behaviour they expect:
//!
//! ```text
//!  Empty ──join──▶ PreparingRebalance ──all rejoined / timeout──▶ CompletingRebalance
//!    ▲                    ▲  (initial delay for an Empty group)        │ leader SyncGroup
//!    └── last member gone ┴──── join / leave / expiry ◀──── Stable ◀───┘
//! ```
//! `Dead` is the state of a deleted group; a deleted group leaves the map at once.
//!
//! # Locking
//! All groups live in one `std::sync::Mutex<HashMap>`: every operation is a short,
//! allocation-light critical section, and no lock is ever held across an `.await`.
//! A JoinGroup or SyncGroup that must wait parks a `oneshot::Sender` in its member and
//! awaits the receiver outside the lock; whoever completes the rebalance (another
//! request or the timer task) sends the response through it.
//!
//! # Timers
//! One background task per coordinator (the *driver*) owns every deadline: member
//! session expiry, expiry of member ids handed out with `MEMBER_ID_REQUIRED`, the
//! rebalance timeout, and the initial rebalance delay. Deadlines are plain
//! `tokio::time::Instant`s stored in the groups; the driver sleeps until the earliest
//! one, sweeps every group, and goes back to sleep. An operation that creates a
//! deadline earlier than the one the driver sleeps to wakes it through a `Notify`.
//! Heartbeats only ever push deadlines later, so they never wake the driver. Using
//! tokio time makes the whole coordinator deterministic under a paused clock.
//!
//! # Cancellation
//! A waiting JoinGroup/SyncGroup future may be dropped (the connection closed): its
//! receiver goes away and the later send is ignored. As in Kafka, the member still
//! counts as having rejoined; if its client is really gone it stops heartbeating and
//! is removed by session expiry, which rebalances the group again.

mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::{oneshot, Notify};
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Kafka's `NewMemberJoinTimeoutMs`: a brand-new member that is still waiting for its
/// first JoinGroup response is dropped after this long (it is expected to retry).
const NEW_MEMBER_JOIN_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Limits and timings of the group coordinator.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Kafka's `group.initial.rebalance.delay.ms`: how long the first rebalance of an
    /// Empty group waits for more members (extended by each new member, up to the
    /// rebalance timeout). 0 completes the first rebalance as soon as all joined.
    pub initial_rebalance_delay_ms: u64,
    /// Kafka's `group.max.size`: members (plus member ids handed out and not yet used)
    /// per group; more get `GROUP_MAX_SIZE_REACHED`.
    pub group_members_max: usize,
    /// Groups held by the coordinator; creating one more gets
    /// `COORDINATOR_NOT_AVAILABLE` (a client-created group is never freed implicitly).
    pub groups_max: usize,
    /// Kafka's `group.min.session.timeout.ms`.
    pub session_timeout_min_ms: i32,
    /// Kafka's `group.max.session.timeout.ms`.
    pub session_timeout_max_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            group_members_max: 1000,
            groups_max: 100_000,
            session_timeout_min_ms: 6000,
            session_timeout_max_ms: 1_800_000,
        }
    }
}

/// The state of a classic group, named as Kafka names it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members (possibly committed offsets only).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment in SyncGroup.
    CompletingRebalance,
    /// Assignment distributed.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A summary of one group, for listings and management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    /// The group id.
    pub group_id: StrBytes,
    /// The protocol type of its members ("consumer", "connect", ...), empty if none.
    pub protocol_type: StrBytes,
    /// Its state.
    pub state: GroupState,
    /// Its current generation.
    pub generation_id: i32,
    /// Its member count.
    pub members: usize,
}

/// What a JoinGroup answers (the wire layer turns it into a `JoinGroupResponse`).
#[derive(Debug, Clone)]
struct JoinOutcome {
    error: Option<ResponseError>,
    member_id: StrBytes,
    generation_id: i32,
    protocol_type: Option<StrBytes>,
    protocol_name: Option<StrBytes>,
    leader: StrBytes,
    skip_assignment: bool,
    /// (member id, group instance id, metadata for the chosen protocol); leader only.
    members: Vec<(StrBytes, Option<StrBytes>, Bytes)>,
}

impl JoinOutcome {
    fn error(member_id: StrBytes, error: ResponseError) -> Self {
        JoinOutcome {
            error: Some(error),
            member_id,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: StrBytes::new(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup answers.
#[derive(Debug, Clone)]
struct SyncOutcome {
    error: Option<ResponseError>,
    protocol_type: Option<StrBytes>,
    protocol_name: Option<StrBytes>,
    assignment: Bytes,
}

impl SyncOutcome {
    fn error(error: ResponseError) -> Self {
        SyncOutcome {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// The decoded, version-normalised arguments of a JoinGroup.
#[derive(Debug)]
struct JoinParams {
    group_id: StrBytes,
    member_id: StrBytes,
    group_instance_id: Option<StrBytes>,
    client_id: StrBytes,
    client_host: StrBytes,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: StrBytes,
    protocols: Vec<(StrBytes, Bytes)>,
    /// JoinGroup v4+: an unknown member first gets a member id and MEMBER_ID_REQUIRED.
    require_known_member_id: bool,
    /// JoinGroup v9+: a rejoining static leader may skip the assignment (KIP-814).
    skip_assignment_supported: bool,
}

/// The decoded arguments of a SyncGroup.
#[derive(Debug)]
struct SyncParams {
    group_id: StrBytes,
    generation_id: i32,
    member_id: StrBytes,
    group_instance_id: Option<StrBytes>,
    protocol_type: Option<StrBytes>,
    protocol_name: Option<StrBytes>,
    assignments: Vec<(StrBytes, Bytes)>,
}

/// Either an answer now or a receiver that gets it when the rebalance progresses.
enum Pending<T> {
    Ready(T),
    Wait(oneshot::Receiver<T>),
}

struct Member {
    id: StrBytes,
    group_instance_id: Option<StrBytes>,
    client_id: StrBytes,
    client_host: StrBytes,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: StrBytes,
    /// (name, metadata) in the member's order of preference.
    protocols: Vec<(StrBytes, Bytes)>,
    assignment: Bytes,
    /// Some while the member awaits its JoinGroup response ("awaiting join").
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    /// Some while the member awaits its SyncGroup response.
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    /// Session expiry when not awaiting join; the new-member timeout when `is_new`.
    deadline: Instant,
    /// Joined and never yet received a JoinGroup response.
    is_new: bool,
}

impl Member {
    fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }

    /// When this member expires, if at all (Kafka's `shouldKeepAlive`): an old member
    /// waiting in a rebalance is kept until the rebalance timeout decides.
    fn expiry(&self) -> Option<Instant> {
        if self.awaiting_join() && !self.is_new {
            None
        } else {
            Some(self.deadline)
        }
    }

    fn touch(&mut self, now: Instant) {
        self.deadline = now + ms(self.session_timeout_ms);
    }

    fn matches(&self, protocol_type: &StrBytes, protocols: &[(StrBytes, Bytes)]) -> bool {
        &self.protocol_type == protocol_type && self.protocols == protocols
    }

    fn metadata_for(&self, protocol: &StrBytes) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn send_join(&mut self, outcome: JoinOutcome) {
        if let Some(tx) = self.join_waiter.take() {
            // The receiver is gone if the client's request future was dropped.
            let _ = tx.send(outcome);
        }
    }

    fn send_sync(&mut self, outcome: SyncOutcome) {
        if let Some(tx) = self.sync_waiter.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// The pending rebalance's timer.
struct RebalanceTimer {
    deadline: Instant,
    /// Set while the initial delay of an Empty group runs: no early completion then.
    initial: Option<InitialDelay>,
}

struct InitialDelay {
    /// The configured initial delay: each extension's length.
    delay: Duration,
    /// What is left of the rebalance timeout for extensions.
    remaining: Duration,
    new_member_added: bool,
}

struct Group {
    id: StrBytes,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<StrBytes>,
    protocol_name: Option<StrBytes>,
    leader: Option<StrBytes>,
    /// In join order: the first is the leader unless it left.
    members: IndexMap<StrBytes, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry.
    pending: HashMap<StrBytes, Instant>,
    /// group.instance.id → member id of the static member.
    statics: HashMap<StrBytes, StrBytes>,
    rebalance: Option<RebalanceTimer>,
}

fn ms(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

impl Group {
    fn new(id: StrBytes) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance: None,
        }
    }

    fn is_leader(&self, member_id: &StrBytes) -> bool {
        self.leader.as_ref() == Some(member_id)
    }

    fn leader_or_empty(&self) -> StrBytes {
        self.leader.clone().unwrap_or_default()
    }

    fn awaiting_join_count(&self) -> usize {
        self.members.values().filter(|m| m.awaiting_join()).count()
    }

    fn all_members_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    /// A static member registered under `instance_id` with another member id.
    fn is_static_member_fenced(
        &self,
        instance_id: Option<&StrBytes>,
        member_id: &StrBytes,
    ) -> bool {
        instance_id
            .and_then(|instance| self.statics.get(instance))
            .is_some_and(|current| current != member_id)
    }

    /// Kafka's `acceptJoiningMember`, counting handed-out member ids too so that a
    /// flood of unknown joins cannot grow the pending set without bound.
    fn accept_joining_member(&self, member_id: &StrBytes, max: usize) -> bool {
        let awaiting = self.awaiting_join_count();
        if let Some(member) = self.members.get(member_id) {
            return match self.state {
                GroupState::PreparingRebalance => member.awaiting_join() || awaiting < max,
                _ => true,
            };
        }
        if self.pending.contains_key(member_id) {
            return match self.state {
                GroupState::PreparingRebalance => awaiting < max,
                _ => self.members.len() < max,
            };
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => self.pending.len() < max,
            GroupState::PreparingRebalance => awaiting + self.pending.len() < max,
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.members.len() + self.pending.len() < max
            }
        }
    }

    /// Kafka's `supportsProtocols`: the first member fixes the protocol type; later
    /// ones must share it and support a protocol every member supports.
    fn supports_protocols(
        &self,
        protocol_type: &StrBytes,
        protocols: &[(StrBytes, Bytes)],
    ) -> bool {
        if self.state == GroupState::Empty || self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_ref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(other, _)| other == name))
            })
    }

    /// Kafka's `selectProtocol`: among the protocols every member supports, each
    /// member votes for its most preferred one; most votes wins, a tie goes to the
    /// protocol voted for by the earliest-joined member.
    fn select_protocol(&self) -> Option<StrBytes> {
        let mut votes: Vec<(StrBytes, usize)> = Vec::new();
        for member in self.members.values() {
            let choice = member.protocols.iter().map(|(name, _)| name).find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(other, _)| other == *name))
            });
            if let Some(choice) = choice {
                match votes.iter_mut().find(|(name, _)| name == choice) {
                    Some((_, count)) => *count += 1,
                    None => votes.push((choice.clone(), 1)),
                }
            }
        }
        let mut best: Option<(StrBytes, usize)> = None;
        for (name, count) in votes {
            if best
                .as_ref()
                .is_none_or(|(_, best_count)| count > *best_count)
            {
                best = Some((name, count));
            }
        }
        best.map(|(name, _)| name)
    }

    fn rebalance_timeout(&self) -> Duration {
        ms(self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0))
    }

    fn add_member(&mut self, member: Member) {
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        if let Some(instance) = &member.group_instance_id {
            self.statics.insert(instance.clone(), member.id.clone());
        }
        if self.state == GroupState::PreparingRebalance {
            if let Some(initial) = self.rebalance.as_mut().and_then(|r| r.initial.as_mut()) {
                initial.new_member_added = true;
            }
        }
        self.pending.remove(&member.id);
        self.members.insert(member.id.clone(), member);
    }

    /// Removes a member, answering whatever it waits on with UNKNOWN_MEMBER_ID.
    fn remove_member(&mut self, member_id: &StrBytes) {
        let Some(mut member) = self.members.shift_remove(member_id) else {
            return;
        };
        member.send_join(JoinOutcome::error(
            StrBytes::new(),
            ResponseError::UnknownMemberId,
        ));
        member.send_sync(SyncOutcome::error(ResponseError::UnknownMemberId));
        if let Some(instance) = &member.group_instance_id {
            if self.statics.get(instance) == Some(member_id) {
                self.statics.remove(instance);
            }
        }
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    fn remove_member_and_update(
        &mut self,
        member_id: &StrBytes,
        now: Instant,
        config: &GroupConfig,
        reason: &str,
    ) {
        self.remove_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, config, reason)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant, config: &GroupConfig, reason: &str) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now, config, reason);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, config: &GroupConfig, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            // Members waiting for the assignment must rejoin instead.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                member.send_sync(SyncOutcome::error(ResponseError::RebalanceInProgress));
            }
        }
        let rebalance_timeout = self.rebalance_timeout();
        let delay = Duration::from_millis(config.initial_rebalance_delay_ms);
        self.rebalance = Some(if self.state == GroupState::Empty && !delay.is_zero() {
            RebalanceTimer {
                deadline: now + delay,
                initial: Some(InitialDelay {
                    delay,
                    remaining: rebalance_timeout.saturating_sub(delay),
                    new_member_added: false,
                }),
            }
        } else {
            RebalanceTimer {
                deadline: now + rebalance_timeout,
                initial: None,
            }
        });
        info!(
            group = self.id.as_str(),
            generation = self.generation_id,
            from = %self.state,
            reason,
            "preparing to rebalance group"
        );
        self.state = GroupState::PreparingRebalance;
        // Like Kafka's tryCompleteElseWatch: an emptied group completes at once.
        self.try_complete_join(now);
    }

    /// Completes the pending JoinGroup round if all members rejoined (outside the
    /// initial delay) or its timer ran out.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let Some(timer) = self.rebalance.as_mut() else {
            return;
        };
        let expired = now >= timer.deadline;
        match timer.initial.as_mut() {
            Some(initial) => {
                if !expired {
                    return;
                }
                if initial.new_member_added && !initial.remaining.is_zero() {
                    // Someone joined during the delay: wait once more, within the
                    // rebalance timeout (Kafka's InitialDelayedJoin).
                    let step = initial.delay.min(initial.remaining);
                    initial.remaining -= step;
                    initial.new_member_added = false;
                    timer.deadline = now + step;
                    return;
                }
            }
            None => {
                if !expired && !self.all_members_joined() {
                    return;
                }
            }
        }
        self.complete_join(now);
    }

    /// Kafka's `onCompleteJoin`: drop members that did not rejoin, start the next
    /// generation and answer every waiting JoinGroup.
    fn complete_join(&mut self, now: Instant) {
        let not_rejoined: Vec<StrBytes> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join())
            .map(|m| m.id.clone())
            .collect();
        for member_id in &not_rejoined {
            info!(
                group = self.id.as_str(),
                member = member_id.as_str(),
                "removing member that did not rejoin before the rebalance timeout"
            );
            self.remove_member(member_id);
        }
        self.rebalance = None;
        self.generation_id = self.generation_id.wrapping_add(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.state = GroupState::Empty;
            info!(
                group = self.id.as_str(),
                generation = self.generation_id,
                "group is now empty"
            );
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader_members: Vec<(StrBytes, Option<StrBytes>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.group_instance_id.clone(),
                    m.metadata_for(&protocol),
                )
            })
            .collect();
        let leader = self.leader_or_empty();
        let generation_id = self.generation_id;
        let protocol_type = self.protocol_type.clone();
        let protocol_name = self.protocol_name.clone();
        for member in self.members.values_mut() {
            let members = if member.id == leader {
                leader_members.clone()
            } else {
                Vec::new()
            };
            member.send_join(JoinOutcome {
                error: None,
                member_id: member.id.clone(),
                generation_id,
                protocol_type: protocol_type.clone(),
                protocol_name: protocol_name.clone(),
                leader: leader.clone(),
                skip_assignment: false,
                members,
            });
            member.is_new = false;
            member.touch(now);
        }
        info!(
            group = self.id.as_str(),
            generation = generation_id,
            members = self.members.len(),
            protocol = protocol.as_str(),
            "group rebalanced; awaiting the leader's assignment"
        );
    }

    /// Expires what is due at `now`: handed-out member ids, silent members, the
    /// rebalance timer.
    fn expire(&mut self, now: Instant, config: &GroupConfig) {
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != before {
            self.try_complete_join(now);
        }
        let expired: Vec<StrBytes> = self
            .members
            .values()
            .filter(|m| m.expiry().is_some_and(|deadline| deadline <= now))
            .map(|m| m.id.clone())
            .collect();
        for member_id in &expired {
            // An earlier removal may have started a rebalance that changed this one.
            let still_due = self
                .members
                .get(member_id)
                .and_then(Member::expiry)
                .is_some_and(|deadline| deadline <= now);
            if !still_due {
                continue;
            }
            info!(
                group = self.id.as_str(),
                member = member_id.as_str(),
                "member session expired; removing it from the group"
            );
            self.remove_member_and_update(member_id, now, config, "member session expired");
        }
        self.try_complete_join(now);
    }

    /// The earliest instant at which [`Group::expire`] has something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let members = self.members.values().filter_map(Member::expiry);
        let pending = self.pending.values().copied();
        let rebalance = self
            .rebalance
            .as_ref()
            .filter(|_| self.state == GroupState::PreparingRebalance)
            .map(|r| r.deadline);
        members.chain(pending).chain(rebalance).min()
    }

    fn overview(&self) -> GroupOverview {
        GroupOverview {
            group_id: self.id.clone(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            state: self.state,
            generation_id: self.generation_id,
            members: self.members.len(),
        }
    }
}

struct State {
    groups: HashMap<StrBytes, Group>,
    /// The instant the driver sleeps until (None: until notified).
    driver_wake_at: Option<Instant>,
}

struct Shared {
    config: GroupConfig,
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves groups in a state we still prefer to
        // serving nothing; the invariants are re-established per operation.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the driver if `group_id`'s next deadline is earlier than its alarm.
    fn reschedule(&self, state: &mut State, group_id: &StrBytes) {
        let Some(next) = state.groups.get(group_id).and_then(Group::next_deadline) else {
            return;
        };
        if state.driver_wake_at.is_none_or(|wake_at| next < wake_at) {
            state.driver_wake_at = Some(next);
            self.wake.notify_one();
        }
    }

    /// Runs every due expiry; returns the next deadline.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        for group in state.groups.values_mut() {
            if group
                .next_deadline()
                .is_some_and(|deadline| deadline <= now)
            {
                group.expire(now, &self.config);
            }
        }
        let next = state.groups.values().filter_map(Group::next_deadline).min();
        state.driver_wake_at = next;
        next
    }
}

async fn drive(shared: Arc<Shared>) {
    loop {
        let next = shared.sweep(Instant::now());
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

fn random_member_id(prefix: &str) -> StrBytes {
    let bits = fastrand::u128(..);
    let hex = format!("{bits:032x}");
    StrBytes::from_string(format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn key(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// The broker's classic consumer-group coordinator; share it with `Arc`.
pub struct GroupCoordinator {
    shared: Arc<Shared>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for GroupCoordinator {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl GroupCoordinator {
    /// A coordinator with no groups; spawns its timer task on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (like `tokio::spawn`).
    pub fn new(config: GroupConfig) -> Self {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                groups: HashMap::new(),
                driver_wake_at: None,
            }),
            wake: Notify::new(),
        });
        let driver = tokio::spawn(drive(Arc::clone(&shared)));
        GroupCoordinator { shared, driver }
    }

    /// The coordinator's configuration.
    pub fn config(&self) -> &GroupConfig {
        &self.shared.config
    }

    /// The state of a group, None if unknown.
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.shared
            .lock()
            .groups
            .get(&key(group_id))
            .map(|g| g.state)
    }

    /// Every group, sorted by id.
    pub fn groups(&self) -> Vec<GroupOverview> {
        let mut groups: Vec<GroupOverview> = self
            .shared
            .lock()
            .groups
            .values()
            .map(Group::overview)
            .collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups
    }

    /// Makes `group_id` known as an Empty group if it is not known yet, so that
    /// ListGroups, DescribeGroups and DeleteGroups see it: call it at start-up for
    /// every group that has committed offsets (membership itself is not persisted).
    ///
    /// # Errors
    /// `INVALID_GROUP_ID` for an empty id, `COORDINATOR_NOT_AVAILABLE` at `groups_max`.
    pub fn register_group(&self, group_id: &str) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let group_key = key(group_id);
        let mut state = self.shared.lock();
        if state.groups.contains_key(&group_key) {
            return Ok(());
        }
        if state.groups.len() >= self.shared.config.groups_max {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        state
            .groups
            .insert(group_key.clone(), Group::new(group_key));
        Ok(())
    }

    /// Checks an OffsetCommit (or TxnOffsetCommit) against group membership, as
    /// Kafka's `handleCommitOffsets` does. A commit with a negative generation is a
    /// "simple" commit by a client that does not use group management: allowed if the
    /// group is unknown (it is then created, Empty, so that it is listed and can be
    /// deleted) or Empty. Otherwise the member must exist in the current generation.
    /// A valid commit counts as a sign of life of the member.
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`,
    /// `FENCED_INSTANCE_ID`, `REBALANCE_IN_PROGRESS` (CompletingRebalance),
    /// `COORDINATOR_NOT_AVAILABLE` (group limit reached).
    pub fn validate_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let now = Instant::now();
        let group_key = key(group_id);
        let mut state = self.shared.lock();
        let groups_len = state.groups.len();
        let Some(group) = state.groups.get_mut(&group_key) else {
            if generation_id >= 0 {
                return Err(ResponseError::IllegalGeneration);
            }
            if groups_len >= self.shared.config.groups_max {
                warn!(
                    group = group_id,
                    "groups_max reached; refusing to create a group"
                );
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            state
                .groups
                .insert(group_key.clone(), Group::new(group_key));
            return Ok(());
        };
        let member_key = key(member_id);
        let instance = group_instance_id.map(key);
        if group.state == GroupState::Dead {
            Err(ResponseError::CoordinatorNotAvailable)
        } else if group.is_static_member_fenced(instance.as_ref(), &member_key) {
            Err(ResponseError::FencedInstanceId)
        } else if generation_id < 0 && group.state == GroupState::Empty {
            Ok(())
        } else if generation_id < 0 && member_id.is_empty() {
            // A simple commit into a group that has members: Kafka answers this way.
            Err(ResponseError::UnknownMemberId)
        } else if !group.members.contains_key(&member_key) {
            Err(ResponseError::UnknownMemberId)
        } else if generation_id != group.generation_id {
            Err(ResponseError::IllegalGeneration)
        } else {
            match group.state {
                GroupState::Stable | GroupState::PreparingRebalance => {
                    if let Some(member) = group.members.get_mut(&member_key) {
                        member.touch(now);
                    }
                    Ok(())
                }
                GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
                GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            }
        }
    }

    async fn join(&self, params: JoinParams) -> JoinOutcome {
        let member_id = params.member_id.clone();
        let pending = {
            let now = Instant::now();
            let mut state = self.shared.lock();
            let pending = self.join_locked(&mut state, params, now);
            if let Some(group_id) = pending.1 {
                self.shared.reschedule(&mut state, &group_id);
            }
            pending.0
        };
        match pending {
            Pending::Ready(outcome) => outcome,
            Pending::Wait(rx) => rx.await.unwrap_or_else(|_| {
                JoinOutcome::error(member_id, ResponseError::CoordinatorNotAvailable)
            }),
        }
    }

    /// JoinGroup under the lock; returns the answer and the group touched.
    fn join_locked(
        &self,
        state: &mut State,
        p: JoinParams,
        now: Instant,
    ) -> (Pending<JoinOutcome>, Option<StrBytes>) {
        let config = &self.shared.config;
        let fail = |member_id: &StrBytes, error| {
            (
                Pending::Ready(JoinOutcome::error(member_id.clone(), error)),
                None,
            )
        };
        if p.group_id.is_empty() {
            return fail(&p.member_id, ResponseError::InvalidGroupId);
        }
        if p.session_timeout_ms < config.session_timeout_min_ms
            || p.session_timeout_ms > config.session_timeout_max_ms
        {
            return fail(&p.member_id, ResponseError::InvalidSessionTimeout);
        }
        let is_unknown = p.member_id.is_empty();
        let created = !state.groups.contains_key(&p.group_id);
        if created {
            if !is_unknown {
                return fail(&p.member_id, ResponseError::UnknownMemberId);
            }
            if state.groups.len() >= config.groups_max {
                warn!(
                    group = p.group_id.as_str(),
                    "groups_max reached; refusing to create a group"
                );
                return fail(&p.member_id, ResponseError::CoordinatorNotAvailable);
            }
            state
                .groups
                .insert(p.group_id.clone(), Group::new(p.group_id.clone()));
        }
        let group_id = p.group_id.clone();
        let Some(group) = state.groups.get_mut(&group_id) else {
            return fail(&p.member_id, ResponseError::CoordinatorNotAvailable);
        };
        // A restarting static member takes its old place: it does not grow the group.
        let replaces_static = is_unknown
            && p.group_instance_id
                .as_ref()
                .is_some_and(|instance| group.statics.contains_key(instance));
        let result = if !replaces_static
            && !group.accept_joining_member(&p.member_id, config.group_members_max)
        {
            if group.members.contains_key(&p.member_id) {
                group.remove_member_and_update(
                    &p.member_id,
                    now,
                    config,
                    "group is over its size limit",
                );
            }
            group.pending.remove(&p.member_id);
            Pending::Ready(JoinOutcome::error(
                StrBytes::new(),
                ResponseError::GroupMaxSizeReached,
            ))
        } else if is_unknown {
            Self::join_new_member(group, p, now, config)
        } else {
            Self::join_current_member(group, p, now, config)
        };
        if group.state == GroupState::PreparingRebalance {
            group.try_complete_join(now);
        }
        if created
            && group.state == GroupState::Empty
            && group.members.is_empty()
            && group.pending.is_empty()
        {
            // The join that created the group failed: do not keep an empty shell.
            state.groups.remove(&group_id);
            return (result, None);
        }
        (result, Some(group_id))
    }

    fn join_new_member(
        group: &mut Group,
        p: JoinParams,
        now: Instant,
        config: &GroupConfig,
    ) -> Pending<JoinOutcome> {
        if group.state == GroupState::Dead {
            return Pending::Ready(JoinOutcome::error(
                p.member_id,
                ResponseError::CoordinatorNotAvailable,
            ));
        }
        if !group.supports_protocols(&p.protocol_type, &p.protocols) {
            return Pending::Ready(JoinOutcome::error(
                p.member_id,
                ResponseError::InconsistentGroupProtocol,
            ));
        }
        let prefix = p.group_instance_id.as_ref().unwrap_or(&p.client_id);
        let new_id = random_member_id(prefix.as_str());
        if let Some(instance) = p.group_instance_id.clone() {
            if let Some(old_id) = group.statics.get(&instance).cloned() {
                return Self::update_static_member(group, old_id, new_id, p, now, config);
            }
            return Self::add_member_and_rebalance(group, new_id, p, now, config);
        }
        if p.require_known_member_id {
            debug!(
                group = group.id.as_str(),
                member = new_id.as_str(),
                "handing out a member id"
            );
            group
                .pending
                .insert(new_id.clone(), now + ms(p.session_timeout_ms));
            return Pending::Ready(JoinOutcome::error(new_id, ResponseError::MemberIdRequired));
        }
        Self::add_member_and_rebalance(group, new_id, p, now, config)
    }

    fn join_current_member(
        group: &mut Group,
        p: JoinParams,
        now: Instant,
        config: &GroupConfig,
    ) -> Pending<JoinOutcome> {
        let member_id = p.member_id.clone();
        let error = |error| Pending::Ready(JoinOutcome::error(member_id.clone(), error));
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports_protocols(&p.protocol_type, &p.protocols) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        if group.pending.contains_key(&member_id) {
            if p.group_instance_id.is_some() {
                // Handed-out ids are for dynamic members only.
                group.pending.remove(&member_id);
                return error(ResponseError::UnknownMemberId);
            }
            return Self::add_member_and_rebalance(group, member_id, p, now, config);
        }
        let instance_unknown = p
            .group_instance_id
            .as_ref()
            .is_some_and(|instance| !group.statics.contains_key(instance));
        if group.is_static_member_fenced(p.group_instance_id.as_ref(), &member_id) {
            return error(ResponseError::FencedInstanceId);
        }
        let Some(member) = group.members.get_mut(&member_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if instance_unknown {
            return error(ResponseError::UnknownMemberId);
        }
        member.touch(now);
        let matches = member.matches(&p.protocol_type, &p.protocols);
        match group.state {
            GroupState::PreparingRebalance => {
                Self::update_member_and_rebalance(group, p, now, config)
            }
            GroupState::CompletingRebalance if matches => {
                // The member probably lost the JoinGroup response: answer it again.
                Pending::Ready(Self::current_join_info(
                    group,
                    &member_id,
                    group.is_leader(&member_id),
                ))
            }
            GroupState::Stable if matches && !group.is_leader(&member_id) => {
                Pending::Ready(Self::current_join_info(group, &member_id, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                // Changed metadata, or the leader asking for a rebalance (e.g. topic
                // metadata changed).
                Self::update_member_and_rebalance(group, p, now, config)
            }
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
        }
    }

    fn current_join_info(group: &Group, member_id: &StrBytes, with_members: bool) -> JoinOutcome {
        let protocol = group.protocol_name.clone().unwrap_or_default();
        JoinOutcome {
            error: None,
            member_id: member_id.clone(),
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group.leader_or_empty(),
            skip_assignment: false,
            members: if with_members {
                group
                    .members
                    .values()
                    .map(|m| {
                        (
                            m.id.clone(),
                            m.group_instance_id.clone(),
                            m.metadata_for(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn add_member_and_rebalance(
        group: &mut Group,
        member_id: StrBytes,
        p: JoinParams,
        now: Instant,
        config: &GroupConfig,
    ) -> Pending<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        debug!(
            group = group.id.as_str(),
            member = member_id.as_str(),
            "adding member"
        );
        group.add_member(Member {
            id: member_id.clone(),
            group_instance_id: p.group_instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout_ms: p.session_timeout_ms,
            rebalance_timeout_ms: p.rebalance_timeout_ms,
            protocol_type: p.protocol_type,
            protocols: p.protocols,
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            deadline: now + Duration::from_millis(NEW_MEMBER_JOIN_TIMEOUT_MS),
            is_new: true,
        });
        group.maybe_prepare_rebalance(now, config, "adding a new member");
        Pending::Wait(rx)
    }

    fn update_member_and_rebalance(
        group: &mut Group,
        p: JoinParams,
        now: Instant,
        config: &GroupConfig,
    ) -> Pending<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(member) = group.members.get_mut(&p.member_id) {
            member.protocol_type = p.protocol_type;
            member.protocols = p.protocols;
            member.rebalance_timeout_ms = p.rebalance_timeout_ms;
            member.session_timeout_ms = p.session_timeout_ms;
            if let Some(old) = member.join_waiter.replace(tx) {
                // A repeated JoinGroup replaces the earlier one.
                let _ = old.send(JoinOutcome::error(
                    p.member_id.clone(),
                    ResponseError::RebalanceInProgress,
                ));
            }
        }
        group.maybe_prepare_rebalance(now, config, "member joined with new metadata");
        Pending::Wait(rx)
    }

    /// KIP-345: a known static member restarted with a new member id. The old id is
    /// fenced; the group only rebalances if it must.
    fn update_static_member(
        group: &mut Group,
        old_id: StrBytes,
        new_id: StrBytes,
        p: JoinParams,
        now: Instant,
        config: &GroupConfig,
    ) -> Pending<JoinOutcome> {
        let current_leader = group.leader_or_empty();
        let was_leader = group.is_leader(&old_id);
        let Some(mut member) = group.members.shift_remove(&old_id) else {
            return Pending::Ready(JoinOutcome::error(
                p.member_id,
                ResponseError::UnknownMemberId,
            ));
        };
        let unchanged = member.matches(&p.protocol_type, &p.protocols);
        member.send_join(JoinOutcome::error(
            old_id.clone(),
            ResponseError::FencedInstanceId,
        ));
        member.send_sync(SyncOutcome::error(ResponseError::FencedInstanceId));
        member.id = new_id.clone();
        member.client_id = p.client_id;
        member.client_host = p.client_host;
        member.protocol_type = p.protocol_type;
        member.protocols = p.protocols;
        member.session_timeout_ms = p.session_timeout_ms;
        member.rebalance_timeout_ms = p.rebalance_timeout_ms;
        member.touch(now);
        group.members.insert(new_id.clone(), member);
        if let Some(instance) = &p.group_instance_id {
            group.statics.insert(instance.clone(), new_id.clone());
        }
        if was_leader {
            group.leader = Some(new_id.clone());
        }
        info!(
            group = group.id.as_str(),
            old = old_id.as_str(),
            new = new_id.as_str(),
            "static member rejoined with a new member id"
        );
        let wait = |group: &mut Group| {
            let (tx, rx) = oneshot::channel();
            if let Some(member) = group.members.get_mut(&new_id) {
                member.join_waiter = Some(tx);
            }
            rx
        };
        match group.state {
            GroupState::Stable if unchanged => {
                let mut outcome = Self::current_join_info(group, &new_id, false);
                if was_leader && p.skip_assignment_supported {
                    // KIP-814: the leader learns it leads, but keeps the assignment.
                    outcome = Self::current_join_info(group, &new_id, true);
                    outcome.skip_assignment = true;
                } else {
                    // The old leader id: the member must not think it leads and
                    // compute an assignment a Stable group would not distribute.
                    outcome.leader = current_leader;
                }
                Pending::Ready(outcome)
            }
            GroupState::Stable | GroupState::CompletingRebalance => {
                let rx = wait(group);
                group.prepare_rebalance(
                    now,
                    config,
                    "static member rejoined with changed metadata or during a sync",
                );
                Pending::Wait(rx)
            }
            GroupState::PreparingRebalance => Pending::Wait(wait(group)),
            GroupState::Empty | GroupState::Dead => {
                Pending::Ready(JoinOutcome::error(new_id, ResponseError::UnknownMemberId))
            }
        }
    }

    async fn sync(&self, p: SyncParams) -> SyncOutcome {
        let pending = {
            let now = Instant::now();
            let mut state = self.shared.lock();
            let group_id = p.group_id.clone();
            let pending = self.sync_locked(&mut state, p, now);
            self.shared.reschedule(&mut state, &group_id);
            pending
        };
        match pending {
            Pending::Ready(outcome) => outcome,
            Pending::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::CoordinatorNotAvailable)),
        }
    }

    fn sync_locked(&self, state: &mut State, p: SyncParams, now: Instant) -> Pending<SyncOutcome> {
        let error = |error| Pending::Ready(SyncOutcome::error(error));
        if p.group_id.is_empty() {
            return error(ResponseError::InvalidGroupId);
        }
        let Some(group) = state.groups.get_mut(&p.group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if group.is_static_member_fenced(p.group_instance_id.as_ref(), &p.member_id) {
            return error(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(&p.member_id) {
            return error(ResponseError::UnknownMemberId);
        }
        if p.generation_id != group.generation_id {
            return error(ResponseError::IllegalGeneration);
        }
        if p.protocol_type
            .as_ref()
            .is_some_and(|t| group.protocol_type.as_ref() != Some(t))
            || p.protocol_name
                .as_ref()
                .is_some_and(|n| group.protocol_name.as_ref() != Some(n))
        {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let protocol_type = group.protocol_type.clone();
        let protocol_name = group.protocol_name.clone();
        match group.state {
            GroupState::Empty => error(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let Some(member) = group.members.get_mut(&p.member_id) else {
                    return error(ResponseError::UnknownMemberId);
                };
                member.touch(now);
                Pending::Ready(SyncOutcome {
                    error: None,
                    protocol_type,
                    protocol_name,
                    assignment: member.assignment.clone(),
                })
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(member) = group.members.get_mut(&p.member_id) {
                    member.touch(now);
                    if let Some(old) = member.sync_waiter.replace(tx) {
                        let _ = old.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
                    }
                }
                if group.is_leader(&p.member_id) {
                    let mut assignments: HashMap<StrBytes, Bytes> =
                        p.assignments.into_iter().collect();
                    for member in group.members.values_mut() {
                        // Members the leader left out get an empty assignment; ids the
                        // leader made up are ignored.
                        member.assignment = assignments.remove(&member.id).unwrap_or_default();
                        let assignment = member.assignment.clone();
                        member.send_sync(SyncOutcome {
                            error: None,
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment,
                        });
                    }
                    group.state = GroupState::Stable;
                    info!(
                        group = group.id.as_str(),
                        generation = group.generation_id,
                        "group is stable: the leader's assignment was distributed"
                    );
                }
                Pending::Wait(rx)
            }
            GroupState::Dead => error(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Heartbeat; `Ok` or the error to return.
    fn heartbeat_inner(
        &self,
        group_id: &StrBytes,
        generation_id: i32,
        member_id: &StrBytes,
        instance_id: Option<&StrBytes>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let now = Instant::now();
        let mut state = self.shared.lock();
        let Some(group) = state.groups.get_mut(group_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if group.is_static_member_fenced(instance_id, member_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        let group_generation = group.generation_id;
        let group_state = group.state;
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if generation_id != group_generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match group_state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.touch(now);
                Ok(())
            }
            GroupState::PreparingRebalance => {
                member.touch(now);
                Err(ResponseError::RebalanceInProgress)
            }
        }
    }

    /// LeaveGroup for a batch of (member id, group instance id); returns the
    /// group-level result or one result per member.
    fn leave_inner(
        &self,
        group_id: &StrBytes,
        members: &[(StrBytes, Option<StrBytes>)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let now = Instant::now();
        let config = &self.shared.config;
        let mut state = self.shared.lock();
        let Some(group) = state.groups.get_mut(group_id) else {
            return Ok(members
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect());
        };
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let mut results = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let result = if member_id.is_empty() {
                // Administrative removal of a static member by instance id.
                match instance_id
                    .as_ref()
                    .and_then(|i| group.statics.get(i))
                    .cloned()
                {
                    Some(current) => {
                        group.remove_member_and_update(
                            &current,
                            now,
                            config,
                            "static member removed by LeaveGroup",
                        );
                        None
                    }
                    None => Some(ResponseError::UnknownMemberId),
                }
            } else if group.pending.remove(member_id).is_some() {
                group.try_complete_join(now);
                None
            } else if group.is_static_member_fenced(instance_id.as_ref(), member_id) {
                Some(ResponseError::FencedInstanceId)
            } else if group.members.contains_key(member_id) {
                info!(
                    group = group_id.as_str(),
                    member = member_id.as_str(),
                    "member left the group"
                );
                group.remove_member_and_update(member_id, now, config, "member left the group");
                None
            } else {
                Some(ResponseError::UnknownMemberId)
            };
            results.push(result);
        }
        self.shared.reschedule(&mut state, group_id);
        Ok(results)
    }

    /// DeleteGroups for one group: only an Empty group can go.
    fn delete_inner(&self, group_id: &StrBytes) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let mut state = self.shared.lock();
        let Some(group) = state.groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound);
        };
        match group.state {
            GroupState::Dead => Err(ResponseError::GroupIdNotFound),
            GroupState::Empty => {
                group.state = GroupState::Dead;
                state.groups.remove(group_id);
                info!(group = group_id.as_str(), "group deleted");
                Ok(())
            }
            _ => Err(ResponseError::NonEmptyGroup),
        }
    }
}
