//! Client commands: thin calls to the REST API with human-readable output (or `--json`).

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{BackupCommand, Cli, DbCommand, TenantCommand, TokenCommand};
use crate::up::ADMIN_TOKEN_FILE;

/// `--token`, else the admin token a local `dormouse up` wrote into the data directory.
pub fn token_or_admin(cli: &Cli) -> anyhow::Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.trim().to_owned());
    }
    let path = cli.data_dir.join(ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path).map(|t| t.trim().to_owned()).with_context(|| {
        format!("no token: pass --token or set DORMOUSE_TOKEN (could not read {})", path.display())
    })
}

async fn call(
    cli: &Cli,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Option<Value>> {
    let token = token_or_admin(cli)?;
    let url = format!("{}{path}", cli.api.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("calling {url}"))?;
    let status = response.status();
    if status == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let body: Value =
        response.json().await.with_context(|| format!("reading the answer from {url}"))?;
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("request failed");
        let code = body["error"]["code"].as_str().unwrap_or("");
        bail!("{message} ({code}, HTTP {})", status.as_u16());
    }
    Ok(Some(body))
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

pub async fn tenant(cli: &Cli, cmd: &TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name } => {
            let body =
                call(cli, Method::POST, "/v1/tenants", Some(json!({ "name": name }))).await?;
            let body = body.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!("tenant {} created (id {})", text(&body, "name"), text(&body, "id"));
                println!("admin token (expires {}):", text(&body, "token_expires_at"));
                println!("{}", text(&body, "token"));
                println!("\nuse it:  export DORMOUSE_TOKEN={}", text(&body, "token"));
            }
        }
        TenantCommand::List => {
            let body = call(cli, Method::GET, "/v1/tenants", None).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!("{:<24} {:<16} CREATED", "NAME", "ID");
                for t in body["tenants"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<16} {}",
                        text(t, "name"),
                        text(t, "id"),
                        text(t, "created_at")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn db(cli: &Cli, cmd: &DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Create {
            name,
            engine,
            plan,
            idle_timeout,
            lazy,
            allow,
            from_backup,
            from_database,
            at,
            expires_in,
        } => {
            let restore = match (from_backup, from_database) {
                (Some(id), _) => json!({ "backup": id }),
                (None, Some(db)) => json!({ "database": db, "time": at }),
                (None, None) => Value::Null,
            };
            let req = json!({
                "restore": restore,
                "ttl_seconds": expires_in.map(|d| d.as_secs().max(1)),
                "name": name,
                "engine": engine,
                "plan": plan,
                "idle_timeout_seconds": idle_timeout,
                "lazy": lazy,
                "allowed_cidrs": allow,
            });
            let request = call(cli, Method::POST, "/v1/databases", Some(req));
            let body = if restore.is_null() {
                request.await?
            } else {
                with_restore_progress(cli, name, request).await?
            };
            let body = body.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!(
                    "database {} ({}, plan {}) is {}",
                    text(&body, "name"),
                    text(&body, "engine"),
                    text(&body, "plan"),
                    text(&body, "status")
                );
                println!("connect: {}", text(&body["connection"], "command"));
                println!("uri:     {}", text(&body["connection"], "uri"));
                if let Some(tls) = body["connection"]["tls_uri"].as_str() {
                    println!("tls uri: {tls}");
                }
                println!(
                    "the token in these lines is limited to this database and expires {}",
                    text(&body["token"], "expires_at")
                );
            }
        }
        DbCommand::List => {
            let body = call(cli, Method::GET, "/v1/databases", None).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!("{:<24} {:<7} {:<7} {:<10} ENDPOINT", "NAME", "ENGINE", "PLAN", "STATUS");
                for d in body["databases"].as_array().into_iter().flatten() {
                    let c = &d["connection"];
                    println!(
                        "{:<24} {:<7} {:<7} {:<10} {}:{}",
                        text(d, "name"),
                        text(d, "engine"),
                        text(d, "plan"),
                        text(d, "status"),
                        text(c, "host"),
                        c["port"]
                    );
                }
            }
        }
        DbCommand::Show { name } => {
            let body = call(cli, Method::GET, &format!("/v1/databases/{name}"), None)
                .await?
                .unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                for key in ["name", "engine", "plan", "status", "created_at"] {
                    println!("{key:<11} {}", text(&body, key));
                }
                let idle = body["idle_timeout_seconds"].as_u64().unwrap_or_default();
                println!(
                    "{:<11} {}",
                    "idle after",
                    if idle == 0 { "never".into() } else { format!("{idle}s") }
                );
                println!("{:<11} {}", "allowed", allowed(&body));
                if let Some(ms) = body["last_wake_ms"].as_u64() {
                    println!("{:<11} {ms} ms", "last wake");
                }
                let failure = &body["last_error"];
                if failure.is_object() {
                    let starts = failure["failed_starts"].as_u64().unwrap_or_default();
                    let in_a_row = match starts {
                        0 => String::new(),
                        1 => "; 1 failed start in a row".into(),
                        n => format!("; {n} failed starts in a row"),
                    };
                    println!(
                        "{:<11} {} (at {}{in_a_row})",
                        "last error",
                        text(failure, "reason"),
                        text(failure, "at"),
                    );
                }
                println!("{:<11} {}", "connect", text(&body["connection"], "command"));
                println!("{:<11} {}", "uri", text(&body["connection"], "uri"));
                if let Some(tls) = body["connection"]["tls_uri"].as_str() {
                    println!("{:<11} {tls}", "tls uri");
                }
            }
        }
        DbCommand::Set { name, idle_timeout, allow, allow_any } => {
            let mut req = json!({ "idle_timeout_seconds": idle_timeout });
            // Left out unless asked for: an absent field leaves the list as it is.
            if *allow_any {
                req["allowed_cidrs"] = Value::Null;
            } else if !allow.is_empty() {
                req["allowed_cidrs"] = json!(allow);
            }
            let body =
                call(cli, Method::PATCH, &format!("/v1/databases/{name}"), Some(req)).await?;
            let body = body.unwrap_or_default();
            print_state(cli, &body);
            if !cli.json && (*allow_any || !allow.is_empty()) {
                println!("it accepts clients from {}", allowed(&body));
            }
        }
        DbCommand::Restore { name, backup, time } => {
            let req = json!({ "backup": backup, "time": time });
            let path = format!("/v1/databases/{name}/restore");
            let request = call(cli, Method::POST, &path, Some(req));
            let body = with_restore_progress(cli, name, request).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                let from = match (backup, time) {
                    (Some(id), _) => format!("from {id}"),
                    (None, Some(t)) => format!("to {t}"),
                    (None, None) => String::new(),
                };
                println!(
                    "database {name} restored {from}; it is {}",
                    text(&body["database"], "status")
                );
                if let Some(id) = body["previous_data"]["id"].as_str() {
                    println!("what it held before is backup {id} (restore it to undo)");
                }
            }
        }
        DbCommand::Suspend { name } => {
            let body =
                call(cli, Method::POST, &format!("/v1/databases/{name}/suspend"), None).await?;
            print_state(cli, &body.unwrap_or_default());
        }
        DbCommand::Resume { name } => {
            let body =
                call(cli, Method::POST, &format!("/v1/databases/{name}/resume"), None).await?;
            print_state(cli, &body.unwrap_or_default());
        }
        DbCommand::Delete { name, yes, now } => {
            if !*yes && !confirm_deletion(name, *now)? {
                bail!("not deleted: the name typed was not {name:?}");
            }
            let path = format!("/v1/databases/{name}{}", if *now { "?now=true" } else { "" });
            call(cli, Method::DELETE, &path, None).await?;
            if cli.json {
                print_json(&json!({ "deleted": name }));
            } else if *now {
                println!("database {name} deleted, without a final backup");
            } else {
                println!(
                    "database {name} deleted; its data is kept 7 days: `dormouse db undelete {name}`"
                );
            }
        }
        DbCommand::Undelete { name } => {
            let path = format!("/v1/databases/{name}/undelete");
            let body = call(cli, Method::POST, &path, None).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!("database {name} is back ({}); connect:", text(&body, "status"));
                println!("{}", text(&body["connection"], "command"));
            }
        }
    }
    Ok(())
}

