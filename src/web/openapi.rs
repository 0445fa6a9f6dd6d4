//! The OpenAPI 3.1 document of `/api/v1`, built from the code. Every route of
//! [`crate::app::API_ROUTES`] must have an operation here (building the document fails
//! otherwise, and a test builds it); request bodies and queries are the JSON Schemas of the
//! very types the handlers deserialize, and responses those of the types they serialize
//! (schemars, JSON Schema 2020-12 as OpenAPI 3.1 uses it). Each operation also lists the
//! error statuses any call may get, with the one error body.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::domain::{
    AuditEvent, BrokenTask, PluginVersion, ProjectCounts, Submission, Task, TaskStatus, UserView,
};
use crate::error::ScriptError;
use crate::review::{Handout, ImportReport, QaHandout, RerouteReport, VerdictBody};
use crate::scripting::registry::PluginStatus;
use crate::services::{
    projects::ProjectInput, projects::ProjectPatch, users::NewUser, users::UserPatch,
};
use crate::store::AuditCheck;
use crate::web::api;

/// Who may call an operation, for its description (the authorization matrix test checks it).
#[derive(Clone, Copy)]
enum Who {
    Anyone,
    Member,
    Lead,
    Admin,
}

/// One operation: what it takes and what it answers on success.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    who: Who,
    query: Option<Value>,
    body: Option<(&'static str, Value)>,
    /// (status, description, the response's `content` object).
    ok: Vec<(u16, &'static str, Option<Value>)>,
    /// Whether a body must be sent (when there is one).
    body_required: bool,
}

/// The statuses any operation may answer with the error body.
const ERRORS: &[(u16, &str)] = &[
    (
        400,
        "The request is malformed (a field, the JSON, the query)",
    ),
    (401, "No valid session or token"),
    (403, "The caller may not do this"),
    (404, "No such route or object"),
    (408, "The request body came too slowly"),
    (
        409,
        "The state does not allow it (a lease lost, a duplicate, the last admin)",
    ),
    (413, "The body is over its limit"),
    (415, "The body's content type is not accepted"),
    (422, "The input breaks a rule; `errors` names each field"),
    (429, "Too many attempts; retry later"),
    (503, "The server is loading or its storage is degraded"),
    (507, "The disk is full"),
];

struct Doc {
    gen: SchemaGenerator,
}

impl Doc {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        self.gen.subschema_for::<T>().to_value()
    }
    fn json<T: JsonSchema>(&mut self) -> Option<Value> {
        json_of(self.schema::<T>())
    }
}

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}
fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
fn json_of(schema: Value) -> Option<Value> {
    Some(json!({"application/json": {"schema": schema}}))
}
fn int() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn operations(d: &mut Doc) -> Vec<Op> {
    use Who::*;
    let status_word = |words: &[&str]| object(json!({"status": {"enum": words}}), &["status"]);
    let lease = object(
        json!({"id": int(), "expires_at": {"type": "integer"}, "active_seconds": {"type": "number"}}),
        &["id", "expires_at"],
    );
    let token_body = d.schema::<api::review::TokenBody>();
    let qa_token_body = d.schema::<api::qa::TokenBody>();
    let end_body = d.schema::<api::review::EndBody>();
    let member = object(
        json!({"user_id": int(), "username": {"type": "string"}, "role": d.schema::<crate::domain::ProjectRole>()}),
        &["user_id", "username", "role"],
    );
    let task_and_status = object(
        json!({"task": d.schema::<Task>(), "status": d.schema::<TaskStatus>()}),
        &["task"],
    );
    // What an expert sees of a task: its content, not its progress.
    let content = object(
        json!({"id": int(), "external_id": {"type": ["string", "null"]}, "data": {}}),
        &["id", "data"],
    );
    let task_or_content = object(
        json!({"task": {"anyOf": [d.schema::<Task>(), content]}, "status": d.schema::<TaskStatus>()}),
        &["task"],
    );
    let project = d.schema::<api::projects::ProjectView>();
    let user = d.schema::<UserView>();
    let submission = d.schema::<Submission>();
    let mine = array(object(
        json!({
            "id": int(), "task_id": int(), "project_id": int(), "submitted_at": {"type": "integer"},
            "active_seconds": {"type": "number"}, "answer": {}, "verdict": {},
            "reason": {"type": ["string", "null"]}, "fixed_answer": {},
        }),
        &["id", "task_id", "project_id", "submitted_at"],
    ));
    let version_row = array(object(
        json!({"hash": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
               "first_seen_at": {"type": "integer"}, "current": {"type": "boolean"}}),
        &["hash", "kind", "name", "current"],
    ));
    let op = |method, path, summary, who, query, body, ok| Op {
        method,
        path,
        summary,
        who,
        query,
        body,
        ok,
        body_required: true,
    };
    let mut ops = vec![
        op(
            "post",
            "/projects/{id}/next",
            "Lease the next task (or the one held)",
            Member,
            None,
            None,
            vec![
                (200, "A lease and its task", d.json::<Handout>()),
                (204, "Nothing left for the caller", None),
            ],
        ),
        op(
            "post",
            "/assignments/{id}/submit",
            "Submit an answer under a lease",
            Member,
            None,
            Some(("application/json", d.schema::<api::review::SubmitBody>())),
            vec![
                (201, "Stored and durable", json_of(submission.clone())),
                (
                    200,
                    "A retry: the first result",
                    json_of(submission.clone()),
                ),
            ],
        ),
        op(
            "post",
            "/auth/login",
            "Sign in",
            Anyone,
            None,
            Some(("application/json", d.schema::<api::auth::Login>())),
            vec![(
                200,
                "A session token (also set as a cookie)",
                json_of(object(
                    json!({"token": {"type": "string"}, "expires_at": {"type": "integer"}, "user": user.clone()}),
                    &["token", "expires_at", "user"],
                )),
            )],
        ),
        op(
            "post",
            "/auth/logout",
            "End the calling session for good",
            Member,
            None,
            None,
            vec![(204, "Ended", None)],
        ),
        op(
            "get",
            "/auth/me",
            "The caller",
            Member,
            None,
            None,
            vec![(200, "The caller", json_of(user.clone()))],
        ),
        op(
            "get",
            "/users",
            "Every user",
            Admin,
            None,
            None,
            vec![(200, "Users", json_of(array(user.clone())))],
        ),
        op(
            "post",
            "/users",
            "Create a user",
            Admin,
            None,
            Some(("application/json", d.schema::<NewUser>())),
            vec![(201, "Created", json_of(user.clone()))],
        ),
        op(
            "get",
            "/users/{id}",
            "A user (members: only themselves)",
            Member,
            None,
            None,
            vec![(200, "The user", json_of(user.clone()))],
        ),
        op(
            "patch",
            "/users/{id}",
            "Change a user (role, password, skills, rate, active)",
            Admin,
            None,
            Some(("application/json", d.schema::<UserPatch>())),
            vec![(200, "Changed", json_of(user.clone()))],
        ),
        op(
            "post",
            "/users/{id}/revoke",
            "End every session of a user",
            Admin,
            None,
            None,
            vec![(200, "Revoked", json_of(user.clone()))],
        ),
        op(
            "get",
            "/projects",
            "The projects the caller may see",
            Member,
            None,
            None,
            vec![(200, "Projects", json_of(array(project.clone())))],
        ),
        op(
            "post",
            "/projects",
            "Create a project",
            Admin,
            None,
            Some(("application/json", d.schema::<ProjectInput>())),
            vec![(201, "Created", json_of(project.clone()))],
        ),
        op(
            "get",
            "/projects/{id}",
            "A project",
            Member,
            None,
            None,
            vec![(200, "The project", json_of(project.clone()))],
        ),
        op(
            "patch",
            "/projects/{id}",
            "Change a project",
            Admin,
            None,
            Some(("application/json", d.schema::<ProjectPatch>())),
            vec![(200, "Changed", json_of(project.clone()))],
        ),
        op(
            "get",
            "/projects/{id}/members",
            "A project's members",
            Lead,
            None,
            None,
            vec![(200, "Members", json_of(array(member.clone())))],
        ),
        op(
            "put",
            "/projects/{id}/members/{user}",
            "Add a member or change their role",
            Admin,
            None,
            Some(("application/json", d.schema::<api::projects::MemberInput>())),
            vec![(
                200,
                "Set",
                json_of(object(
                    json!({"project_id": int(), "user_id": int(), "role": {}}),
                    &["project_id", "user_id", "role"],
                )),
            )],
        ),
        op(
            "delete",
            "/projects/{id}/members/{user}",
            "Remove a member",
            Admin,
            None,
            None,
            vec![(204, "Removed", None)],
        ),
        op(
            "get",
            "/projects/{id}/stats",
            "A project's counts",
            Member,
            None,
            None,
            vec![(200, "Counts", d.json::<ProjectCounts>())],
        ),
        op(
            "post",
            "/projects/{id}/reroute",
            "Route the open tasks again, all or nothing",
            Admin,
            None,
            None,
            vec![(200, "Rerouted", d.json::<RerouteReport>())],
        ),
        op(
            "get",
            "/projects/{id}/broken",
            "Quarantined tasks and why",
            Lead,
            None,
            None,
            vec![(
                200,
                "Broken tasks",
                json_of(array(d.schema::<BrokenTask>())),
            )],
        ),
        op(
            "post",
            "/projects/{id}/broken/retry",
            "Put quarantined tasks back in the queue",
            Lead,
            None,
            Some(("application/json", d.schema::<api::tasks::RetryBroken>())),
            vec![(
                200,
                "Reopened",
                json_of(object(json!({"reopened": int()}), &["reopened"])),
            )],
        ),
        op(
            "post",
            "/projects/{id}/tasks",
            "Import tasks (JSON, JSON Lines or Label Studio JSON), all or nothing",
            Admin,
            None,
            Some((
                "application/json",
                json!({"description": "A JSON array of tasks, JSON Lines (one task per line), or a Label Studio export; each task `{external_id?, data, meta?, gold?}` or a bare object taken as `data`"}),
            )),
            vec![(201, "Imported", d.json::<ImportReport>())],
        ),
        op(
            "get",
            "/projects/{id}/tasks",
            "A page of tasks with their state",
            Lead,
            Some(d.schema::<api::tasks::Page>()),
            None,
            vec![(200, "Tasks", json_of(array(task_and_status.clone())))],
        ),
        op(
            "get",
            "/projects/{id}/export",
            "Stream the submissions (JSON Lines)",
            Lead,
            Some(d.schema::<api::export::ExportQuery>()),
            None,
            vec![(
                200,
                "One JSON object per line; a failure after the start ends with an `error` line",
                Some(json!({"application/x-ndjson": {"schema": {"type": "string"}}})),
            )],
        ),
        op(
            "get",
            "/tasks/{id}",
            "A task (members: content only)",
            Member,
            None,
            None,
            vec![(200, "The task", json_of(task_or_content))],
        ),
        op(
            "get",
            "/tasks/{id}/submissions",
            "A task's submissions (members: their own)",
            Member,
            None,
            None,
            vec![(200, "Submissions", json_of(array(submission.clone())))],
        ),
        op(
            "post",
            "/assignments/{id}/heartbeat",
            "Keep a lease alive",
            Member,
            None,
            Some(("application/json", token_body.clone())),
            vec![(200, "Extended", json_of(lease.clone()))],
        ),
        op(
            "post",
            "/assignments/{id}/skip",
            "Give a task back for good",
            Member,
            None,
            Some(("application/json", end_body.clone())),
            vec![(200, "Skipped", json_of(status_word(&["skipped"])))],
        ),
        op(
            "post",
            "/assignments/{id}/release",
            "Give a task back for someone else",
            Member,
            None,
            Some(("application/json", end_body)),
            vec![(200, "Released", json_of(status_word(&["released"])))],
        ),
        op(
            "post",
            "/projects/{id}/qa/next",
            "Lease the next QA item (or the one held)",
            Member,
            None,
            None,
            vec![
                (200, "A QA lease and its item", d.json::<QaHandout>()),
                (204, "Nothing waits", None),
            ],
        ),
        op(
            "post",
            "/qa/{id}/heartbeat",
            "Keep a QA lease alive",
            Member,
            None,
            Some(("application/json", qa_token_body.clone())),
            vec![(200, "Extended", json_of(lease))],
        ),
        op(
            "post",
            "/qa/{id}/release",
            "Give a QA item back",
            Member,
            None,
            Some(("application/json", qa_token_body)),
            vec![(200, "Released", json_of(status_word(&["released"])))],
        ),
        op(
            "post",
            "/qa/{id}/verdict",
            "Judge a QA item's answers, or give an adjudication's final answer",
            Member,
            None,
            Some(("application/json", d.schema::<VerdictBody>())),
            vec![
                (
                    201,
                    "Stored and durable",
                    json_of(json!({"type": "object"})),
                ),
                (
                    200,
                    "A retry: the first result",
                    json_of(json!({"type": "object"})),
                ),
            ],
        ),
        op(
            "get",
            "/me/submissions",
            "The caller's submissions with their verdicts",
            Member,
            Some(d.schema::<api::qa::Since>()),
            None,
            vec![(200, "Submissions", json_of(mine))],
        ),
        op(
            "get",
            "/plugins",
            "Every plugin and its state",
            Member,
            None,
            None,
            vec![(200, "Plugins", json_of(array(d.schema::<PluginStatus>())))],
        ),
        op(
            "get",
            "/plugins/{kind}/{name}/versions",
            "A plugin's stored versions",
            Lead,
            None,
            None,
            vec![(200, "Versions", json_of(version_row))],
        ),
        op(
            "get",
            "/plugins/{kind}/{name}/versions/{hash}",
            "One version with its source",
            Lead,
            None,
            None,
            vec![(200, "The version", d.json::<PluginVersion>())],
        ),
        op(
            "get",
            "/audit",
            "Audit events, newest first (JSON or CSV)",
            Admin,
            Some(d.schema::<api::audit::AuditQuery>()),
            None,
            vec![(
                200,
                "Events (CSV with `format=csv`)",
                Some(json!({
                    "application/json": {"schema": array(d.schema::<AuditEvent>())},
                    "text/csv": {"schema": {"type": "string"}},
                })),
            )],
        ),
        op(
            "get",
            "/audit/verify",
            "Check the audit hash chain",
            Admin,
            None,
            None,
            vec![(200, "What the check found", d.json::<AuditCheck>())],
        ),
        op(
            "get",
            "/openapi.json",
            "This document",
            Anyone,
            None,
            None,
            vec![(
                200,
                "The OpenAPI 3.1 document",
                json_of(json!({"type": "object"})),
            )],
        ),
        op(
            "get",
            "/admin/backup",
            "A consistent backup of the whole database",
            Admin,
            None,
            None,
            vec![(
                200,
                "The backup file (its SHA-256 in X-Assay-Backup-Sha256)",
                Some(
                    json!({"application/octet-stream": {"schema": {"type": "string", "contentEncoding": "binary"}}}),
                ),
            )],
        ),
    ];
    // Retrying every quarantined task takes no body at all.
    for op in &mut ops {
        if op.path == "/projects/{id}/broken/retry" {
            op.body_required = false;
        }
    }
    ops
}

