//! A call's request message, as proto3 JSON, from the three places a REST
//! request puts its fields: the body (the whole message, one field, or
//! none), the path's variables, and the query parameters.

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::{BodyField, Route};
use crate::config::UnknownQuery;
use crate::translate::Refusal;

/// The request message's JSON: the body's, then the path's fields over
/// it, then the query's for fields neither set.
pub(super) fn request_json(
    route: &Route,
    path: Vec<(String, String)>,
    query: Option<&str>,
    body: &[u8],
    unknown: UnknownQuery,
) -> Result<Value, Refusal> {
    let input = &route.rpc.input;
    let parsed = || -> Result<Value, Refusal> {
        match body.iter().all(u8::is_ascii_whitespace) {
            true => Ok(Value::Object(Map::new())),
            false => serde_json::from_slice(body)
                .map_err(|e| Refusal::invalid_argument(format!("the body is not JSON: {e}"))),
        }
    };
    let mut message = match &route.body {
        BodyField::Whole => match parsed()? {
            Value::Object(object) => object,
            _ => return Err(Refusal::invalid_argument("the body must be a JSON object")),
        },
        BodyField::Field(field) => {
            let mut object = Map::new();
            object.insert(field.clone(), parsed()?);
            object
        }
        BodyField::None => Map::new(),
    };
    for (dotted, value) in path {
        let field = resolve(input, &dotted).expect("checked when the route was built");
        set(&mut message, &dotted, typed(&field, value), false);
    }
    let Some(query) = query else {
        return Ok(Value::Object(message));
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let field = match &route.body {
            BodyField::Whole => None,
            _ => resolve(input, &name).filter(|f| !route.fixed(&name) && is_scalar(f)),
        };
        match field {
            Some(field) => {
                let repeated = field.cardinality() == Cardinality::Repeated;
                set(
                    &mut message,
                    &name,
                    typed(&field, value.into_owned()),
                    repeated,
                );
            }
            None if unknown == UnknownQuery::Ignore => {}
            None => {
                return Err(Refusal::invalid_argument(format!(
                    "query parameter `{name}` names no field `{}` takes from the query",
                    input.full_name()
                )));
            }
        }
    }
    Ok(Value::Object(message))
}

/// The field a dotted path names, through singular message fields.
pub(super) fn resolve(message: &MessageDescriptor, dotted: &str) -> Option<FieldDescriptor> {
    let mut names = dotted.split('.');
    let mut field = by_name(message, names.next()?)?;
    for name in names {
        let Kind::Message(inner) = field.kind() else {
            return None;
        };
        if field.is_list() || field.is_map() {
            return None;
        }
        field = by_name(&inner, name)?;
    }
    Some(field)
}

/// A field by its proto name or its JSON name.
fn by_name(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Whether a path or query value can set the field: a scalar, an enum,
/// or a list of them (well-known wrapper types are messages, and left out).
pub(super) fn is_scalar(field: &FieldDescriptor) -> bool {
    !field.is_map() && !matches!(field.kind(), Kind::Message(_))
}

/// A text value as the JSON the field's kind takes (proto3 JSON takes
/// numbers, enums and bytes as strings).
fn typed(field: &FieldDescriptor, text: String) -> Value {
    match (field.kind(), text.as_str()) {
        (Kind::Bool, "true") => Value::Bool(true),
        (Kind::Bool, "false") => Value::Bool(false),
        _ => Value::String(text),
    }
}

/// Set the dotted field in `object`, making the messages on the way; a
/// repeated field gets the value appended.
fn set(object: &mut Map<String, Value>, dotted: &str, value: Value, repeated: bool) {
    let (parents, leaf) = match dotted.rsplit_once('.') {
        Some((parents, leaf)) => (Some(parents), leaf),
        None => (None, dotted),
    };
    let mut at = object;
    for name in parents.into_iter().flat_map(|p| p.split('.')) {
        let next = at
            .entry(name.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        at = next.as_object_mut().expect("made an object");
    }
    match repeated {
        false => {
            at.insert(leaf.to_owned(), value);
        }
        true => match at
            .entry(leaf.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        },
    }
}
