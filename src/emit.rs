//! JSON written by hand: string literals, optional numbers, flat string maps. For the documents
//! lossless writes itself (the membership document, the registration bodies it sends to Nacos and
//! Eureka); reading JSON is serde_json's job. Escapes follow RFC 8259 §7.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Appends a JSON string literal for `s` (quotes, backslashes and control characters escaped).
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `value` as written by [`std::fmt::Display`], or `null`.
pub fn json_opt<T: std::fmt::Display>(out: &mut String, value: Option<T>) {
    let _ = match value {
        Some(v) => write!(out, "{v}"),
        None => write!(out, "null"),
    };
}

/// `{"k":"v",...}` with JSON string escapes, keys in order.
pub fn json_object(m: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, k);
        out.push(':');
        json_str(&mut out, v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut o = String::new();
        json_str(&mut o, "a\"b\\c\nd\u{1}é");
        assert_eq!(o, r#""a\"b\\c\u000ad\u0001é""#);
        let v: String = serde_json::from_str(&o).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
