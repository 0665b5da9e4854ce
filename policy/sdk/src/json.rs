//! A tiny JSON object writer for `meta`, so policies need no serializer in the sandbox.

use std::fmt::Write;

/// Builds one flat JSON object, field by field, in insertion order.
#[derive(Debug, Default)]
pub struct JsonObject {
    text: String,
}

impl JsonObject {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn int(mut self, name: &str, value: i64) -> Self {
        self.key(name);
        let _ = write!(self.text, "{value}");
        self
    }

    pub fn bool(mut self, name: &str, value: bool) -> Self {
        self.key(name);
        self.text.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn str(mut self, name: &str, value: &str) -> Self {
        self.key(name);
        push_string(&mut self.text, value);
        self
    }

    /// The object as JSON text.
    pub fn finish(self) -> String {
        if self.text.is_empty() {
            "{}".to_owned()
        } else {
            format!("{{{}}}", self.text)
        }
    }

    fn key(&mut self, name: &str) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        push_string(&mut self.text, name);
        self.text.push(':');
    }
}

fn push_string(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", control as u32);
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fields_in_order_with_escaping() {
        let text = JsonObject::new()
            .int("n", -3)
            .bool("ok", true)
            .str("why", "a \"b\"\n\u{1}")
            .finish();
        assert_eq!(text, r#"{"n":-3,"ok":true,"why":"a \"b\"\n\u0001"}"#);
    }

    #[test]
    fn empty_object_is_braces() {
        assert_eq!(JsonObject::new().finish(), "{}");
    }
}
