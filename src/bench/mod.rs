//! `assay bench`: the load generator. It starts its own server on a temporary data folder (or
//! uses `--url`), creates a project and experts, imports generated tasks, runs experts in a closed
//! next+submit loop, exports what was submitted, and reports rates, latency percentiles, errors,
//! duplicate hand-outs, and the server's CPU and peak memory. Loopback only; bounded in time.
//!
//! It is part of the `assay` binary, not of the server library: one module per scenario
//! (`review_loop`, `pages`, `reload`, `isolation`, `crash`; import and export are measured here), plus the server
//! under test (`target`), HTTP helpers (`http`) and the report (`report`).

mod crash;
mod http;
mod isolation;
mod pages;
mod qa;
mod reload;
mod report;
mod review_loop;
mod target;

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;

use assay::cli::bench_args::BenchArgs;
use crash::*;
use http::*;
use isolation::*;
use pages::*;
use reload::*;
use report::*;
use review_loop::*;
use target::*;

/// Settings the bench's own server gets for a scenario.
fn server_env(scenario: &str) -> Vec<(&'static str, &'static str)> {
    match scenario {
        // The stalled rubric must run into the wall-clock limit, not the operation count.
        "isolation" => vec![("ASSAY_SCRIPTING__MAX_OPERATIONS", "1000000000000")],
        _ => Vec::new(),
    }
}

pub(crate) const ADMIN_PASSWORD: &str = "bench-admin-password";

pub async fn run(args: BenchArgs) -> Result<(), String> {
    if args.scenario == "crash" {
        if args.url.is_some() {
            return Err("the crash scenario kills its own server; it takes no --url".into());
        }
        let mut report = Report {
            scenario: args.scenario.clone(),
            experts: args.experts,
            tasks: args.tasks,
            reviews: 2,
            ..Default::default()
        };
        run_crash(&args, &mut report).await?;
        print_report(&report, args.json);
        return Ok(());
    }
    let target = match &args.url {
        Some(url) => Target {
            url: url.clone(),
            rubrics: args.rubrics.clone(),
            child: None,
            _dir: None,
            env: Vec::new(),
        },
        None => start_server(&server_env(&args.scenario))?,
    };
    let url = target.url.clone();
    let api = format!("{url}/api/v1");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let admin = match &args.token {
        Some(t) => t.clone(),
        None => {
            let pw = if args.url.is_some() {
                std::env::var("ASSAY_PASSWORD")
                    .map_err(|_| "give --token or ASSAY_PASSWORD for --url")?
            } else {
                ADMIN_PASSWORD.to_owned()
            };
            login(&client, &url, "admin", &pw).await?
        }
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let live = match (args.scenario.as_str(), &target.rubrics) {
        ("reload", Some(dir)) => {
            Some(prepare_live_rubric(&client, &api, &admin, dir, &run_id).await?)
        }
        ("reload", None) => return Err("the reload scenario needs --rubrics DIR with --url".into()),
        _ => None,
    };
    let rubric_name = live
        .as_ref()
        .map_or("pairwise_preference".to_owned(), |(name, _)| name.clone());
    let (status, project) = call(
        &client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        &admin,
        Some(json!({
            "name": format!("bench {run_id}"), "rubric": rubric_name, "router": "fixed_overlap",
            "reviews_per_task": args.reviews, "lease_seconds": 600,
            // The qa scenario samples every submission into QA.
            "qa_rate": if args.scenario == "qa" { 1.0 } else { 0.0 }
        })),
    )
    .await?;
    if status != 201 {
        return Err(format!("cannot create the bench project: {project}"));
    }
    let pid = project["id"].as_u64().ok_or("no project id")?;
    let mut report = Report {
        scenario: args.scenario.clone(),
        experts: args.experts,
        tasks: args.tasks,
        reviews: args.reviews,
        ..Default::default()
    };

    report.import = Some(import_generated(&client, &api, &admin, pid, args.tasks).await?);

    if args.scenario == "pages" {
        report.pages = Some(run_pages(&client, &url, &api, &admin, pid, &run_id).await?);
    } else if args.scenario != "import" {
        let reloader = live.map(|(name, file)| {
            let (client, api, admin) = (client.clone(), api.clone(), admin.clone());
            let (warmup, duration, interval) = (args.warmup, args.duration, args.interval);
            tokio::spawn(async move {
                reload_loop(
                    &client, &api, &admin, &name, &file, warmup, duration, interval,
                )
                .await
            })
        });
        if args.scenario == "isolation" {
            run_isolation(
                &args,
                &client,
                &api,
                &admin,
                pid,
                &run_id,
                &target,
                &mut report,
            )
            .await?;
        } else {
            run_loop(
                &args,
                &client,
                &api,
                &admin,
                pid,
                &run_id,
                &target,
                &mut report,
            )
            .await?;
        }
        if let Some(r) = reloader {
            report.reload = Some(r.await.map_err(|e| e.to_string())??);
        }
        if args.scenario == "qa" {
            let run = qa::run_qa(&client, &api, &admin, pid, &run_id, args.duration).await?;
            report.qa = Some(run);
        }
        // Export everything submitted.
        let started = Instant::now();
        let res = client
            .get(format!("{api}/projects/{pid}/export?format=jsonl"))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = res.bytes_stream();
        let (mut n, mut lines) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            n += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        report.export = Some(Rate {
            items: lines,
            seconds: secs,
            tasks_per_s: lines as f64 / secs,
            mb_per_s: n as f64 / 1e6 / secs,
        });
    }
    if let Some((_, rss)) = target.pid().and_then(proc_stat) {
        report.peak_rss_mb = Some(rss);
    }
    print_report(&report, args.json);
    Ok(())
}
