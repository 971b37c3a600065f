//! The slow path for JSON: each value once as a `serde_json::Value` (exact
//! for JSON, whose values carry their types), then typed from it.

use std::path::Path;

use serde::Deserialize as _;

use super::{
    Boxed, Objects, ParseError, collect,
    error::{clean, to_u64},
    header::Header,
    plan::{Plan, object_of, plan, plan_error},
    typed::{split_path, typed},
    unique_keys::UniqueKeys,
};

pub(super) fn slow_json(text: &str, file: &Path) -> Boxed<Objects> {
    // `serde_json::Value` keeps the last of a repeated key: look for one
    // first, where the parser still knows the line and column.
    let stream = serde_json::Deserializer::from_str(text).into_iter::<UniqueKeys>();
    for (index, checked) in stream.enumerate() {
        if let Err(error) = checked {
            return Err(Box::new(ParseError::Syntax {
                file: file.to_owned(),
                document: index + 1,
                line: Some(to_u64(error.line())),
                column: Some(to_u64(error.column())),
                message: json_message(&error),
            }));
        }
    }
    let mut objects = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    for (index, value) in stream.enumerate() {
        let number = index + 1;
        let value = value.map_err(|error| ParseError::Syntax {
            file: file.to_owned(),
            document: number,
            line: Some(to_u64(error.line())),
            column: Some(to_u64(error.column())),
            message: json_message(&error),
        })?;
        let header = Header::deserialize(&value).map_err(|error| ParseError::Invalid {
            file: file.to_owned(),
            document: number,
            line: None,
            column: None,
            item: None,
            object: None,
            field: None,
            message: json_message(&error),
        })?;
        let (plan, header) = plan(header).map_err(|error| plan_error(error, file, number))?;
        let (result, path) = typed(&value, &plan);
        match result {
            Ok(found) => objects.extend(found),
            Err(error) => {
                let (item, field) = split_path(&path, matches!(plan, Plan::List(_)));
                return Err(Box::new(ParseError::Invalid {
                    file: file.to_owned(),
                    document: number,
                    line: None,
                    column: None,
                    object: object_of(&header, &plan, item),
                    item,
                    field: Some(field),
                    message: json_message(&error),
                }));
            }
        }
    }
    Ok(collect(objects))
}

/// A `serde_json` error's message without the location it appends (kept
/// separately in [`ParseError`]).
fn json_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    clean(full.strip_suffix(&suffix).unwrap_or(&full))
}
