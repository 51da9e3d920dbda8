//! SQL Server: texts carried inside the one JSON parameter of a batch call.
//!
//! Invariant: a carried text holds no character that JSON escapes, so every
//! engine's `OPENJSON` reads it alike, and `dbo.carried_text` (migration V19)
//! gives back exactly the text the caller had. The TDS engine (Babelfish 4.3)
//! hands a JSON string back with its escapes still in (`\"`, `\\`, `\n`), where
//! SQL Server decodes them.

use std::borrow::Cow;
use std::fmt::Write;

/// `json` with every character beyond ASCII written as its `\uXXXX` escapes
/// (UTF-16 units, so a pair for one beyond the BMP): the same JSON, whose
/// length in characters is its length in bytes on every engine, so a call can
/// cut it out of a longer text by offset (`SUBSTRING`). Only strings of JSON
/// hold such characters, and there an escape means the character.
pub(super) fn ascii_json(json: &str) -> Cow<'_, str> {
    if json.is_ascii() {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    Cow::Owned(out)
}

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

    #[test]
    fn json_made_ascii_means_the_same() {
        let headers = serde_json::json!([["note", "caf\u{e9} \u{1F600} \"q\" \\"], ["x", "plain"]]);
        let json = serde_json::to_string(&headers).unwrap();
        let ascii = ascii_json(&json);
        assert!(ascii.is_ascii(), "{ascii}");
        assert!(ascii.contains("\\ud83d\\ude00"), "a pair beyond the BMP: {ascii}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&ascii).unwrap(), headers);
        assert!(matches!(ascii_json("[]"), Cow::Borrowed(_)));
    }
}
