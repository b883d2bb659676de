//! Checks on every name, id and number that arrives from the network, each failing with a 4xx message.

use trackshift_grid::api::RelayCost;

use crate::error::ApiFailure;

/// The longest receiver name or relay id.
pub const MAX_NAME_LEN: usize = 64;
/// The longest file name a session may carry (what common file systems accept).
pub const MAX_FILE_NAME_LEN: usize = 255;
/// The longest `HOST:PORT` (a DNS name of 253 bytes and a port).
pub const MAX_ADDR_LEN: usize = 260;
/// The most relay measurements one request may carry.
pub const MAX_RELAY_COSTS: usize = 256;
/// The slowest round trip worth recording: a minute is already a dead path.
pub const MAX_RTT_MS: f64 = 60_000.0;

/// A receiver name or relay id: letters, digits, `-`, `_`, `.`; 1 to 64 bytes; not `.` or `..`.
pub fn name(what: &str, text: &str) -> Result<(), ApiFailure> {
    let fine = !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text != "."
        && text != "..";
    if fine {
        Ok(())
    } else {
        Err(ApiFailure::unprocessable(format!(
            "{what} `{}` is not a name: use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`",
            shown(text)
        )))
    }
}

/// A session id: 32 hex digits, returned in lowercase.
pub fn session_id(text: &str) -> Result<String, ApiFailure> {
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiFailure::unprocessable(format!(
            "session id `{}` is not 32 hex digits",
            shown(text)
        )))
    }
}

/// A file name as the receiver will show it: 1 to 255 bytes, no `/`, no control characters, not `.` or `..`.
/// (The receiver checks it again before it writes anything.)
pub fn file_name(text: &str) -> Result<(), ApiFailure> {
    let fine = !text.is_empty()
        && text.len() <= MAX_FILE_NAME_LEN
        && !text.contains('/')
        && !text.chars().any(char::is_control)
        && text != "."
        && text != "..";
    if fine {
        Ok(())
    } else {
        Err(ApiFailure::unprocessable(format!(
            "file name `{}` is not usable: 1 to {MAX_FILE_NAME_LEN} bytes, no `/`, no control characters, not `.` or `..`",
            shown(text)
        )))
    }
}

/// A relay address, `HOST:PORT` with a port from 1 to 65535.
pub fn addr(text: &str) -> Result<(), ApiFailure> {
    let bad = || {
        ApiFailure::unprocessable(format!(
            "relay address `{}` is not HOST:PORT (e.g. 198.51.100.7:7300 or relay.example:7300)",
            shown(text)
        ))
    };
    if text.len() > MAX_ADDR_LEN {
        return Err(bad());
    }
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port_fine = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_fine = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    if port_fine && host_fine {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A list of relay measurements: bounded, each with a valid id, a finite round trip and a loss in 0..=1.
pub fn relay_costs(costs: &[RelayCost]) -> Result<(), ApiFailure> {
    if costs.len() > MAX_RELAY_COSTS {
        return Err(ApiFailure::unprocessable(format!(
            "{} relay measurements: at most {MAX_RELAY_COSTS}",
            costs.len()
        )));
    }
    for cost in costs {
        name("relay_id", &cost.relay_id)?;
        if !(0.0..=MAX_RTT_MS).contains(&cost.rtt_ms) || !(0.0..=1.0).contains(&cost.loss) {
            return Err(ApiFailure::unprocessable(format!(
                "measurement of relay `{}`: rtt_ms must be 0 to {MAX_RTT_MS} and loss 0 to 1",
                cost.relay_id
            )));
        }
    }
    Ok(())
}

/// `text` as it may appear in an error message: at most 80 characters, control characters escaped.
fn shown(text: &str) -> String {
    text.chars().take(80).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_traversal_control_characters_and_length() {
        assert!(name("name", "lab-1_a.b").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\nb",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
        assert!(name("name", &"x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_and_addresses() {
        assert_eq!(session_id(&"AB".repeat(16)).ok(), Some("ab".repeat(16)));
        assert!(session_id("abc").is_err());
        assert!(session_id(&"g".repeat(32)).is_err());
        assert!(addr("127.0.0.1:7300").is_ok());
        assert!(addr("[::1]:7300").is_ok());
        assert!(addr("relay-1.example:7300").is_ok());
        for bad in ["relay", "relay:0", "relay:99999", ":7300", "a b:1", "x/y:1"] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        assert!(file_name("video (1).mkv").is_ok());
        for bad in ["", "..", "a/b", "a\u{0}b", &"x".repeat(256)] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn measurements() {
        let ok = RelayCost {
            relay_id: "r1".into(),
            rtt_ms: 12.5,
            loss: 0.01,
        };
        assert!(relay_costs(std::slice::from_ref(&ok)).is_ok());
        for (rtt_ms, loss) in [(f64::NAN, 0.0), (-1.0, 0.0), (1.0, 1.5), (1e9, 0.0)] {
            let bad = RelayCost {
                rtt_ms,
                loss,
                ..ok.clone()
            };
            assert!(relay_costs(&[bad]).is_err(), "{rtt_ms} {loss}");
        }
    }
}
