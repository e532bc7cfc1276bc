//! The safetensors header: parsing and validation of every byte before any is trusted.
//!
//! A safetensors file is
//!
//! ```text
//! [ N: u64 little-endian ][ N bytes of UTF-8 JSON header ][ data section ]
//! ```
//!
//! The header maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the start of the data section) and may hold one `"__metadata__"`
//! object of string values. [`parse_header`] checks, in order: the length prefix exists; the
//! header fits in the file and under [`MAX_HEADER_LEN`]; it is UTF-8 and a JSON object; every
//! entry has a known dtype, a shape whose byte size does not overflow, and offsets with
//! `begin <= end`, `end - begin == dtype size x element count`, inside the data section; and
//! the spans do not overlap, leave no gap, and cover the data section exactly (as the
//! reference implementation requires). Each failure is one [`HeaderError`] variant that names
//! the tensor.

use crate::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;

/// The largest header ccq accepts (the reference implementation's limit): 100 MB.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes of the length prefix.
pub const PREFIX_LEN: u64 = 8;

/// One tensor as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// `[begin, end)` in bytes, relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the value of the prefix).
    pub header_len: u64,
    /// The `__metadata__` strings, if any.
    pub metadata: BTreeMap<String, String>,
    /// The tensors, in the order of their data offsets.
    pub tensors: Vec<HeaderEntry>,
}

impl Header {
    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN + self.header_len
    }
}

/// What is wrong with a safetensors header. Messages name the tensor where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file is shorter than the 8-byte length prefix.
    #[error("file is {file_len} bytes, too short for the 8-byte header length (truncated?)")]
    TooShort {
        /// File length in bytes.
        file_len: u64,
    },
    /// The length prefix exceeds [`MAX_HEADER_LEN`].
    #[error("header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes (not a safetensors file?)")]
    HeaderTooLarge {
        /// The length read from the prefix.
        header_len: u64,
    },
    /// The header runs past the end of the file.
    #[error("header length {header_len} runs past the end of the {file_len}-byte file (truncated?)")]
    HeaderPastEnd {
        /// The length read from the prefix.
        header_len: u64,
        /// File length in bytes.
        file_len: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// The header is not well-formed JSON.
    #[error("header: {0}")]
    InvalidJson(crate::json::JsonProblem),
    /// The header is JSON but not an object.
    #[error("header is not a JSON object")]
    NotAnObject,
    /// A key appears twice in the header object (the reference `safetensors` library refuses a
    /// second `__metadata__`; a second entry of one tensor would hide the first).
    #[error("header lists '{key}' twice")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// `__metadata__` is not an object of strings.
    #[error("__metadata__ must be an object whose values are strings")]
    InvalidMetadata,
    /// An entry lacks a field or has one of the wrong type.
    #[error("tensor '{tensor}': {problem}")]
    MalformedEntry {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An entry's dtype is not one ccq knows.
    #[error("tensor '{tensor}': unknown dtype '{dtype}'")]
    UnknownDtype {
        /// The tensor's name.
        tensor: String,
        /// The dtype string as written.
        dtype: String,
    },
    /// Element count times element size overflows.
    #[error("tensor '{tensor}': shape {shape:?} is too large")]
    ShapeOverflow {
        /// The tensor's name.
        tensor: String,
        /// The shape as written.
        shape: Vec<u64>,
    },
    /// `begin > end`.
    #[error("tensor '{tensor}': data_offsets [{begin}, {end}] are reversed")]
    ReversedOffsets {
        /// The tensor's name.
        tensor: String,
        /// First offset.
        begin: u64,
        /// Second offset.
        end: u64,
    },
    /// The span's size disagrees with dtype x shape.
    #[error("tensor '{tensor}': data_offsets span {actual} bytes but {dtype} x {shape:?} needs {expected}")]
    SizeMismatch {
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes the dtype and shape need.
        expected: u64,
        /// Bytes the offsets span.
        actual: u64,
    },
    /// The span ends past the end of the data section.
    #[error("tensor '{tensor}': data ends at byte {end} but the data section holds only {data_len} (truncated?)")]
    OffsetPastEnd {
        /// The tensor's name.
        tensor: String,
        /// End offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two spans overlap.
    #[error("tensor '{tensor}': data_offsets overlap those of tensor '{other}'")]
    Overlap {
        /// The tensor's name.
        tensor: String,
        /// The tensor it overlaps.
        other: String,
    },
    /// Bytes of the data section that no tensor covers.
    #[error("data section has {len} bytes at offset {offset} that belong to no tensor")]
    Gap {
        /// Where the uncovered bytes start (relative to the data section).
        offset: u64,
        /// How many there are.
        len: u64,
    },
}

/// Parses and validates a header. `prefix_and_header` must hold at least the first
/// `min(file_len, 8 + header_len)` bytes of the file; `file_len` is the whole file's length.
pub fn parse_header(prefix_and_header: &[u8], file_len: u64) -> Result<Header, HeaderError> {
    let header_len = read_prefix(prefix_and_header, file_len)?;
    let end = (PREFIX_LEN + header_len) as usize;
    let json = prefix_and_header.get(PREFIX_LEN as usize..end).ok_or(HeaderError::HeaderPastEnd { header_len, file_len })?;
    let text = std::str::from_utf8(json).map_err(|_| HeaderError::NotUtf8)?;
    let value: Value = crate::json::parse(text).map_err(HeaderError::InvalidJson)?;
    if !value.is_object() {
        return Err(HeaderError::NotAnObject);
    }
    let Entries(map) = crate::json::parse(text).map_err(HeaderError::InvalidJson)?;
    let mut seen = std::collections::HashSet::new();
    if let Some((key, _)) = map.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(HeaderError::DuplicateKey { key: key.clone() });
    }
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            // `null` is no metadata, as the reference library reads it.
            if !entry.is_null() {
                metadata = parse_metadata(entry)?;
            }
        } else {
            tensors.push(parse_entry(name, &entry)?);
        }
    }
    let data_len = file_len - PREFIX_LEN - header_len;
    check_spans(&mut tensors, data_len)?;
    Ok(Header { header_len, metadata, tensors })
}