/// Asks for the database's name to be typed, as a guard against deleting the wrong one.
fn confirm_deletion(name: &str, now: bool) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("deleting needs --yes when nothing can be typed (stdin is not a terminal)");
    }
    let what = if now { "for good, without a final backup" } else { "(undeletable for 7 days)" };
    print!("delete database {name} {what}? type its name to confirm: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == name)
}

/// A database's allowlist in words: its CIDRs, or "any address".
fn allowed(body: &Value) -> String {
    let cidrs: Vec<&str> =
        body["allowed_cidrs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if cidrs.is_empty() { "any address".into() } else { cidrs.join(", ") }
}

fn print_state(cli: &Cli, body: &Value) {
    if cli.json {
        print_json(body);
    } else {
        println!("database {} is {}", text(body, "name"), text(body, "status"));
    }
}

pub async fn token(cli: &Cli, cmd: &TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { database, role, ttl } => {
            let req = json!({
                "database": database,
                "role": role,
                "ttl_seconds": ttl.map(|d| d.as_secs().max(1)),
            });
            let body = call(cli, Method::POST, "/v1/tokens", Some(req)).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!(
                    "token {} ({}, expires {}):",
                    text(&body, "id"),
                    text(&body, "role"),
                    text(&body, "expires_at")
                );
                println!("{}", text(&body, "token"));
            }
        }
        TokenCommand::Revoke { id } => {
            call(cli, Method::DELETE, &format!("/v1/tokens/{id}"), None).await?;
            if cli.json {
                print_json(&json!({ "revoked": id }));
            } else {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

pub async fn backup(cli: &Cli, cmd: &BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create { database, name, wait, incremental } => {
            let path = format!("/v1/databases/{database}/backups");
            let req = json!({ "name": name, "incremental": incremental });
            let body = call(cli, Method::POST, &path, Some(req)).await?;
            let mut body = body.unwrap_or_default();
            if *wait {
                body = wait_for_backup(cli, text(&body, "id")).await?;
            }
            if cli.json {
                print_json(&body);
            } else {
                print_backup(&body);
            }
            if *wait && text(&body, "status") == "failed" {
                bail!("backup {} failed: {}", text(&body, "id"), text(&body, "reason"));
            }
        }
        BackupCommand::List { database } => {
            let path = match database {
                Some(db) => format!("/v1/databases/{db}/backups"),
                None => "/v1/backups".to_owned(),
            };
            let body = call(cli, Method::GET, &path, None).await?.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!(
                    "{:<20} {:<20} {:<11} {:<10} {:>10} {:<20} NAME",
                    "ID", "DATABASE", "KIND", "STATUS", "SIZE", "CREATED"
                );
                for b in body["backups"].as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<20} {:<11} {:<10} {:>10} {:<20} {}",
                        text(b, "id"),
                        text(b, "database"),
                        text(b, "kind"),
                        text(b, "status"),
                        human_bytes(b["size_bytes"].as_u64().unwrap_or_default()),
                        text(b, "created_at"),
                        text(b, "name"),
                    );
                }
            }
        }
        BackupCommand::Show { id } => {
            let body = call(cli, Method::GET, &format!("/v1/backups/{id}"), None)
                .await?
                .unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                print_backup(&body);
            }
        }
        BackupCommand::Schedule { database, every, keep, keep_days } => {
            let path = format!("/v1/databases/{database}/backup-schedule");
            let change = every.is_some() || keep.is_some() || keep_days.is_some();
            let body = if change {
                let req = json!({ "every": every, "keep_count": keep, "keep_days": keep_days });
                call(cli, Method::PATCH, &path, Some(req)).await?
            } else {
                call(cli, Method::GET, &path, None).await?
            };
            let body = body.unwrap_or_default();
            if cli.json {
                print_json(&body);
            } else {
                println!("{:<10} {}", "every", text(&body, "every"));
                println!(
                    "{:<10} the newest {} and any younger than {} days",
                    "keeps", body["keep_count"], body["keep_days"]
                );
                println!("{:<10} {}", "next run", text(&body, "next_run_at"));
                if let Some(last) = body["last_run_at"].as_str() {
                    println!("{:<10} {last}: {}", "last run", text(&body, "last_result"));
                }
            }
        }
        BackupCommand::Delete { id } => {
            call(cli, Method::DELETE, &format!("/v1/backups/{id}"), None).await?;
            if cli.json {
                print_json(&json!({ "deleted": id }));
            } else {
                println!("backup {id} deleted");
            }
        }
    }
    Ok(())
}

