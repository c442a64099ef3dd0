//! The HTTPS REST API (`/api/v1/…`) and its OpenAPI document (`/api/openapi.json`).
//!
//! Every handler has a `#[utoipa::path]` description and is listed in [`ApiDoc`]; the router in
//! [`router`] and the document list the same routes (a test walks the document and calls every
//! route). JSON request bodies are limited to 1 MiB; malformed JSON is answered with 400,
//! invalid values with 422 (see [`error`]).
//!
//! Areas, one module each: [`auth`] (login, tokens), [`users`], [`inventory`] (hosts, VMs),
//! [`repositories`] (repositories, proxies, restore points), [`settings`], [`jobs`], [`sessions`]
//! (sessions, tasks, task logs), [`restore`], [`agents`] (enrolment, heartbeats, certificate renewal, revocation),
//! [`throttle`] (network throttling rules).

pub mod agent_work;
pub mod agents;
pub mod audit;
pub mod audit_trail;
pub mod auth;
pub use cairn_api::checks;
pub mod error;
pub mod extract;
pub mod instant;
pub mod inventory;
pub mod jobs;
pub mod repositories;
pub mod restore;
pub mod restore_vm;
pub mod sessions;
pub mod settings;
pub mod throttle;
pub mod totp;
pub mod users;
pub mod vm_control;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::routing::{get, post};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;
pub use cairn_api::health::Health;
use error::{ApiError, ErrorBody};

/// Largest accepted JSON request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A JSON request body: a JSON object (else 422); malformed JSON is a 400 `{"error": …}`, a
/// body that does not fit the type a 422 naming the field, a body over [`MAX_BODY_BYTES`] a 413.
/// Numbers with an integral value are integers whatever their spelling (`5`, `5.0`, `5e0`: JSON
/// Schema counts all of them as integers).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        let axum::Json(mut value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::invalid("the request body must be a JSON object"));
        }
        integral_numbers_as_integers(&mut value);
        serde_path_to_error::deserialize(value).map(ApiJson).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ApiError::invalid(format!("the request body: {inner}"))
            } else {
                ApiError::invalid(format!("{path}: {inner}"))
            }
        })
    }
}

/// Turns every number with an integral value that fits 64 bits (`5.0`, `-2e3`) into an integer.
fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                if f >= 0.0 && f < u64::MAX as f64 {
                    *value = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

/// A path parameter; a value that does not parse is a 400 `{"error": …}`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; values that do not parse are a 400 `{"error": …}`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Whether the server is up (no token needed).
#[utoipa::path(get, path = "/api/v1/health", tag = "misc", security(()),
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The OpenAPI 3.1 document of this API (no token needed).
#[utoipa::path(get, path = "/api/openapi.json", tag = "misc", security(()),
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

/// The OpenAPI document (with the server version).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cairn_<64 hex digits>")
                    .description(Some(
                        "A login token (POST /api/v1/auth/login) or an API token (POST /api/v1/tokens).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds to every operation the answers the framework around the handlers may give, where the
/// handler's own list lacks them: 400 (a path or query parameter, or the JSON, does not parse),
/// 401 and 403 (a token is needed; a token good only for setting up a second factor), 404 (no
/// object with a path parameter's id), 413, 415 and 422 (a body too large, not JSON, or not of
/// the request's type) and 500 (a failure of the server, logged with its cause).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let open = op.security.as_ref().is_some_and(|s| {
                    s.iter()
                        .all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
                });
                let has_query = op.parameters.as_ref().is_some_and(|ps| !ps.is_empty());
                let has_body = op.request_body.is_some();
                let mut add = |code: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if has_path_params || has_query || has_body {
                    add("400", "A path or query parameter, or the body's JSON, does not parse");
                }
                if !open {
                    add("401", "No token, or an unknown or expired one");
                    add(
                        "403",
                        "The caller's role is too low, or the token is only good for setting up a second factor",
                    );
                }
                if has_path_params {
                    add("404", "No such object");
                }
                if has_body {
                    add("413", "The body is over 1 MiB");
                    add("415", "The body is not JSON (Content-Type: application/json)");
                    add("422", "The body is not of the request's type, or a value is invalid");
                }
                add("500", "The server failed (logged with its cause)");
            }
        }
    }
}