/// The header object's entries in file order, duplicates kept (a `serde_json::Value` object
/// would keep only the last of a repeated key).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads and bounds-checks the 8-byte length prefix; returns the header length.
pub fn read_prefix(bytes: &[u8], file_len: u64) -> Result<u64, HeaderError> {
    let prefix: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or(HeaderError::TooShort { file_len })?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::HeaderTooLarge { header_len });
    }
    if PREFIX_LEN + header_len > file_len {
        return Err(HeaderError::HeaderPastEnd { header_len, file_len });
    }
    Ok(header_len)
}

fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>, HeaderError> {
    let Value::Object(map) = value else {
        return Err(HeaderError::InvalidMetadata);
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(HeaderError::InvalidMetadata),
        })
        .collect()
}

fn parse_entry(name: String, entry: &Value) -> Result<HeaderEntry, HeaderError> {
    let malformed = |problem: &str| HeaderError::MalformedEntry { tensor: name.clone(), problem: problem.to_string() };
    let obj = entry.as_object().ok_or_else(|| malformed("entry is not an object"))?;
    let dtype_str = obj.get("dtype").and_then(Value::as_str).ok_or_else(|| malformed("missing or non-string \"dtype\""))?;
    let dtype =
        Dtype::from_name(dtype_str).ok_or_else(|| HeaderError::UnknownDtype { tensor: name.clone(), dtype: dtype_str.to_string() })?;
    let shape_u64 = u64_list(obj.get("shape")).ok_or_else(|| malformed("missing \"shape\" or not a list of non-negative integers"))?;
    let offsets = u64_list(obj.get("data_offsets"))
        .filter(|o| o.len() == 2)
        .ok_or_else(|| malformed("missing \"data_offsets\" or not two non-negative integers"))?;
    let (begin, end) = (offsets[0], offsets[1]);
    let expected =
        byte_size(dtype, &shape_u64).ok_or_else(|| HeaderError::ShapeOverflow { tensor: name.clone(), shape: shape_u64.clone() })?;
    let shape: Vec<usize> = shape_u64.iter().map(|&d| d as usize).collect();
    if begin > end {
        return Err(HeaderError::ReversedOffsets { tensor: name, begin, end });
    }
    if end - begin != expected {
        return Err(HeaderError::SizeMismatch { tensor: name, dtype, shape, expected, actual: end - begin });
    }
    Ok(HeaderEntry { name, dtype, shape, data_offsets: (begin, end) })
}

fn u64_list(value: Option<&Value>) -> Option<Vec<u64>> {
    value?.as_array()?.iter().map(Value::as_u64).collect()
}

/// `dtype size x product(shape)`, or `None` on overflow (of u64 or of the address space).
fn byte_size(dtype: Dtype, shape: &[u64]) -> Option<u64> {
    let bytes = shape.iter().try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))?;
    usize::try_from(bytes).ok()?;
    Some(bytes)
}