/// Polls a backup until it has finished, with a progress bar on a terminal.
async fn wait_for_backup(cli: &Cli, id: &str) -> anyhow::Result<Value> {
    let bar = progress_bar(cli, format!("backup {id}"));
    loop {
        let body =
            call(cli, Method::GET, &format!("/v1/backups/{id}"), None).await?.unwrap_or_default();
        let status = text(&body, "status");
        if let Some(p) = body["progress"].as_object() {
            bar.set_length(p["bytes_total"].as_u64().unwrap_or_default());
            bar.set_position(p["bytes_done"].as_u64().unwrap_or_default());
        }
        bar.set_message(format!("backup {id} {status}"));
        if status == "completed" || status == "failed" {
            bar.finish_and_clear();
            return Ok(body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Runs `request` (a restore into database `name`) while showing the restore's progress,
/// which the database reports while its data is being restored.
async fn with_restore_progress<T>(
    cli: &Cli,
    name: &str,
    request: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let bar = progress_bar(cli, format!("restoring {name}"));
    let path = format!("/v1/databases/{name}");
    tokio::pin!(request);
    loop {
        tokio::select! {
            result = &mut request => {
                bar.finish_and_clear();
                return result;
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                // A failed look is only a missed frame.
                if let Ok(Some(db)) = call(cli, Method::GET, &path, None).await
                    && let Some(p) = db["restore_progress"].as_object()
                {
                    bar.set_length(p["bytes_total"].as_u64().unwrap_or_default());
                    bar.set_position(p["bytes_done"].as_u64().unwrap_or_default());
                }
            }
        }
    }
}

/// A progress bar in bytes, hidden with `--json`.
fn progress_bar(cli: &Cli, message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({percent}%)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    if cli.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(message);
    bar
}

fn print_backup(b: &Value) {
    for key in ["id", "name", "database", "engine", "kind", "status", "reason", "parent_id"] {
        if let Some(v) = b[key].as_str() {
            println!("{key:<13} {v}");
        }
    }
    if b["status"] == "completed" {
        println!("{:<13} {}", "size", human_bytes(b["size_bytes"].as_u64().unwrap_or_default()));
        println!(
            "{:<13} {}",
            "stored",
            human_bytes(b["stored_bytes"].as_u64().unwrap_or_default())
        );
        println!(
            "{:<13} {}",
            "taken",
            if b["hot"] == true { "hot, from the running server" } else { "cold, from disk" }
        );
    }
    let position = &b["position"];
    if let Some(time) = position["time"].as_str() {
        println!("{:<13} {time}", "consistent at");
    }
    if let Some(gtid) = position["gtid"].as_str() {
        println!("{:<13} {gtid}", "gtid");
    }
    println!("{:<13} {}", "created", text(b, "created_at"));
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
