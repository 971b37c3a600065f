//! What a document holds, decided from its lenient [`Header`] before the
//! typed pass, and the errors that are found then.

use std::path::Path;

use super::{
    ParseError,
    header::{Header, Shape},
    kind::{Class, Kind, classify, classify_item},
};

/// What a document holds, decided from its [`Header`].
pub(super) enum Plan {
    /// A null or empty document: nothing.
    Nothing,
    Single(Kind),
    /// A list, with the kind of each item.
    List(Vec<Kind>),
}

/// Why a document cannot be planned: a [`ParseError`] without the file and
/// document number.
pub(super) enum PlanError {
    NotAnObject {
        item: Option<usize>,
        found: &'static str,
    },
    Unsupported {
        item: Option<usize>,
        header: Box<Header>,
    },
}

pub(super) fn plan(mut header: Header) -> Result<(Plan, Header), PlanError> {
    match header.shape {
        Shape::Null => return Ok((Plan::Nothing, header)),
        Shape::Other(found) => return Err(PlanError::NotAnObject { item: None, found }),
        Shape::Mapping => {}
    }
    match classify(header.api_version.as_deref(), header.kind.as_deref()) {
        Class::Object(kind) => Ok((Plan::Single(kind), header)),
        Class::List(default) => {
            let items = header.items.as_deref().unwrap_or_default();
            let mut kinds = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item.shape {
                    Shape::Mapping => {}
                    Shape::Null => {
                        return Err(PlanError::NotAnObject {
                            item: Some(index),
                            found: "null",
                        });
                    }
                    Shape::Other(found) => {
                        return Err(PlanError::NotAnObject {
                            item: Some(index),
                            found,
                        });
                    }
                }
                if let Some(kind) =
                    classify_item(item.api_version.as_deref(), item.kind.as_deref(), default)
                {
                    kinds.push(kind);
                } else {
                    let item = header
                        .items
                        .as_mut()
                        .and_then(|items| items.get_mut(index))
                        .map(std::mem::take);
                    return Err(PlanError::Unsupported {
                        item: Some(index),
                        header: Box::new(item.unwrap_or_default()),
                    });
                }
            }
            Ok((Plan::List(kinds), header))
        }
        Class::Unsupported => Err(PlanError::Unsupported {
            item: None,
            header: Box::new(header),
        }),
    }
}

pub(super) fn plan_error(error: PlanError, file: &Path, document: usize) -> ParseError {
    match error {
        PlanError::NotAnObject { item, found } => ParseError::Invalid {
            file: file.to_owned(),
            document,
            line: None,
            column: None,
            item,
            object: None,
            field: None,
            message: format!("expected a Kubernetes object (a mapping), found {found}"),
        },
        PlanError::Unsupported { item, header } => {
            let object = header.describe(None);
            let Header {
                kind, api_version, ..
            } = *header;
            ParseError::Unsupported {
                file: file.to_owned(),
                document,
                item,
                object,
                kind,
                api_version,
                in_list: item.is_some(),
            }
        }
    }
}

/// Names the object a typed-pass error is in.
pub(super) fn object_of(header: &Header, plan: &Plan, item: Option<usize>) -> Option<String> {
    match (plan, item) {
        (Plan::Single(kind), _) => header.describe(Some(kind.name())),
        (Plan::List(kinds), Some(index)) => {
            let item = header.items.as_ref()?.get(index)?;
            item.describe(kinds.get(index).map(|kind| kind.name()))
        }
        _ => None,
    }
}