/// Sorts the entries by offset and checks they tile `[0, data_len)` exactly.
fn check_spans(tensors: &mut [HeaderEntry], data_len: u64) -> Result<(), HeaderError> {
    tensors.sort_by(|a, b| a.data_offsets.cmp(&b.data_offsets).then(a.name.cmp(&b.name)));
    let mut covered_to = 0u64;
    let mut previous: Option<&HeaderEntry> = None;
    for t in tensors.iter() {
        let (begin, end) = t.data_offsets;
        if end > data_len {
            return Err(HeaderError::OffsetPastEnd { tensor: t.name.clone(), end, data_len });
        }
        if begin < covered_to {
            let other = previous.map(|p| p.name.clone()).unwrap_or_default();
            return Err(HeaderError::Overlap { tensor: t.name.clone(), other });
        }
        if begin > covered_to {
            return Err(HeaderError::Gap { offset: covered_to, len: begin - covered_to });
        }
        covered_to = end;
        previous = Some(t);
    }
    if covered_to != data_len {
        return Err(HeaderError::Gap { offset: covered_to, len: data_len - covered_to });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a file image from a JSON header and `data_len` zero bytes.
    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        parse_header(bytes, bytes.len() as u64)
    }

    #[test]
    fn valid_header_with_metadata() {
        let json = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let h = parse(&file(json, 28)).unwrap();
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensors[1].shape, vec![2, 3]);
        assert_eq!(h.data_start(), 8 + json.len() as u64);
    }

    #[test]
    fn empty_and_scalar_tensors() {
        let json = r#"{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]}}"#;
        let h = parse(&file(json, 4)).unwrap();
        assert_eq!(h.tensors.len(), 2);
    }

    /// Issue 14, defect 9: a duplicated `__metadata__` used to be accepted and a `null` one
    /// refused, the opposite of the reference `safetensors` library.
    #[test]
    fn duplicate_keys_are_refused_and_null_metadata_is_none() {
        let t = r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let twice = format!(r#"{{"__metadata__":{{"x":"1"}},"__metadata__":{{"x":"2"}},{t}}}"#);
        assert_eq!(parse(&file(&twice, 4)), Err(HeaderError::DuplicateKey { key: "__metadata__".into() }));
        let tensor_twice = format!(r#"{{{t},{t}}}"#);
        assert_eq!(parse(&file(&tensor_twice, 4)), Err(HeaderError::DuplicateKey { key: "a".into() }));
        let null = format!(r#"{{"__metadata__":null,{t}}}"#);
        assert!(parse(&file(&null, 4)).unwrap().metadata.is_empty());
        for bytes in [file(&twice, 4), file(&null, 4)] {
            let reference = safetensors::SafeTensors::deserialize(&bytes).is_ok();
            assert_eq!(parse(&bytes).is_ok(), reference, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn too_short() {
        assert_eq!(parse(&[1, 2, 3]), Err(HeaderError::TooShort { file_len: 3 }));
    }

    #[test]
    fn header_too_large() {
        let bytes = u64::MAX.to_le_bytes();
        assert!(matches!(parse(&bytes), Err(HeaderError::HeaderTooLarge { .. })));
    }

    #[test]
    fn header_past_end() {
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(parse(&bytes), Err(HeaderError::HeaderPastEnd { header_len: 100, .. })));
    }

    #[test]
    fn not_utf8() {
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(parse(&bytes), Err(HeaderError::NotUtf8));
    }

    #[test]
    fn invalid_json() {
        assert!(matches!(parse(&file("{\"a\":", 0)), Err(HeaderError::InvalidJson(_))));
        assert_eq!(parse(&file("[1]", 0)), Err(HeaderError::NotAnObject));
    }

    #[test]
    fn invalid_metadata() {
        let json = r#"{"__metadata__":{"n":1}}"#;
        assert_eq!(parse(&file(json, 0)), Err(HeaderError::InvalidMetadata));
    }

    #[test]
    fn unknown_dtype() {
        let json = r#"{"x":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}}"#;
        let err = parse(&file(json, 1)).unwrap_err();
        assert_eq!(err.to_string(), "tensor 'x': unknown dtype 'F4'");
    }

    #[test]
    fn malformed_entries() {
        for json in [
            r#"{"x":1}"#,
            r#"{"x":{"shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
            r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#,
        ] {
            assert!(matches!(parse(&file(json, 1)), Err(HeaderError::MalformedEntry { ref tensor, .. }) if tensor == "x"), "{json}");
        }
    }

    #[test]
    fn shape_overflow() {
        let json = r#"{"x":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(matches!(parse(&file(json, 8)), Err(HeaderError::ShapeOverflow { .. })));
    }

    #[test]
    fn reversed_and_mismatched_offsets() {
        let json = r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#;
        assert!(matches!(parse(&file(json, 1)), Err(HeaderError::ReversedOffsets { .. })));
        let json = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(matches!(parse(&file(json, 4)), Err(HeaderError::SizeMismatch { expected: 8, actual: 4, .. })));
    }

    #[test]
    fn offset_past_end() {
        let json = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(matches!(parse(&file(json, 4)), Err(HeaderError::OffsetPastEnd { .. })));
    }

    #[test]
    fn overlap() {
        let json = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let err = parse(&file(json, 8)).unwrap_err();
        assert_eq!(err.to_string(), "tensor 'b': data_offsets overlap those of tensor 'a'");
    }

    #[test]
    fn gaps_and_trailing_bytes() {
        let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert_eq!(parse(&file(json, 8)), Err(HeaderError::Gap { offset: 0, len: 4 }));
        let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert_eq!(parse(&file(json, 6)), Err(HeaderError::Gap { offset: 4, len: 2 }));
    }
}
