//! Kafka wire translation for the group APIs: decoded request + API version in, response out.
//!
//! Each function fills exactly the fields its version carries and leaves the others at
//! the values kafka-protocol's encoder accepts for that version (it refuses, for
//! example, `skip_assignment` below JoinGroup v9 or member lists below LeaveGroup v3).

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{GroupCoordinator, GroupState, JoinParams, SyncParams};

/// Kafka's ACL operation bits a group supports: READ (3), DELETE (6), DESCRIBE (8).
/// FerryMQ has no Kafka ACLs, so every client may do all of them.
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// The value DescribeGroups uses for "authorized operations not requested".
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

fn code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |e| e.code())
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

impl GroupCoordinator {
    /// JoinGroup (v0-9). Waits until the group's rebalance completes (or answers at
    /// once: errors, MEMBER_ID_REQUIRED, a static member's rejoin into a Stable group).
    ///
    /// # Cancel safety
    /// Dropping the future leaves the member joined, as if the response was lost; the
    /// client's retry with its member id or its session expiry sorts it out.
    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance_timeout_ms = if version == 0 || req.rebalance_timeout_ms <= 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        };
        let params = JoinParams {
            group_id: req.group_id.0,
            member_id: req.member_id,
            group_instance_id: if version >= 5 {
                req.group_instance_id
            } else {
                None
            },
            client_id: text(client_id),
            client_host: text(client_host),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type: req.protocol_type,
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name, p.metadata))
                .collect(),
            require_known_member_id: version >= 4,
            skip_assignment_supported: version >= 9,
        };
        let outcome = self.join(params).await;
        let members = outcome
            .members
            .into_iter()
            .map(|(member_id, group_instance_id, metadata)| {
                JoinGroupResponseMember::default()
                    .with_member_id(member_id)
                    .with_group_instance_id(if version >= 5 {
                        group_instance_id
                    } else {
                        None
                    })
                    .with_metadata(metadata)
            })
            .collect();
        // protocol_name is nullable only from v7; below it must be a string.
        let protocol_name = if version >= 7 {
            outcome.protocol_name
        } else {
            Some(outcome.protocol_name.unwrap_or_default())
        };
        JoinGroupResponse::default()
            .with_error_code(code(outcome.error))
            .with_generation_id(outcome.generation_id)
            .with_protocol_type(if version >= 7 {
                outcome.protocol_type
            } else {
                None
            })
            .with_protocol_name(protocol_name)
            .with_leader(outcome.leader)
            .with_skip_assignment(version >= 9 && outcome.skip_assignment)
            .with_member_id(outcome.member_id)
            .with_members(members)
    }

    /// SyncGroup (v0-5). The leader's call distributes the assignment; a follower's
    /// call in CompletingRebalance waits for it.
    ///
    /// # Cancel safety
    /// Dropping the future is harmless; the member fetches its assignment again with
    /// a new SyncGroup (a Stable group answers at once).
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let params = SyncParams {
            group_id: req.group_id.0,
            generation_id: req.generation_id,
            member_id: req.member_id,
            group_instance_id: if version >= 3 {
                req.group_instance_id
            } else {
                None
            },
            protocol_type: if version >= 5 {
                req.protocol_type
            } else {
                None
            },
            protocol_name: if version >= 5 {
                req.protocol_name
            } else {
                None
            },
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id, a.assignment))
                .collect(),
        };
        let outcome = self.sync(params).await;
        let mut response = SyncGroupResponse::default()
            .with_error_code(code(outcome.error))
            .with_assignment(outcome.assignment);
        if version >= 5 {
            response = response
                .with_protocol_type(outcome.protocol_type)
                .with_protocol_name(outcome.protocol_name);
        }
        response
    }

    /// Heartbeat (v0-4).
    pub fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        let instance = if version >= 3 {
            req.group_instance_id
        } else {
            None
        };
        let result = self.heartbeat_inner(
            &req.group_id,
            req.generation_id,
            &req.member_id,
            instance.as_ref(),
        );
        HeartbeatResponse::default().with_error_code(code(result.err()))
    }

    /// LeaveGroup (v0-5): one member below v3, a batch by member id or group instance
    /// id from v3.
    pub fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        if version < 3 {
            let result = self.leave_inner(&req.group_id, &[(req.member_id, None)]);
            let error = match result {
                Ok(results) => results.into_iter().next().flatten(),
                Err(error) => Some(error),
            };
            return LeaveGroupResponse::default().with_error_code(code(error));
        }
        let members: Vec<(StrBytes, Option<StrBytes>)> = req
            .members
            .into_iter()
            .map(|m| (m.member_id, m.group_instance_id))
            .collect();
        match self.leave_inner(&req.group_id, &members) {
            Err(error) => LeaveGroupResponse::default().with_error_code(error.code()),
            Ok(results) => LeaveGroupResponse::default().with_members(
                members
                    .into_iter()
                    .zip(results)
                    .map(|((member_id, group_instance_id), error)| {
                        MemberResponse::default()
                            .with_member_id(member_id)
                            .with_group_instance_id(group_instance_id)
                            .with_error_code(code(error))
                    })
                    .collect(),
            ),
        }
    }

    /// DescribeGroups (v0-6). As in Kafka, member metadata (for the chosen protocol)
    /// and assignments are only shown for a Stable group. An unknown group is "Dead"
    /// with no error below v6 and GROUP_ID_NOT_FOUND from v6.
    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let operations = if version >= 3 && req.include_authorized_operations {
            GROUP_AUTHORIZED_OPERATIONS
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };
        let state = self.shared.lock();
        let groups = req
            .groups
            .into_iter()
            .map(|group_id| {
                let described = DescribedGroup::default()
                    .with_group_id(group_id.clone())
                    .with_authorized_operations(operations);
                if group_id.is_empty() {
                    return described.with_error_code(ResponseError::InvalidGroupId.code());
                }
                let Some(group) = state.groups.get(&group_id.0) else {
                    let described = described.with_group_state(text(GroupState::Dead.as_str()));
                    return if version >= 6 {
                        described
                            .with_error_code(ResponseError::GroupIdNotFound.code())
                            .with_error_message(Some(text(&format!(
                                "Group {} not found.",
                                group_id.as_str()
                            ))))
                    } else {
                        described
                    };
                };
                let stable = group.state == GroupState::Stable;
                let protocol = if stable {
                    group.protocol_name.clone().unwrap_or_default()
                } else {
                    StrBytes::new()
                };
                let members = group
                    .members
                    .values()
                    .map(|m| {
                        let (metadata, assignment) = if stable {
                            (m.metadata_for(&protocol), m.assignment.clone())
                        } else {
                            (Bytes::new(), Bytes::new())
                        };
                        DescribedGroupMember::default()
                            .with_member_id(m.id.clone())
                            .with_group_instance_id(if version >= 4 {
                                m.group_instance_id.clone()
                            } else {
                                None
                            })
                            .with_client_id(m.client_id.clone())
                            .with_client_host(m.client_host.clone())
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                described
                    .with_group_state(text(group.state.as_str()))
                    .with_protocol_type(group.protocol_type.clone().unwrap_or_default())
                    .with_protocol_data(protocol)
                    .with_members(members)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// ListGroups (v0-5): v4+ filters by state, v5+ by type (all groups here are
    /// "classic"); both case-insensitively.
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let states: Vec<StrBytes> = if version >= 4 {
            req.states_filter
        } else {
            Vec::new()
        };
        let types: Vec<StrBytes> = if version >= 5 {
            req.types_filter
        } else {
            Vec::new()
        };
        let classic_wanted =
            types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case("classic"));
        let groups = if classic_wanted {
            self.groups()
                .into_iter()
                .filter(|g| {
                    states.is_empty()
                        || states
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(g.state.as_str()))
                })
                .map(|g| {
                    let mut listed = ListedGroup::default()
                        .with_group_id(GroupId(g.group_id))
                        .with_protocol_type(g.protocol_type);
                    if version >= 4 {
                        listed = listed.with_group_state(text(g.state.as_str()));
                    }
                    if version >= 5 {
                        listed = listed.with_group_type(text("classic"));
                    }
                    listed
                })
                .collect()
        } else {
            Vec::new()
        };
        ListGroupsResponse::default().with_groups(groups)
    }

    /// DeleteGroups (v0-2): only Empty groups are deleted (NON_EMPTY_GROUP otherwise,
    /// GROUP_ID_NOT_FOUND if unknown). The caller deletes the committed offsets of
    /// every group answered with error code 0.
    pub fn delete_groups(&self, req: DeleteGroupsRequest, _version: i16) -> DeleteGroupsResponse {
        let results = req
            .groups_names
            .into_iter()
            .map(|group_id| {
                let result = self.delete_inner(&group_id.0);
                DeletableGroupResult::default()
                    .with_group_id(group_id)
                    .with_error_code(code(result.err()))
            })
            .collect();
        DeleteGroupsResponse::default().with_results(results)
    }
}
