//! The demo project loaded by `assay serve --demo`: a dozen prompts with two model responses
//! each, the shipped pairwise rubric, and two demo experts. Idempotent: a second start finds
//! everything in place.

use crate::app::AppState;
use crate::domain::{GlobalRole, ProjectRole};
use crate::services::{blocking, projects, users};

const TASKS: &str = include_str!("../demo/tasks.jsonl");
const PROJECT_NAME: &str = "Demo: which answer is better?";
pub const EXPERTS: [&str; 2] = ["alice", "bob"];
pub const EXPERT_PASSWORD: &str = "review-demo-1";

const INSTRUCTIONS: &str = "\
## Your task
Read the prompt and both responses, then say which response is **better overall**.

* Judge accuracy first, then safety, completeness and clarity.
* A confident wrong answer is worse than a cautious correct one.
* Use a strong preference (3) only when one answer is clearly unusable; explain why in at least 80 characters.
";

pub async fn seed(state: &AppState) -> Result<(), String> {
    let st = state.clone();
    let (admin, existing) = blocking(move || {
        let admin = st
            .store()
            .user_by_name("admin")?
            .filter(|u| u.role == GlobalRole::Admin);
        let existing = st
            .store()
            .projects()?
            .into_iter()
            .find(|p| p.name == PROJECT_NAME);
        Ok((admin, existing))
    })
    .await
    .map_err(|e| e.to_string())?;
    let admin = admin.ok_or("the demo needs the `admin` user")?;
    let project = match existing {
        Some(p) => p,
        None => projects::create(
            &state.core,
            admin.id,
            projects::ProjectInput {
                name: PROJECT_NAME.into(),
                instructions: INSTRUCTIONS.into(),
                rubric: "pairwise_preference".into(),
                router: "fixed_overlap".into(),
                reviews_per_task: 2,
                lease_seconds: Some(900),
                estimate_minutes: Some(3.0),
                qa_rate: 0.2,
                qa_blind: true,
            },
        )
        .await
        .map_err(|e| format!("cannot create the demo project: {e}"))?,
    };
    for name in EXPERTS {
        let st = state.clone();
        let user = blocking(move || Ok(st.store().user_by_name(name)?))
            .await
            .map_err(|e| e.to_string())?;
        let user = match user {
            Some(u) => u,
            None => users::create(
                &state.core,
                admin.id,
                users::NewUser {
                    username: name.into(),
                    password: EXPERT_PASSWORD.into(),
                    role: GlobalRole::Member,
                    skills: vec![],
                    hourly_rate: Some(90.0),
                },
            )
            .await
            .map_err(|e| format!("cannot create demo expert {name}: {e}"))?,
        };
        projects::set_member(
            &state.core,
            admin.id,
            project.id,
            user.id,
            Some(ProjectRole::Expert),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let st = state.clone();
    let p = project.clone();
    let report = blocking(move || {
        let dir = st.config.storage.data.join("spool");
        std::fs::create_dir_all(&dir).map_err(crate::error::AppError::internal)?;
        let mut file =
            tempfile::NamedTempFile::new_in(&dir).map_err(crate::error::AppError::internal)?;
        std::io::Write::write_all(&mut file, TASKS.as_bytes())
            .map_err(crate::error::AppError::internal)?;
        let report = st.core.import_file(&p, file.path(), admin.id)?;
        st.store().flush()?;
        Ok(report)
    })
    .await
    .map_err(|e| format!("cannot import the demo tasks: {e}"))?;
    println!(
        "demo project {} `{}`: {} task(s) imported, {} already present; experts {} (password {})",
        project.id,
        project.name,
        report.imported,
        report.duplicates,
        EXPERTS.join(", "),
        EXPERT_PASSWORD
    );
    Ok(())
}
