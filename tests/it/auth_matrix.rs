//! The authorization matrix: every JSON API route (taken from the server's own route table)
//! against every kind of caller, with who may use it. A route added without a row here fails
//! the test. "May use" means the request is not refused for who is asking (not 401/403); it
//! may still fail for its input (400, 404, 409, 422), since most calls here carry none.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Anonymous,
    /// An expert of another project.
    Outsider,
    Expert,
    Reviewer,
    Lead,
    Admin,
}

const EVERYONE: [Who; 6] = [
    Who::Anonymous,
    Who::Outsider,
    Who::Expert,
    Who::Reviewer,
    Who::Lead,
    Who::Admin,
];

/// Who may use a route.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Anyone,
    SignedIn,
    /// Members of the project and admins.
    Member,
    /// Reviewers and leads of the project, and admins.
    Reviewer,
    /// Leads of the project and admins.
    Lead,
    /// Leads of any project and admins.
    AnyLead,
    /// Leads and admins, and the expert working on the task (here the expert holds the
    /// matrix's task: their `next`, earlier in the route table, leased it).
    Worker,
    Admin,
}

impl Rule {
    fn admits(self, who: Who) -> bool {
        use Who::*;
        match self {
            Rule::Anyone => true,
            Rule::SignedIn => who != Anonymous,
            Rule::Member => matches!(who, Expert | Reviewer | Lead | Admin),
            Rule::Reviewer => matches!(who, Reviewer | Lead | Admin),
            Rule::Lead | Rule::AnyLead => matches!(who, Lead | Admin),
            Rule::Worker => matches!(who, Expert | Lead | Admin),
            Rule::Admin => who == Admin,
        }
    }
}

