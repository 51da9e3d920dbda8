//! SQL Server: texts carried inside the one JSON parameter of a batch call.
//!
//! Invariant: a carried text holds no character that JSON escapes, so every
//! engine's `OPENJSON` reads it alike, and `dbo.carried_text` (migration V19)
//! gives back exactly the text the caller had. The TDS engine (Babelfish 4.3)
//! hands a JSON string back with its escapes still in (`\"`, `\\`, `\n`), where
//! SQL Server decodes them.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is written as `%XX`: what JSON escapes (`"`, `\`, the control
/// characters U+0000-U+001F) and `%` itself.
fn is_carried(c: char) -> bool {
    matches!(c, '"' | '\\' | '%') || u32::from(c) < 0x20
}

/// `text` with each character [`is_carried`] names written `%XX` (upper-case hex).
pub(super) fn carried(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_carried) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_carried(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{:02X}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dbo.carried_text` does, step by step as V19 writes it: the
    /// control characters, then `"` and `\`, then `%` last.
    fn as_the_server_reads(text: &str) -> String {
        let mut text = text.to_string();
        for code in (1..32u32).chain([0]) {
            text = text.replace(&format!("%{code:02X}"), &char::from_u32(code).unwrap().to_string());
        }
        text.replace("%22", "\"").replace("%5C", "\\").replace("%25", "%")
    }

    #[test]
    fn a_carried_text_holds_nothing_json_escapes_and_comes_back_whole() {
        let hostile = [
            "plain",
            "a \"quoted\" \\ buyer",
            "100% %22 %2522 %5C %%",
            "\u{1F600} non-BMP \u{10FFFF}",
            "line\nbreak\ttab\r\u{1}\u{1F}\u{0}",
            "x'; DROP TABLE dbo.orders; --",
            "",
        ];
        for text in hostile {
            let sent = carried(text);
            assert!(!sent.chars().any(|c| c == '"' || c == '\\' || u32::from(c) < 0x20), "{sent}");
            let json = serde_json::to_string(&*sent).unwrap();
            assert_eq!(&json[1..json.len() - 1], sent, "JSON writes a carried text as it is");
            assert_eq!(as_the_server_reads(&sent), text);
        }
        assert!(matches!(carried("plain"), Cow::Borrowed(_)));
    }
}