/// The names of a path's parameters: ids are integers, plugin kinds, names and hashes text.
fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|p| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(|name| {
            let schema = match name {
                "kind" => json!({"type": "string", "enum": ["rubric", "router"]}),
                "name" | "hash" => json!({"type": "string"}),
                _ => json!({"type": "integer", "minimum": 1, "maximum": u64::MAX}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// A query type's properties as query parameters.
fn query_params(d: &Doc, schema: &Value) -> Vec<Value> {
    let resolved = resolve(d, schema);
    let required: Vec<&str> = resolved["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    resolved["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| {
                    json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": s})
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Follows a `$ref` into the generator's definitions.
fn resolve(d: &Doc, schema: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            d.gen
                .definitions()
                .get(name)
                .cloned()
                .unwrap_or(Value::Null)
        }
        None => schema.clone(),
    }
}

fn who(w: Who) -> &'static str {
    match w {
        Who::Anyone => "Anyone.",
        Who::Member => "Any signed-in user (project members where a project is named).",
        Who::Lead => "The project's leads and admins.",
        Who::Admin => "Admins.",
    }
}

/// The document, or the routes it misses.
pub fn document() -> Result<Value, String> {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut d = Doc {
        gen: settings.into_generator(),
    };
    let ops = operations(&mut d);
    let error = d.schema::<ErrorBody>();
    let mut paths = Map::new();
    let mut missing = Vec::new();
    for (method, path) in crate::app::API_ROUTES {
        let Some(op) = ops.iter().find(|o| o.method == *method && o.path == *path) else {
            missing.push(format!("{} {path}", method.to_uppercase()));
            continue;
        };
        let mut parameters = path_params(path);
        if let Some(q) = &op.query {
            parameters.extend(query_params(&d, q));
        }
        let mut responses = Map::new();
        for (status, description, content) in &op.ok {
            let mut r = json!({"description": description});
            if let Some(content) = content {
                r["content"] = content.clone();
            }
            responses.insert(status.to_string(), r);
        }
        for (status, description) in ERRORS {
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": error.clone()}}}),
            );
        }
        let mut operation = json!({
            "operationId": format!("{method}{}", path.replace(['/', '{', '}'], "_")),
            "summary": op.summary,
            "description": who(op.who),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some((media, schema)) = &op.body {
            operation["requestBody"] =
                json!({"required": op.body_required, "content": { *media: {"schema": schema} }});
        }
        if let Who::Anyone = op.who {
            operation["security"] = json!([]);
        }
        let entry = paths
            .entry(format!("/api/v1{path}"))
            .or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    if let Some(op) = ops
        .iter()
        .find(|o| !crate::app::API_ROUTES.contains(&(o.method, o.path)))
    {
        missing.push(format!(
            "documented but not routed: {} {}",
            op.method, op.path
        ));
    }
    if !missing.is_empty() {
        return Err(format!("the API document misses {}", missing.join(", ")));
    }
    let schemas = d.gen.take_definitions(true);
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Assay",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The JSON API of Assay, a self-hosted review server for expert AI-training work. Authenticate with `Authorization: Bearer <token>` from `POST /api/v1/auth/login`.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }))
}

/// The one error body (see `web::error`).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// A stable code, e.g. `invalid_field`, `lease_expired`, `storage_full`.
    code: String,
    message: String,
    request_id: String,
    /// Each fault: a field (`{field, message}`) or an import's record (`{record, line?,
    /// message}`).
    errors: Option<Vec<Fault>>,
    script: Option<ScriptError>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct Fault {
    field: Option<String>,
    record: Option<u64>,
    line: Option<u64>,
    message: String,
}

/// `GET /api/v1/openapi.json`. The document depends on the code alone: built once.
pub async fn serve() -> actix_web::HttpResponse {
    static DOCUMENT: std::sync::OnceLock<Result<Value, String>> = std::sync::OnceLock::new();
    match DOCUMENT.get_or_init(document) {
        Ok(doc) => actix_web::HttpResponse::Ok().json(doc),
        Err(e) => actix_web::HttpResponse::InternalServerError()
            .json(json!({"code": "internal", "message": e})),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = super::document().expect("the document covers every route");
        let operations: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| p.as_object().map_or(0, |m| m.len()))
            .sum();
        assert_eq!(operations, crate::app::API_ROUTES.len());
        for (method, path) in crate::app::API_ROUTES {
            let op = &doc["paths"][format!("/api/v1{path}")][*method];
            assert!(op["responses"]["403"].is_object(), "{method} {path}");
        }
    }
}
