//! `trackshift list` and `trackshift status`: what the state dir knows.

use serde_json::json;
use trackshift_proto::SessionId;
use trackshift_storage::{SessionRecord, SessionStore, StateDir};

use crate::failure::Failure;
use crate::output::Reporter;

fn open(state_dir: &std::path::Path) -> Result<SessionStore, Failure> {
    let state = StateDir::open(state_dir)?;
    Ok(SessionStore::open(&state)?)
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

/// One session as JSON, with progress figures.
fn describe(store: &SessionStore, rec: &SessionRecord) -> Result<serde_json::Value, Failure> {
    let mut v = serde_json::to_value(rec).map_err(|e| Failure::failed(e.to_string()))?;
    let (done, total, chunks_done, chunks) = match rec {
        SessionRecord::Incoming(s) => {
            let verified = store.verified_chunks(&s.id)?;
            let done: u64 = verified
                .iter()
                .map(|(i, _)| {
                    s.chunk_size
                        .min(s.size.saturating_sub(u64::from(*i) * s.chunk_size))
                })
                .sum();
            (done, s.size, verified.len() as u32, s.chunk_count)
        }
        SessionRecord::Outgoing(s) => {
            let chunks_done = if s.size == 0 {
                s.chunk_count
            } else {
                s.bytes_confirmed.div_ceil(s.chunk_size.max(1)) as u32
            };
            (s.bytes_confirmed, s.size, chunks_done, s.chunk_count)
        }
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("bytes_done".into(), json!(done));
        obj.insert("percent".into(), json!(percent(done, total)));
        obj.insert("chunks_done".into(), json!(chunks_done));
        obj.insert("chunks_total".into(), json!(chunks));
    }
    Ok(v)
}

fn line(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    let name = match s("direction").as_str() {
        "incoming" => s("file_name"),
        _ => v
            .get("source")
            .and_then(|x| x.as_str())
            .unwrap_or("-")
            .to_owned(),
    };
    format!(
        "{}  {:<8}  {:<11}  {:>6.1}%  {}",
        s("id"),
        s("direction"),
        s("state"),
        v.get("percent").and_then(|x| x.as_f64()).unwrap_or(0.0),
        name
    )
}

pub fn list(state_dir: &std::path::Path, reporter: &Reporter) -> Result<(), Failure> {
    let store = open(state_dir)?;
    let mut all = Vec::new();
    for rec in store.list()? {
        all.push(describe(&store, &rec)?);
    }
    if reporter.mode().json {
        println!("{}", serde_json::Value::Array(all));
    } else if all.is_empty() {
        println!("no sessions in {}", state_dir.display());
    } else {
        for v in &all {
            println!("{}", line(v));
        }
    }
    Ok(())
}

pub fn status(
    state_dir: &std::path::Path,
    id: SessionId,
    reporter: &Reporter,
) -> Result<(), Failure> {
    let store = open(state_dir)?;
    let rec = store
        .list()?
        .into_iter()
        .find(|r| *r.id() == id)
        .ok_or_else(|| {
            Failure::usage(format!(
                "no session {id} in {}: see `trackshift list`",
                state_dir.display()
            ))
        })?;
    let v = describe(&store, &rec)?;
    if reporter.mode().json {
        println!("{v}");
    } else {
        println!("{}", line(&v));
        if let Some(obj) = v.as_object() {
            for (k, val) in obj {
                println!("  {k}: {val}");
            }
        }
    }
    Ok(())
}
