//! The plain data of Assay: what is stored and what crosses the API. No behaviour that needs
//! storage or scripts lives here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Id = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GlobalRole {
    Admin,
    Member,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    Expert,
    /// Checks others' answers in the QA queue (and reviews like an expert).
    Reviewer,
    Lead,
}

impl ProjectRole {
    /// Reviewers and leads work the QA queue (admins too, without a role).
    pub fn checks_quality(self) -> bool {
        matches!(self, ProjectRole::Reviewer | ProjectRole::Lead)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User {
    pub id: Id,
    pub username: String,
    /// Argon2id PHC string; never serialized to clients (see [`UserView`]).
    pub password_hash: String,
    pub role: GlobalRole,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub hourly_rate: Option<f64>,
    pub active: bool,
    /// Bumped to revoke every token issued to this user.
    pub token_generation: u64,
    pub created_at: i64,
}

/// What clients see of a user.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserView {
    pub id: Id,
    pub username: String,
    pub role: GlobalRole,
    pub skills: Vec<String>,
    pub hourly_rate: Option<f64>,
    pub active: bool,
    pub created_at: i64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            role: u.role,
            skills: u.skills.clone(),
            hourly_rate: u.hourly_rate,
            active: u.active,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Project {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub instructions: String,
    pub rubric: String,
    pub router: String,
    pub reviews_per_task: u32,
    pub lease_seconds: u64,
    #[serde(default)]
    pub estimate_minutes: Option<f64>,
    /// Fraction (0–1) of completing submissions sampled into QA, chosen per submission.
    #[serde(default)]
    pub qa_rate: f64,
    /// Reviewers in QA don't see who wrote an answer.
    #[serde(default = "yes")]
    pub qa_blind: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

fn yes() -> bool {
    true
}

/// What a task in QA waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QaKind {
    /// A verdict on each unchecked submission.
    Qa,
    /// A final answer chosen or written by a reviewer.
    Adjudicate,
}

/// A reviewer's verdict on one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Reject,
    Fix,
}

/// The QA record of a submission, kept beside it (the answer itself is never changed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct QaRecord {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub reviewer: Id,
    /// A fix: the reviewer's answer, validated and scored by the submission's rubric version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_scores: Option<Value>,
    pub at: i64,
}

/// A task's adjudicated final answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct FinalAnswer {
    pub task_id: Id,
    pub answer: Value,
    pub scores: Value,
    pub reviewer: Id,
    pub rubric_version: String,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Open,
    InQa,
    Complete,
    Archived,
    /// Quarantined: its form, the router's pick or its page failed for it alone (see
    /// [`BrokenTask`]); not handed out until an admin retries it or a new version of what
    /// failed comes.
    Broken,
}

/// Which step of serving a task failed for it alone.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BrokenStage {
    /// The rubric's `criteria(task)`: the form could not be built.
    #[default]
    Form,
    /// The router's `pick` threw whenever this task was among the candidates.
    Pick,
    /// The review page could not be rendered for this task.
    Render,
}

/// Why a task was quarantined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct BrokenTask {
    pub task_id: Id,
    pub project_id: Id,
    /// The script or render error, with its plugin, function and position (capped).
    pub error: String,
    #[serde(default)]
    pub stage: BrokenStage,
    pub rubric: String,
    pub rubric_version: String,
    /// The router (name, version) whose `pick` failed, for stage `pick`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<(String, String)>,
    pub at: i64,
}

/// An imported item. Its content never changes after import; the mutable part lives in
/// [`TaskStatus`], kept small because the hand-out reads and writes it constantly.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Task {
    pub id: Id,
    pub project_id: Id,
    #[serde(default)]
    pub external_id: Option<String>,
    pub data: Value,
    #[serde(default)]
    pub meta: Value,
    #[serde(default)]
    pub gold: Option<Value>,
    pub created_at: i64,
}

/// Routing decision and progress of one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct TaskStatus {
    pub task_id: Id,
    pub project_id: Id,
    pub state: TaskState,
    /// Skill an expert needs to take the task; `None` means every expert of the project.
    #[serde(default)]
    pub pool: Option<String>,
    /// Independent reviews the task needs.
    pub reviews: u32,
    /// Higher first.
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub estimate_minutes: Option<f64>,
    /// Experts whose submission counts toward `reviews`, in order.
    #[serde(default)]
    pub done_by: Vec<Id>,
    /// Experts who skipped it; it is not offered to them again.
    #[serde(default)]
    pub skipped_by: Vec<Id>,
    /// Router version that made the decision.
    #[serde(default)]
    pub router_version: Option<String>,
    /// The task carries a gold answer (for quality checks).
    #[serde(default)]
    pub gold: bool,
    /// While `InQa`: what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaKind>,
}

/// A task to be written by an import, with its routing already decided.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub external_id: Option<String>,
    /// The task's data as uploaded JSON text (an object): stored as it came.
    pub data: Box<serde_json::value::RawValue>,
    pub meta: Value,
    pub gold: Option<Value>,
    pub routing: Routing,
}

/// What a router's `route` decided for a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Routing {
    pub pool: Option<String>,
    pub reviews: u32,
    pub priority: i64,
    pub estimate_minutes: Option<f64>,
    pub router_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentStatus {
    Active,
    Submitted,
    Skipped,
    Released,
    Expired,
}