/// The OpenAPI description of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "cairn backup server API", description = "Manage and run backups of virtual machines: \
        inventory, repositories, jobs, sessions and restores. Authenticate with `Authorization: Bearer TOKEN`; \
        errors are `{\"error\": \"…\"}` with the HTTP status."),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    paths(
        health, openapi_json,
        auth::login, auth::logout, auth::whoami, auth::change_password,
        auth::create_token, auth::list_tokens, auth::delete_token,
        totp::setup, totp::confirm, totp::disable, totp::reset,
        users::list_users, users::create_user, users::update_user, users::delete_user,
        audit::list, audit::verify,
        inventory::list_hosts, inventory::add_host, inventory::rescan_host, inventory::delete_host,
        inventory::list_vms, inventory::get_vm,
        vm_control::start_vm, vm_control::stop_vm,
        vm_control::forget_checkpoints,
        repositories::list_repositories, repositories::create_repository, repositories::update_repository,
        repositories::delete_repository, repositories::list_points,
        repositories::list_proxies, repositories::update_proxy,
        settings::get_settings, settings::update_settings,
        jobs::list_jobs, jobs::create_job, jobs::get_job, jobs::update_job, jobs::delete_job,
        jobs::enable_job, jobs::disable_job, jobs::run_job, jobs::stop_job,
        sessions::list_sessions, sessions::get_session, sessions::task_log, sessions::stop_session,
        restore::restore,
        restore_vm::restore_vm,
        instant::start,
        instant::list,
        instant::migrate,
        instant::stop,
        agents::create_token, agents::enroll, agents::heartbeat, agents::list_agents, agents::revoke_agent,
        agents::renew_certificate, agents::request_renewal,
        agent_work::work, agent_work::events,
        throttle::list_rules, throttle::create_rule, throttle::delete_rule,
    ),
    tags(
        (name = "auth", description = "Login, logout and API tokens"),
        (name = "users", description = "Users and roles (administrator)"),
        (name = "audit", description = "The audit log: who did what and when (administrator)"),
        (name = "inventory", description = "Hosts and the VMs and disks found on them"),
        (name = "repositories", description = "Repositories, restore points, proxies and settings"),
        (name = "jobs", description = "Backup jobs"),
        (name = "sessions", description = "Job runs, their tasks and logs"),
        (name = "restore", description = "Restores"),
        (name = "agents", description = "Agents (data movers): enrolment, heartbeats, certificate renewal, revocation"),
        (name = "throttling", description = "Network throttling rules between data movers"),
        (name = "misc", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// The API router with `state`: every route of the contract, a JSON 404 for unknown paths and a
/// 1 MiB body limit.
pub fn router(state: AppState) -> Router {
    use axum::routing::{delete, patch};
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/whoami", get(auth::whoami))
        .route("/api/v1/auth/password", post(auth::change_password))
        .route("/api/v1/auth/totp", post(totp::setup))
        .route("/api/v1/auth/totp/confirm", post(totp::confirm))
        .route("/api/v1/auth/totp/disable", post(totp::disable))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/verify", get(audit::verify))
        .route("/api/v1/tokens", get(auth::list_tokens).post(auth::create_token))
        .route("/api/v1/tokens/{id}", delete(auth::delete_token))
        .route("/api/v1/users", get(users::list_users).post(users::create_user))
        .route(
            "/api/v1/users/{id}",
            patch(users::update_user).delete(users::delete_user),
        )
        .route("/api/v1/users/{id}/totp", delete(totp::reset))
        .route("/api/v1/hosts", get(inventory::list_hosts).post(inventory::add_host))
        .route("/api/v1/hosts/{id}", delete(inventory::delete_host))
        .route("/api/v1/hosts/{id}/rescan", post(inventory::rescan_host))
        .route("/api/v1/vms", get(inventory::list_vms))
        .route("/api/v1/vms/{id}", get(inventory::get_vm))
        .route("/api/v1/vms/{id}/start", post(vm_control::start_vm))
        .route("/api/v1/vms/{id}/stop", post(vm_control::stop_vm))
        .route(
            "/api/v1/vms/{id}/forget-checkpoints",
            post(vm_control::forget_checkpoints),
        )
        .route(
            "/api/v1/repositories",
            get(repositories::list_repositories).post(repositories::create_repository),
        )
        .route(
            "/api/v1/repositories/{id}",
            patch(repositories::update_repository).delete(repositories::delete_repository),
        )
        .route("/api/v1/repositories/{id}/points", get(repositories::list_points))
        .route("/api/v1/proxies", get(repositories::list_proxies))
        .route("/api/v1/proxies/{id}", patch(repositories::update_proxy))
        .route(
            "/api/v1/settings",
            get(settings::get_settings).patch(settings::update_settings),
        )
        .route("/api/v1/jobs", get(jobs::list_jobs).post(jobs::create_job))
        .route(
            "/api/v1/jobs/{id}",
            get(jobs::get_job).put(jobs::update_job).delete(jobs::delete_job),
        )
        .route("/api/v1/jobs/{id}/enable", post(jobs::enable_job))
        .route("/api/v1/jobs/{id}/disable", post(jobs::disable_job))
        .route("/api/v1/jobs/{id}/run", post(jobs::run_job))
        .route("/api/v1/jobs/{id}/stop", post(jobs::stop_job))
        .route("/api/v1/sessions", get(sessions::list_sessions))
        .route("/api/v1/sessions/{id}", get(sessions::get_session))
        .route("/api/v1/sessions/{id}/stop", post(sessions::stop_session))
        .route("/api/v1/tasks/{id}/log", get(sessions::task_log))
        .route("/api/v1/restores", post(restore::restore))
        .route("/api/v1/restores/vm", post(restore_vm::restore_vm))
        .route("/api/v1/instant-recoveries", get(instant::list).post(instant::start))
        .route("/api/v1/instant-recoveries/{name}", delete(instant::stop))
        .route("/api/v1/instant-recoveries/{name}/migrate", post(instant::migrate))
        .route("/api/v1/agents", get(agents::list_agents))
        .route("/api/v1/agents/tokens", post(agents::create_token))
        .route("/api/v1/agents/enroll", post(agents::enroll))
        .route("/api/v1/agents/heartbeat", post(agents::heartbeat))
        .route("/api/v1/agents/renew", post(agents::renew_certificate))
        .route("/api/v1/agents/{id}/renew", post(agents::request_renewal))
        .route("/api/v1/agents/work", post(agent_work::work))
        .route("/api/v1/agents/tasks/{task}/events", post(agent_work::events))
        .route("/api/v1/agents/{id}", delete(agents::revoke_agent))
        .route(
            "/api/v1/throttle-rules",
            get(throttle::list_rules).post(throttle::create_rule),
        )
        .route("/api/v1/throttle-rules/{id}", delete(throttle::delete_rule))
        .fallback(|| async { ApiError::not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this route",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::audit_trail::middleware,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(read_whole_body))
        .with_state(state)
}

/// Most bytes of an oversized body read (and dropped) before answering 413.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads every request body completely before the request is handled. A request refused before
/// its body was read (401 without a token, 404) would otherwise end with the body half sent, which
/// over HTTP/2 resets the stream and clients see "Stream error in the HTTP/2 framing layer"
/// instead of the answer. Bodies over [`MAX_BODY_BYTES`] are read to the end (up to 64 MiB) and
/// answered 413.
async fn read_whole_body(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let (parts, mut body) = request.into_parts();
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return ApiError::bad_request("the request body could not be read").into_response();
        };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY_BYTES {
                kept.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
    }
    if total > MAX_BODY_BYTES {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}

/// The address of the client of a request (`0.0.0.0` when the server was not given it, e.g.
/// in-process tests of the router).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_response_and_marks_open_routes() {
        let doc = serde_json::to_value(openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let open = matches!(
                    (method.as_str(), path.as_str()),
                    ("get", "/api/v1/health")
                        | ("get", "/api/openapi.json")
                        | ("post", "/api/v1/auth/login")
                        // Agents: the enrolment token in the body, then the client certificate.
                        | ("post", "/api/v1/agents/enroll")
                        | ("post", "/api/v1/agents/heartbeat")
                        | ("post", "/api/v1/agents/renew")
                        | ("post", "/api/v1/agents/work")
                        | ("post", "/api/v1/agents/tasks/{task}/events")
                );
                if open {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                } else {
                    assert!(
                        op.get("security").is_none(),
                        "{method} {path} must need the bearer token"
                    );
                }
                for (code, response) in op["responses"].as_object().unwrap() {
                    assert!(
                        response["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{method} {path} {code} has no description"
                    );
                }
                assert!(op["summary"].as_str().is_some(), "{method} {path} has no summary");
            }
        }
        assert_eq!(operations, 68);
    }

    /// Every route that may change something has an action name for the audit log (or is one
    /// of the agents' routes that are never recorded).
    #[test]
    fn every_changing_route_has_an_audit_action() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|m| *m != "get") {
                let m = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
                assert!(
                    crate::http::audit_trail::action_name(&m, path).is_some()
                        || crate::http::audit_trail::unrecorded(&m, path),
                    "{method} {path} has no audit action name"
                );
            }
        }
    }

    /// Every pattern the document states compiles, and the shared rules are the ones the server
    /// checks with (`checks`).
    #[test]
    fn the_documents_patterns_are_the_servers_rules() {
        fn walk(v: &serde_json::Value, key: Option<&str>, out: &mut Vec<(String, String)>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(p) = map.get("pattern").and_then(|p| p.as_str()) {
                        out.push((key.unwrap_or_default().to_owned(), p.to_owned()));
                    }
                    for (k, child) in map {
                        walk(child, Some(k), out);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, key, out)),
                _ => {}
            }
        }
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut patterns = Vec::new();
        walk(&doc, None, &mut patterns);
        assert!(patterns.len() > 20, "{patterns:?}");
        for (field, pattern) in &patterns {
            regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{field}: {pattern}: {e}"));
            if ["path", "target_path", "folder", "qga"].contains(&field.as_str()) {
                assert_eq!(pattern, checks::ABSOLUTE_PATH_PATTERN, "{field}");
            }
            if pattern.contains(r"\x7f-\x9f") {
                assert_eq!(pattern, checks::DISPLAY_NAME_PATTERN, "{field}");
            }
        }
        assert!(patterns.iter().any(|(_, p)| p == checks::DISPLAY_NAME_PATTERN));
        assert!(patterns.iter().any(|(_, p)| p == checks::ABSOLUTE_PATH_PATTERN));
    }
}
