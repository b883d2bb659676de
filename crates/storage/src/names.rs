//! Validation of file names that come from the network.

use crate::StorageError;

/// Prefix reserved for TrackShift's own files (partial files, probes, temp files) in an output dir.
pub const RESERVED_PREFIX: &str = ".trackshift-";

/// Longest accepted name, in bytes (NAME_MAX on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a file name received from the network. Returns it unchanged when safe.
///
/// Rejects: empty, `.`, `..`, any `/` or `\`, NUL, any control character (ASCII < 0x20, 0x7f, and the
/// Unicode C1 controls 0x80..=0x9f), names longer than 255 bytes, and names starting with `.trackshift-`
/// (reserved for partial files). The error shows the name escaped (`{:?}`), so a hostile name cannot
/// inject terminal escapes or fake lines into logs.
pub fn validate_file_name(name: &str) -> Result<&str, StorageError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it names a directory")
    } else if name.contains('/') || name.contains('\\') {
        Some("it contains a path separator")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 255 bytes")
    } else if name.starts_with(RESERVED_PREFIX) {
        Some("names starting with \".trackshift-\" are reserved for partial files")
    } else {
        None
    };
    match reason {
        None => Ok(name),
        Some(reason) => Err(StorageError::UnsafeName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// The `n`-th alternative for `name` when `name` is taken: `a.bin` → `a (1).bin`, `archive` → `archive (1)`,
/// `.cfg` → `.cfg (1)` (a leading dot does not start an extension), `a.tar.gz` → `a.tar (1).gz` (split at the
/// last dot). The stem is shortened (at a character boundary) so the result stays within 255 bytes.
pub(crate) fn candidate_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let suffix = format!(" ({n})");
    let room = MAX_NAME_BYTES.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass_unchanged() {
        for name in [
            "a.bin",
            "archive",
            ".cfg",
            "..hidden",
            "with space.txt",
            "ünïcödé ✓.tar.gz",
            ".trackshift", // only the prefix with the dash is reserved
            "a..b",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_file_name(name).unwrap(), name);
        }
    }

    #[test]
    fn bad_names_are_rejected_with_escaped_name() {
        let long = "x".repeat(256);
        let long_multibyte = "é".repeat(128); // 256 bytes
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            (".", "directory"),
            ("..", "directory"),
            ("a/b", "separator"),
            ("/etc/passwd", "separator"),
            ("../x", "separator"),
            ("a\\b", "separator"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("a\rb", "control"),
            ("\u{1b}[31mred", "control"),
            ("a\u{7f}", "control"),
            ("a\u{85}", "control"),
            (&long, "255"),
            (&long_multibyte, "255"),
            (".trackshift-0123.part", "reserved"),
        ];
        for (name, why) in table {
            let err = validate_file_name(name).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StorageError::UnsafeName { .. }), "{name:?}");
            assert!(msg.contains(why), "{name:?}: {msg}");
            assert!(msg.contains(&format!("{name:?}")), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg}");
        }
    }

    #[test]
    fn candidate_names() {
        assert_eq!(candidate_name("a.bin", 0), "a.bin");
        assert_eq!(candidate_name("a.bin", 1), "a (1).bin");
        assert_eq!(candidate_name("a.bin", 2), "a (2).bin");
        assert_eq!(candidate_name("archive", 1), "archive (1)");
        assert_eq!(candidate_name(".cfg", 1), ".cfg (1)");
        assert_eq!(candidate_name("a.tar.gz", 3), "a.tar (3).gz");
        assert_eq!(candidate_name("trailing.", 1), "trailing (1).");
        let long = format!("{}.bin", "é".repeat(125)); // 254 bytes
        let c = candidate_name(&long, 12);
        assert!(c.len() <= MAX_NAME_BYTES, "{}", c.len());
        assert!(c.ends_with(" (12).bin"));
        validate_file_name(&c).unwrap();
    }
}
