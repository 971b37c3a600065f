//! The slow path for YAML: the stream split into documents by the event
//! parser (for document numbers and lines), each read twice (`Header`, then
//! typed), and the parser's errors as sentences for the file's author.

use std::path::Path;

use serde_saphyr::{MessageFormatter as _, granit_parser};

use super::{
    Boxed, Objects, ParseError, collect,
    error::{clean, to_u64},
    header::Header,
    plan::{Plan, object_of, plan, plan_error},
    typed::{split_path, typed},
    yaml_options,
};

/// One document of a YAML stream: its bytes and its first line.
struct YamlDocument<'a> {
    text: &'a str,
    /// Lines before the document's first line.
    line_offset: u64,
}

/// Splits a YAML stream into its documents with the event parser, or says
/// where it is not well-formed.
fn split_yaml<'a>(text: &'a str, file: &Path) -> Boxed<Vec<YamlDocument<'a>>> {
    use granit_parser::{Event, Parser};

    let mut documents = Vec::new();
    let mut start: Option<(usize, u64)> = None;
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        match event {
            Ok((Event::DocumentStart(..), span)) => {
                let offset = byte_offset(text, span.start.byte_offset(), span.start.index());
                // From the start of the line: indentation is significant.
                let line_start = text
                    .get(..offset)
                    .and_then(|before| before.rfind('\n'))
                    .map_or(0, |nl| nl + 1);
                start = Some((line_start, to_u64(span.start.line()).saturating_sub(1)));
            }
            Ok((Event::DocumentEnd, span)) => {
                let end = byte_offset(text, span.end.byte_offset(), span.end.index());
                if let Some((begin, line_offset)) = start.take() {
                    let text = text.get(begin..end.max(begin)).unwrap_or_default();
                    documents.push(YamlDocument { text, line_offset });
                }
            }
            Ok(_) => {}
            Err(error) => {
                return Err(Box::new(ParseError::Syntax {
                    file: file.to_owned(),
                    document: documents.len() + 1,
                    line: Some(to_u64(error.marker().line())),
                    column: Some(to_u64(error.marker().col()).saturating_add(1)),
                    message: clean(&error.info()),
                }));
            }
        }
    }
    Ok(documents)
}

/// The byte offset of a parser marker (the parser gives byte offsets for
/// string input; the character index is the fallback).
fn byte_offset(text: &str, bytes: Option<usize>, chars: usize) -> usize {
    bytes
        .filter(|&b| text.is_char_boundary(b))
        .unwrap_or_else(|| {
            text.char_indices()
                .nth(chars)
                .map_or(text.len(), |(b, _)| b)
        })
}

pub(super) fn slow_yaml(text: &str, file: &Path) -> Boxed<Objects> {
    let mut objects = Vec::new();
    for (index, document) in split_yaml(text, file)?.into_iter().enumerate() {
        let number = index + 1;
        let header =
            serde_saphyr::from_str_with_options::<Header>(document.text, yaml_options())
                .map_err(|error| yaml_error(&error, file, number, &document, None, None, None))?;
        let (plan, header) = plan(header).map_err(|error| plan_error(error, file, number))?;
        let mut path = None;
        let result = serde_saphyr::with_deserializer_from_str_with_options(
            document.text,
            yaml_options(),
            |de| {
                let (result, failed_at) = typed(de, &plan);
                path = Some(failed_at);
                result
            },
        );
        match result {
            Ok(found) => objects.extend(found),
            Err(error) => {
                let (item, field) = path.as_ref().map_or((None, None), |path| {
                    let (item, field) = split_path(path, matches!(plan, Plan::List(_)));
                    (item, Some(field))
                });
                let object = object_of(&header, &plan, item);
                return Err(Box::new(yaml_error(
                    &error, file, number, &document, item, object, field,
                )));
            }
        }
    }
    Ok(collect(objects))
}

/// A YAML error in a document (`number`, counted from 1) as a [`ParseError`],
/// with its line in the file.
fn yaml_error(
    error: &serde_saphyr::Error,
    file: &Path,
    number: usize,
    document: &YamlDocument<'_>,
    item: Option<usize>,
    object: Option<String>,
    field: Option<String>,
) -> ParseError {
    let error = innermost(error);
    let location = error.location();
    let mut message = clean(&yaml_message(error));
    if let serde_saphyr::Error::InvalidScalar { ty, location } = error {
        // Say what was found, as serde's own "invalid type" messages do.
        let span = location.span();
        if let (Some(start), Some(len)) = (span.byte_offset(), span.byte_len())
            && let Some(found) = usize::try_from(start)
                .ok()
                .zip(usize::try_from(start.saturating_add(len)).ok())
                .and_then(|(start, end)| document.text.get(start..end))
        {
            message = format!("expected {ty}, found {:?}", clean(found));
        }
    }
    ParseError::Invalid {
        file: file.to_owned(),
        document: number,
        line: location.map(|l| l.line().saturating_add(document.line_offset)),
        column: location.map(|l| l.column()),
        item,
        object,
        field,
        message,
    }
}

/// A YAML error as a sentence for the file's author: the library's own
/// text is written for the programs that call it (it suggests its options,
/// or prints its structures).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::{Error, budget::BudgetBreach as Breach};
    match error {
        Error::DuplicateMappingKey { key: Some(key), .. } => format!("duplicate key {key:?}"),
        Error::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        Error::Budget { breach, .. } => {
            let what = match breach {
                Breach::Aliases { aliases } => format!("{aliases} aliases"),
                Breach::Anchors { anchors } => format!("{anchors} anchors"),
                Breach::AliasAnchorRatio { aliases, anchors } => {
                    format!("{aliases} aliases of {anchors} anchors")
                }
                Breach::Depth { depth } => format!("nested {depth} deep"),
                Breach::MergeKeys { merge_keys } => format!("{merge_keys} merge keys"),
                Breach::RecordedAnchorEvents {
                    recorded_anchor_events: n,
                } => format!("aliases that expand to {n} nodes"),
                Breach::RecordedAnchorBytes {
                    recorded_anchor_bytes: n,
                } => format!("aliases that expand to {n} bytes"),
                _ => "over the parser's limits".to_owned(),
            };
            format!("the YAML is too large or too complex to read: {what}")
        }
        other => serde_saphyr::UserMessageFormatter
            .format_message(other)
            .into_owned(),
    }
}

/// The error inside snippet and alias wrappers.
fn innermost(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match error {
        serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}
