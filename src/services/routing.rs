//! Re-routing: after a router changes, apply its current `route` to every open task of a
//! project. Progress (who has reviewed, who skipped) is kept; only pool, overlap, priority and
//! estimate change. A task whose new overlap is already met completes.

use serde::Serialize;

use super::{audit, blocking, durable};
use crate::app::AppState;
use crate::domain::{Id, TaskState};
use crate::error::{AppError, AppResult};
use crate::queue::Queue;
use crate::scripting::{router, rubric, PluginKind};

#[derive(Debug, Serialize)]
pub struct RerouteReport {
    pub rerouted: u64,
    pub completed: u64,
    pub router_version: String,
}

pub async fn reroute(state: &AppState, actor: Id, project: Id) -> AppResult<RerouteReport> {
    state.queue.loaded().await;
    let st = state.clone();
    let report = blocking(move || {
        let project = st.store.project(project)?.ok_or(AppError::NotFound("project"))?;
        let plugin = st.registry.current(PluginKind::Router, &project.router)?;
        let q = st.queue.project(project.id);
        let open: Vec<Id> = {
            let queue = Queue::lock(&q);
            queue.open_tasks()
        };
        let mut report = RerouteReport { rerouted: 0, completed: 0, router_version: plugin.hash.clone() };
        for chunk in open.chunks(500) {
            // Route without the lock (scripts may be slow), then apply to the current status.
            let mut decided = Vec::with_capacity(chunk.len());
            for &id in chunk {
                let Some(task) = st.store.task(id)? else { continue };
                let routing = router::route(&st.registry.engine, &plugin, &project, &rubric::task_value(&task))?;
                decided.push((id, routing));
            }
            let mut queue = Queue::lock(&q);
            for (id, routing) in decided {
                let Some(slot) = queue.slot(id) else { continue };
                let mut status = slot.status.clone();
                status.pool = routing.pool;
                status.reviews = routing.reviews;
                status.priority = routing.priority;
                status.estimate_minutes = routing.estimate_minutes;
                status.router_version = routing.router_version;
                if status.done_by.len() >= status.reviews as usize {
                    status.state = TaskState::Complete;
                    report.completed += 1;
                }
                st.store.put_task_status(&status)?;
                queue.set_status(status);
                report.rerouted += 1;
            }
        }
        audit(&st, Some(actor), "project.reroute", format!("project:{}", project.id), serde_json::json!({"rerouted": report.rerouted, "router_version": report.router_version}));
        Ok(report)
    })
    .await?;
    durable(state).await?;
    Ok(report)
}
