//! Checking what callers send: helpers shared by every module that turns a
//! CRI request field into a precise error.

/// How much of a caller's value an error message repeats.
const SHOWN_CHARS: usize = 80;

/// A caller-supplied value quoted for an error message, cut to a short
/// excerpt: a 16 MiB field must not come back as a 16 MiB error (gRPC
/// carries the message in a header) or land in the log whole.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quoted("10.0.0.0/8"), "\"10.0.0.0/8\"");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let shown = quoted(&long);
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with("… (2000 bytes)"), "{shown}");
    }
}
