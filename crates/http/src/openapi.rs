//! The OpenAPI document, generated from the handlers' annotations (utoipa) and served at
//! `/api/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, channels, entities, metrics, policies, publish, pull, streams};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "FerryMQ HTTP API", description = "Publish, consume and manage FerryMQ over HTTP. Vhost names are percent-encoded in paths (`/` is `%2F`)."),
    modifiers(&Security),
    paths(
        metrics::live, metrics::ready, metrics::metrics,
        admin::whoami, admin::overview,
        admin::list_vhosts, admin::get_vhost, admin::put_vhost, admin::delete_vhost,
        admin::list_users, admin::get_user, admin::put_user, admin::delete_user,
        admin::list_permissions, admin::get_permission, admin::put_permission, admin::delete_permission,
        admin::list_topic_permissions, admin::list_vhost_topic_permissions,
        admin::get_topic_permissions, admin::put_topic_permission, admin::delete_topic_permissions,
        admin::list_connections, admin::get_connection, admin::close_connection,
        admin::export_definitions, admin::import_definitions,
        admin::issue_token, admin::revoke_token,
        entities::list_exchanges, entities::list_vhost_exchanges, entities::get_exchange,
        entities::put_exchange, entities::delete_exchange,
        entities::list_queues, entities::list_vhost_queues, entities::get_queue, entities::put_queue,
        entities::delete_queue, entities::purge_queue, entities::browse_queue, entities::move_messages,
        entities::list_streams, entities::list_vhost_streams, entities::get_stream, entities::put_stream,
        entities::delete_stream,
        entities::list_bindings, entities::list_vhost_bindings, entities::create_binding, entities::delete_binding,
        publish::exchange_publish, publish::exchange_publish_batch, publish::exchange_publish_raw,
        publish::queue_publish, publish::queue_publish_batch, publish::queue_publish_raw,
        pull::pull, pull::ack, pull::nack, pull::extend,
        streams::read, streams::get_offset, streams::commit_offset,
        policies::list_policies, policies::list_vhost_policies, policies::get_policy,
        policies::put_policy, policies::delete_policy,
        channels::list_channels, channels::list_vhost_channels, channels::list_connection_channels,
        channels::list_consumers, channels::list_vhost_consumers,
    )
)]
pub struct ApiDoc;

/// The OpenAPI document (JSON).
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
