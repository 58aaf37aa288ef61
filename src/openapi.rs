//! The companion API's OpenAPI 3.1 description, generated from the handlers and types
//! (`utoipa`), served at `/openapi.json` and committed as `docs/openapi.json` (a test checks they
//! are the same; `make openapi` rewrites the file).

use super::api;
use multitokens_core::contract::{FeedPage, LookupAnswer};
use multitokens_core::ttl::MAX_TTL_SECS;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

/// The description.
#[derive(OpenApi)]
#[openapi(
    info(title = "multitokens companion API",
        description = "Issue, list, introspect and revoke per-device bearer tokens; the stock filter's internal \
            lookup and revocation feed."),
    // every other path comes from the router (api::routes), where each is registered once
    paths(api::internal::ext_authz),
    components(schemas(FeedPage, LookupAnswer, crate::webhooks::payload::Payload, crate::webhooks::payload::Data)),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// The keys of each role, and the user's own token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = |auth: HttpAuthScheme, what: &str| {
            let mut http = Http::new(auth);
            http.description = Some(what.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme("admin", scheme(HttpAuthScheme::Bearer, "An admin key (MULTITOKENS_ADMIN_KEY)"));
        components.add_security_scheme(
            "introspect",
            scheme(HttpAuthScheme::Basic, "An introspection client's id and secret (MULTITOKENS_INTROSPECT_CLIENTS)"),
        );
        components.add_security_scheme(
            "internal",
            scheme(HttpAuthScheme::Bearer, "An internal key (MULTITOKENS_INTERNAL_KEY): the stock filter's"),
        );
        components.add_security_scheme("token", scheme(HttpAuthScheme::Bearer, "The user's own token"));
    }
}

/// A token lifetime: whole seconds, or `"never"`.
pub fn ttl_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(MAX_TTL_SECS)),
        )
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).enum_values(Some(["never"])))
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Null)))
        .description(Some("seconds, or \"never\""))
}

/// A token's scopes: at most 64, each 1 to 128 visible ASCII characters without quotes or
/// backslashes.
pub fn scopes_schema() -> impl Into<RefOr<Schema>> {
    let scope = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some(r"^[!#-\[\]-~]+$"));
    ArrayBuilder::new().items(scope).max_items(Some(64)).description(Some("scopes granted to the token"))
}

/// The security webhooks the companion sends (OpenAPI 3.1 `webhooks`, which utoipa does not
/// write): one per event type, each a signed `POST` of a `WebhookPayload`.
fn add_webhooks(description: &mut serde_json::Value) {
    use crate::webhooks::payload::EVENT_TYPES;
    use serde_json::json;
    let types = json!(EVENT_TYPES);
    if let Some(kind) = description.pointer_mut("/components/schemas/WebhookPayload/properties/type") {
        kind["enum"] = types;
    }
    let header = |name: &str, what: &str| json!({"name": name, "in": "header", "required": true, "description": what, "schema": {"type": "string"}});
    let parameters = json!([
        header("webhook-id", "`msg_<audit stream id>`: the same on every attempt (deduplicate by it)"),
        header("webhook-timestamp", "Unix seconds of this attempt"),
        header(
            "webhook-signature",
            "`v1,<base64 HMAC-SHA256 of <id>.<timestamp>.<body>>` per secret, space-separated (Standard Webhooks)"
        ),
    ]);
    let hooks: serde_json::Map<String, serde_json::Value> = EVENT_TYPES
        .iter()
        .map(|kind| {
            let post = json!({"post": {
                "summary": format!("{kind}, to each `[[webhooks]]` endpoint subscribed to it"),
                "parameters": parameters,
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/WebhookPayload"}}}},
                "responses": {"2XX": {"description": "taken; any other answer, or none, is retried with backoff"}},
            }});
            (kind.to_string(), post)
        })
        .collect();
    description["webhooks"] = serde_json::Value::Object(hooks);
}

/// The description as pretty JSON (what `/openapi.json` serves and docs/openapi.json holds).
pub fn json() -> String {
    let (_, description) = api::routes().split_for_parts();
    let Ok(mut value) = serde_json::to_value(&description) else { return String::new() };
    add_webhooks(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