/// The matrix: every route of `assay::app::API_ROUTES` must be here.
fn rules() -> HashMap<(&'static str, &'static str), Rule> {
    use Rule::*;
    HashMap::from([
        (("post", "/auth/login"), Anyone),
        (("post", "/auth/logout"), SignedIn),
        (("get", "/auth/me"), SignedIn),
        (("get", "/users"), Admin),
        (("post", "/users"), Admin),
        (("get", "/users/{id}"), Admin),
        (("patch", "/users/{id}"), Admin),
        (("post", "/users/{id}/revoke"), Admin),
        (("get", "/projects"), SignedIn),
        (("post", "/projects"), Admin),
        (("get", "/projects/{id}"), Member),
        (("patch", "/projects/{id}"), Admin),
        (("get", "/projects/{id}/members"), Lead),
        (("put", "/projects/{id}/members/{user}"), Admin),
        (("delete", "/projects/{id}/members/{user}"), Admin),
        (("get", "/projects/{id}/stats"), Member),
        (("post", "/projects/{id}/reroute"), Admin),
        (("get", "/projects/{id}/broken"), Lead),
        (("post", "/projects/{id}/broken/retry"), Lead),
        (("post", "/projects/{id}/tasks"), Admin),
        (("get", "/projects/{id}/tasks"), Lead),
        (("get", "/projects/{id}/export"), Lead),
        (("get", "/tasks/{id}"), Worker),
        // Members see their own submissions of a task, leads and admins all of them.
        (("get", "/tasks/{id}/submissions"), Member),
        (("post", "/projects/{id}/next"), Member),
        // Lease actions: any signed-in caller may try; the lease token decides (409 here).
        (("post", "/assignments/{id}/submit"), SignedIn),
        (("post", "/assignments/{id}/heartbeat"), SignedIn),
        (("post", "/assignments/{id}/skip"), SignedIn),
        (("post", "/assignments/{id}/release"), SignedIn),
        (("post", "/projects/{id}/qa/next"), Reviewer),
        (("post", "/qa/{id}/heartbeat"), SignedIn),
        (("post", "/qa/{id}/release"), SignedIn),
        (("post", "/qa/{id}/verdict"), SignedIn),
        (("get", "/me/submissions"), SignedIn),
        (("get", "/plugins"), SignedIn),
        (("get", "/plugins/{kind}/{name}/versions"), AnyLead),
        (("get", "/plugins/{kind}/{name}/versions/{hash}"), AnyLead),
        (("get", "/audit"), Admin),
        (("get", "/audit/verify"), Admin),
        (("get", "/admin/backup"), Admin),
        (("get", "/openapi.json"), Anyone),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_who_it_should() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("matrix", 1)).await;
    let q = s.project(&admin, pairwise_project("elsewhere", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("m", 3)).await;
    let mut users: HashMap<&str, (u64, &str)> = HashMap::new();
    for (name, project, role) in [
        ("outsider", q, "expert"),
        ("expert", p, "expert"),
        ("reviewer", p, "reviewer"),
        ("lead", p, "lead"),
        ("target", p, "expert"),
    ] {
        let (uid, _) = s.expert(&admin, name, &[]).await;
        s.add_member(&admin, project, uid, role).await;
        users.insert(name, (uid, name));
    }
    let (_, tasks) = s.get(&admin, &format!("/api/v1/projects/{p}/tasks")).await;
    let task = tasks[0]["task"]["id"].as_u64().unwrap();
    let (_, versions) = s
        .get(
            &admin,
            "/api/v1/plugins/rubric/pairwise_preference/versions",
        )
        .await;
    let hash = versions[0]["hash"].as_str().unwrap().to_owned();
    let target = users["target"].0;

    let rules = rules();
    let table: Vec<(&str, &str)> = assay::app::API_ROUTES.to_vec();
    for route in &table {
        assert!(
            rules.contains_key(route),
            "route {} {} has no row in the authorization matrix",
            route.0,
            route.1
        );
    }
    let mut failures = Vec::new();
    let mut sessions: HashMap<String, String> = HashMap::new();
    for &(method, pattern) in &table {
        let rule = rules[&(method, pattern)];
        let path = pattern
            .replace("/projects/{id}", &format!("/projects/{p}"))
            .replace("/users/{id}", &format!("/users/{target}"))
            .replace("{user}", &target.to_string())
            .replace("/tasks/{id}", &format!("/tasks/{task}"))
            .replace("{id}", "999999")
            .replace("{kind}", "rubric")
            .replace("{name}", "pairwise_preference")
            .replace("{hash}", &hash);
        for who in EVERYONE {
            // One session per caller, made again after a logout ended it.
            let token = match who {
                Who::Anonymous => None,
                other => {
                    let name = format!("{other:?}").to_lowercase();
                    if !sessions.contains_key(&name) {
                        let password = if other == Who::Admin {
                            ADMIN_PASSWORD
                        } else {
                            EXPERT_PASSWORD
                        };
                        sessions.insert(name.clone(), s.login(&name, password).await);
                    }
                    if pattern == "/auth/logout" {
                        sessions.remove(&name)
                    } else {
                        sessions.get(&name).cloned()
                    }
                }
            };
            let body = match method {
                "get" | "delete" => None,
                _ if pattern.ends_with("/members/{user}") => Some(json!({"role": "expert"})),
                _ => Some(json!({})),
            };
            let method_ = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, answer) = s
                .request(method_, token.as_deref(), &format!("/api/v1{path}"), body)
                .await;
            let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
            let expected_refusal = if who == Who::Anonymous {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            let ok = if rule.admits(who) {
                !refused && !status.is_server_error()
            } else {
                status == expected_refusal
            };
            if !ok {
                failures.push(format!(
                    "{method} {pattern} as {who:?}: {status} {}",
                    short(&answer)
                ));
            }
        }
        // The membership a DELETE took away comes back for the next rows.
        if method == "delete" {
            s.add_member(&admin, p, target, "expert").await;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    text.chars().take(160).collect()
}

/// The OpenAPI document is served to anyone and names every route of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_the_route_table() {
    let s = Server::start().await;
    let res = s
        .client
        .get(format!("{}/api/v1/openapi.json", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in assay::app::API_ROUTES {
        let op = &doc["paths"][format!("/api/v1{path}")][*method];
        assert!(op.is_object(), "{method} {path} is not documented");
    }
    // A known path with another method: 405 naming the methods it takes.
    let res = s
        .client
        .delete(format!("{}/api/v1/auth/me", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET");
}
