//! `trackshift list` and `trackshift status`: printing what the engine reads from the state dir.

use std::path::Path;

use serde_json::Value;
use trackshift_engine::sessions::SessionView;
use trackshift_engine::{EngineError, SessionId};

fn to_json(v: &SessionView) -> Result<Value, EngineError> {
    serde_json::to_value(v).map_err(|e| EngineError::Failed(e.to_string()))
}

/// One session as a line: id, direction, state, percent, file.
fn line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    let name = match s("direction").as_str() {
        "incoming" => s("file_name"),
        _ => s("source"),
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

pub fn list(state_dir: &Path, json: bool) -> Result<(), EngineError> {
    let all = trackshift_engine::sessions::list(state_dir)?
        .iter()
        .map(to_json)
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        println!("{}", Value::Array(all));
    } else if all.is_empty() {
        println!("no sessions in {}", state_dir.display());
    } else {
        for v in &all {
            println!("{}", line(v));
        }
    }
    Ok(())
}

pub fn status(state_dir: &Path, id: SessionId, json: bool) -> Result<(), EngineError> {
    let v = to_json(&trackshift_engine::sessions::status(state_dir, id)?)?;
    if json {
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
