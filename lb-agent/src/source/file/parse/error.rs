//! [`ParseError`]: what is wrong with a file of objects, and where, on one
//! line.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Why a file of objects could not be read. Every variant displays as one
/// line naming the file, the document (1-based, counting empty ones), the
/// line and column where the parser knows them, the list item and object
/// where known, and the field path:
///
/// `services.yaml: document 2, line 17, column 13: Service default/web: spec.ports[0].port: expected i32, found "http"`
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not well-formed YAML (or JSON).
    #[error("{}{message}", Place { file, document: *document, line: *line, column: *column, item: None, object: None, field: None })]
    Syntax {
        file: PathBuf,
        document: usize,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// A document or list item is not an object of a supported kind and apiVersion.
    #[error("{}{}", Place { file, document: *document, line: None, column: None, item: *item, object: object.as_deref(), field: None }, unsupported_message(kind.as_deref(), api_version.as_deref(), *in_list))]
    Unsupported {
        file: PathBuf,
        document: usize,
        /// Index in the list's `items`, when the object is in a list.
        item: Option<usize>,
        /// `Kind namespace/name`, when the document says.
        object: Option<String>,
        kind: Option<String>,
        api_version: Option<String>,
        /// Whether the object is an item of a list (lists cannot nest).
        in_list: bool,
    },
    /// An object (or a field of it) does not have the expected shape or type.
    #[error("{}{message}", Place { file, document: *document, line: *line, column: *column, item: *item, object: object.as_deref(), field: field.as_deref() })]
    Invalid {
        file: PathBuf,
        document: usize,
        line: Option<u64>,
        column: Option<u64>,
        item: Option<usize>,
        object: Option<String>,
        /// Path of the field inside the object, as in `spec.ports[0].port`.
        field: Option<String>,
        message: String,
    },
}

/// The prefix of a [`ParseError`]'s line: where the error is.
struct Place<'a> {
    file: &'a Path,
    document: usize,
    line: Option<u64>,
    column: Option<u64>,
    item: Option<usize>,
    object: Option<&'a str>,
    field: Option<&'a str>,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            file,
            document,
            line,
            column,
            item,
            object,
            field,
        } = self;
        write!(f, "{}: document {document}", file.display())?;
        if let Some(line) = line {
            write!(f, ", line {line}")?;
            if let Some(column) = column {
                write!(f, ", column {column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(item) = item {
            write!(f, "items[{item}]: ")?;
        }
        if let Some(object) = object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = field.filter(|field| !field.is_empty()) {
            write!(f, "{field}: ")?;
        }
        Ok(())
    }
}

const EXPECTED_KINDS: &str = "expected Service (apiVersion v1), EndpointSlice (apiVersion discovery.k8s.io/v1) or Node (apiVersion v1)";

fn unsupported_message(kind: Option<&str>, api_version: Option<&str>, in_list: bool) -> String {
    let what = match (kind, api_version) {
        (None, _) => "no kind".to_owned(),
        (Some(kind), None) => format!("kind {kind:?} without apiVersion"),
        (Some(kind), Some(api_version)) => {
            format!("unsupported kind {kind:?} with apiVersion {api_version:?}")
        }
    };
    if in_list {
        format!("{what}: {EXPECTED_KINDS} in a list")
    } else {
        format!(
            "{what}: {EXPECTED_KINDS}, or a List, ServiceList, EndpointSliceList or NodeList of them"
        )
    }
}

pub(super) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Error text on one line.
pub(super) fn clean(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
