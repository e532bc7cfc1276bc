//! Reading the JSON ccq takes (safetensors headers, `config.json`, indexes, metadata,
//! provenance, policies): typed through serde, with a problem that says in ccq's words where
//! the text is wrong — the field path for a value of the wrong type or range, the line and
//! column (or, for one-line text such as a safetensors header, the byte) for broken syntax.
//! Callers put the file's name in front.

use serde::de::DeserializeOwned;
use std::fmt;

/// What is wrong with a JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonProblem {
    /// The text is not JSON at all (or ends early).
    Syntax {
        /// What the parser found, without its position.
        what: String,
        /// Where: `line L, column C`, or `byte B` for one-line text.
        at: String,
        /// The field being read there, when not the whole document.
        path: Option<String>,
    },
    /// The text is JSON, but a value is not what that field takes.
    Value {
        /// The field's path from the top (`layers.3.scheme`, `.` for the whole document).
        path: String,
        /// What is wrong with it.
        what: String,
    },
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonProblem::Syntax { what, at, path: None } => write!(f, "not valid JSON at {at}: {what}"),
            JsonProblem::Syntax { what, at, path: Some(path) } => write!(f, "not valid JSON at {at}, in field `{path}`: {what}"),
            JsonProblem::Value { path, what } if path == "." => write!(f, "the whole document: {what}"),
            JsonProblem::Value { path, what } => write!(f, "field `{path}`: {what}"),
        }
    }
}

impl std::error::Error for JsonProblem {}

/// Parses `text` as a `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, JsonProblem> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        problem(text, path, e.into_inner())
    })?;
    de.end().map_err(|e| problem(text, ".".to_string(), e))?;
    Ok(value)
}

/// Reads an already parsed `value` as a `T`.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, JsonProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        JsonProblem::Value { path, what: without_position(&e.into_inner().to_string()) }
    })
}

/// Parses `bytes` (UTF-8) as a `T`.
pub fn parse_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonProblem> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonProblem::Syntax {
        what: "not UTF-8 text".to_string(),
        at: format!("byte {}", e.valid_up_to()),
        path: None,
    })?;
    parse(text)
}

fn problem(text: &str, path: String, e: serde_json::Error) -> JsonProblem {
    let what = without_position(&e.to_string());
    match e.classify() {
        serde_json::error::Category::Data => JsonProblem::Value { path, what },
        _ => JsonProblem::Syntax { what, at: position(text, e.line(), e.column()), path: known_part(&path) },
    }
}

/// serde_json's message without its own " at line L column C" suffix, and in JSON's terms
/// where serde names a Rust type: "expected struct Provenance" is "expected a JSON object";
/// "invalid length 2, expected struct NativeTensor with 6 elements" (an array given for an
/// object) is "a JSON array of 2 values, expected a JSON object".
fn without_position(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    };
    let Some(i) = message.find("expected struct ") else { return message.to_string() };
    match message[..i].strip_prefix("invalid length ").and_then(|rest| rest.strip_suffix(", ")) {
        Some(len) => format!("a JSON array of {len} values, expected a JSON object"),
        None => format!("{}expected a JSON object", &message[..i]),
    }
}

/// The part of a field path before serde_path_to_error's `?` (a key it could not read), or
/// `None` for the whole document.
fn known_part(path: &str) -> Option<String> {
    let known = path.split('.').take_while(|segment| *segment != "?").collect::<Vec<_>>().join(".");
    Some(known).filter(|p| !p.is_empty() && p != ".")
}

/// `line L, column C` for text of several lines; `byte B` (0-based) for one-line text.
fn position(text: &str, line: usize, column: usize) -> String {
    match text.contains('\n') {
        true => format!("line {line}, column {column}"),
        false => format!("byte {}", column.saturating_sub(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        layers: Vec<Layer>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Layer {
        #[allow(dead_code)]
        k: u32,
    }

    #[test]
    fn a_wrong_value_names_its_field_path_and_no_parser_position() {
        let e = parse::<Doc>(r#"{"layers": [{"k": 1}, {"k": "x"}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `layers[1].k`: invalid type: string \"x\", expected u32");
        let e = parse::<Doc>(r#"{"layers": [{"kk": 1}]}"#).unwrap_err();
        assert!(e.to_string().starts_with("field `layers[0].kk`: unknown field `kk`"), "{e}");
        let e = parse::<Doc>(r#"{"layers": [{}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `layers[0]`: missing field `k`");
        let e = parse::<Doc>(r#"{"layers": [7]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `layers[0]`: invalid type: integer `7`, expected a JSON object");
        let e = parse::<Doc>("[]").unwrap_err();
        assert_eq!(e.to_string(), "the whole document: a JSON array of 0 values, expected a JSON object");
    }

    #[test]
    fn a_parsed_value_read_as_a_type_names_the_field() {
        let e = from_value::<Doc>(serde_json::json!({"layers": [{"k": -1}]})).unwrap_err();
        assert_eq!(e.to_string(), "field `layers[0].k`: invalid value: integer `-1`, expected u32");
    }

    #[test]
    fn broken_syntax_says_where_by_byte_or_line() {
        let e = parse::<Doc>(r#"{"layers": [}"#).unwrap_err();
        assert_eq!(e.to_string(), "not valid JSON at byte 12, in field `layers[0]`: expected value");
        let e = parse::<Doc>("{\n  \"layers\": [\n").unwrap_err();
        assert_eq!(e.to_string(), "not valid JSON at line 3, column 0, in field `layers`: EOF while parsing a list");
        let e = parse::<Doc>(r#"{"layers": [{"k": 1}, {"k" 2}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "not valid JSON at byte 27, in field `layers[1]`: expected `:`");
        let e = parse::<Doc>(r#"{"layers": []} x"#).unwrap_err();
        assert_eq!(e.to_string(), "not valid JSON at byte 15: trailing characters");
        let e = parse_slice::<Doc>(b"{\"lay\xff").unwrap_err();
        assert_eq!(e.to_string(), "not valid JSON at byte 5: not UTF-8 text");
    }
}
