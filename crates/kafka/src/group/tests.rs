//! Tests of the group coordinator, under a paused tokio clock.