/// A lease: one task handed to one expert until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Assignment {
    pub id: Id,
    pub task_id: Id,
    pub project_id: Id,
    pub expert_id: Id,
    pub status: AssignmentStatus,
    pub served_at: i64,
    pub expires_at: i64,
    /// Last heartbeat (or the hand-out), for server-measured active time.
    pub last_seen_at: i64,
    /// Active seconds accumulated from heartbeats so far.
    pub active_seconds: f64,
    /// Random value carried by the assignment token; a submit must present it.
    pub fence: u64,
    pub rubric: String,
    pub rubric_version: String,
    pub router: String,
    pub router_version: String,
    #[serde(default)]
    pub submission_id: Option<Id>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Submission {
    pub id: Id,
    pub task_id: Id,
    pub project_id: Id,
    pub assignment_id: Id,
    pub expert_id: Id,
    pub answer: Value,
    /// Numbers computed by the rubric's `score`.
    pub scores: Value,
    pub rubric: String,
    pub rubric_version: String,
    pub router: String,
    pub router_version: String,
    pub served_at: i64,
    pub submitted_at: i64,
    pub active_seconds: f64,
    /// Its QA verdict, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaRecord>,
}

impl Submission {
    /// Whether it counts: not rejected in QA.
    pub fn counts(&self) -> bool {
        self.qa
            .as_ref()
            .is_none_or(|q| q.verdict != Verdict::Reject)
    }

    /// The answer that stands: a reviewer's fix where there is one.
    pub fn standing_answer(&self) -> &Value {
        match &self.qa {
            Some(QaRecord {
                fixed_answer: Some(fixed),
                ..
            }) => fixed,
            _ => &self.answer,
        }
    }
}

/// Counts kept per project (never computed by scanning).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ProjectCounts {
    pub tasks: u64,
    pub open: u64,
    pub in_qa: u64,
    pub complete: u64,
    pub archived: u64,
    #[serde(default)]
    pub broken: u64,
    pub submissions: u64,
    /// QA verdicts given, and final answers chosen.
    #[serde(default)]
    pub accepted: u64,
    #[serde(default)]
    pub rejected: u64,
    #[serde(default)]
    pub fixed: u64,
    #[serde(default)]
    pub adjudicated: u64,
}

/// A stored version of a plugin's source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct PluginVersion {
    pub hash: String,
    pub kind: PluginKind,
    pub name: String,
    pub source: String,
    pub first_seen_at: i64,
}

/// Append-only record of who did what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct AuditEvent {
    pub at: i64,
    pub actor: Option<Id>,
    pub action: AuditAction,
    pub object: String,
    #[serde(default)]
    pub detail: Value,
}

/// The fields that differ between two versions of a record, as `{field: {before, after}}`, for
/// an audit event's detail. Fields in `secret` are named as "changed" without their values;
/// long strings are cut so an event stays small.
pub fn audit_changes<T: Serialize>(before: &T, after: &T, secret: &[&str]) -> Value {
    const KEEP_CHARS: usize = 200;
    let cut = |v: &Value| match v {
        Value::String(s) if s.len() > KEEP_CHARS => {
            Value::String(format!("{}…", crate::text::truncate(s, KEEP_CHARS)))
        }
        other => other.clone(),
    };
    let (Ok(Value::Object(b)), Ok(Value::Object(a))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (field, after) in &a {
        let before = b.get(field).unwrap_or(&Value::Null);
        if before == after {
            continue;
        }
        let change = if secret.contains(&field.as_str()) {
            Value::String("changed".into())
        } else {
            serde_json::json!({"before": cut(before), "after": cut(after)})
        };
        out.insert(field.clone(), change);
    }
    Value::Object(out)
}

/// What an audit event records. Stored by its dotted name, which is also what clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AuditAction {
    #[serde(rename = "auth.login")]
    Login,
    #[serde(rename = "auth.logout")]
    Logout,
    #[serde(rename = "user.create")]
    UserCreate,
    #[serde(rename = "user.update")]
    UserUpdate,
    #[serde(rename = "user.revoke")]
    UserRevoke,
    #[serde(rename = "project.create")]
    ProjectCreate,
    #[serde(rename = "project.update")]
    ProjectUpdate,
    #[serde(rename = "project.member")]
    ProjectMember,
    #[serde(rename = "project.reroute")]
    ProjectReroute,
    #[serde(rename = "tasks.import")]
    TasksImport,
    #[serde(rename = "task.view")]
    TaskView,
    #[serde(rename = "task.lease")]
    TaskLease,
    #[serde(rename = "task.skip")]
    TaskSkip,
    #[serde(rename = "task.release")]
    TaskRelease,
    #[serde(rename = "task.submit")]
    TaskSubmit,
    #[serde(rename = "task.quarantine")]
    TaskQuarantine,
    #[serde(rename = "task.retry")]
    TaskRetry,
    #[serde(rename = "qa.lease")]
    QaLease,
    #[serde(rename = "qa.verdict")]
    QaVerdict,
    #[serde(rename = "qa.final")]
    QaFinal,
    #[serde(rename = "lease.expire")]
    LeaseExpire,
    #[serde(rename = "plugin.load")]
    PluginLoad,
    #[serde(rename = "plugin.load_failed")]
    PluginLoadFailed,
    #[serde(rename = "export")]
    Export,
    #[serde(rename = "backup")]
    Backup,
}

/// The two kinds of script plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Rubric,
    Router,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rubric => "rubric",
            PluginKind::Router => "router",
        }
    }
}
