//! Checks of request values whose rules the OpenAPI document states as patterns and bounds.
//!
//! The server must accept exactly what the document allows (schemathesis holds it to that in
//! the test suite), so each rule is written once here as a pattern constant beside the function
//! that checks it, and a unit test ties the two together.

/// A request value that breaks its rule: the message names the field, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What the checks return.
pub type CheckResult<T> = Result<T, Invalid>;

/// A display name (jobs, repositories, hosts): no control characters and not only spaces.
pub const DISPLAY_NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// An absolute path on a server or agent machine: components of at most 255 characters, no NUL.
pub const ABSOLUTE_PATH_PATTERN: &str = r"^(/[^/\x00]{0,255})+$";

/// Longest path accepted.
pub const MAX_PATH: usize = 4096;

/// `field` as a display name of at most `max` characters (no control characters, not only
/// spaces); returns it without surrounding spaces.
pub fn display_name(field: &str, value: &str, max: usize) -> CheckResult<String> {
    let ok = value.chars().count() <= max && !value.chars().any(char::is_control) && !value.trim().is_empty();
    if ok {
        Ok(value.trim().to_owned())
    } else {
        Err(Invalid(format!(
            "{field} {value:?}: use 1 to {max} characters, not only spaces, without control characters"
        )))
    }
}

/// `field` as an absolute path of at most [`MAX_PATH`] characters without NUL, whose components
/// have at most 255 characters ([`ABSOLUTE_PATH_PATTERN`]).
pub fn absolute_path(field: &str, value: &str) -> CheckResult<std::path::PathBuf> {
    if value.starts_with('/')
        && !value.contains('\0')
        && value.chars().count() <= MAX_PATH
        && value.split('/').all(|c| c.chars().count() <= 255)
    {
        Ok(std::path::PathBuf::from(value))
    } else {
        Err(Invalid(format!(
            "{field} {value:?}: give an absolute path (starting with /)"
        )))
    }
}

/// `value` of `field` within `range`.
pub fn within(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> CheckResult<i64> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Invalid(format!(
            "{field} {value}: must be between {} and {}",
            range.start(),
            range.end()
        )))
    }
}

/// A JSON Schema of an integer that is one of `values` (with `null` when `nullable`).
pub fn integer_enum(values: &[i64], nullable: bool, description: &str) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let mut items: Vec<serde_json::Value> = values.iter().map(|v| serde_json::json!(v)).collect();
    let ty = if nullable {
        items.push(serde_json::Value::Null);
        SchemaType::from_iter([Type::Integer, Type::Null])
    } else {
        SchemaType::Type(Type::Integer)
    };
    ObjectBuilder::new()
        .schema_type(ty)
        .enum_values(Some(items))
        .description(Some(description))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_follow_their_pattern() {
        let pattern = regex::Regex::new(DISPLAY_NAME_PATTERN).unwrap();
        for (text, ok) in [
            ("nightly", true),
            (" nightly ", true),
            ("ja nuit", true),
            ("", false),
            ("   ", false),
            ("a\u{7}b", false),
            ("a\u{85}", false),
            ("\u{a0}", false),
            ("x\u{a0}", true),
        ] {
            assert_eq!(display_name("name", text, 100).is_ok(), ok, "{text:?}");
            assert_eq!(pattern.is_match(text), ok, "pattern on {text:?}");
        }
        assert!(display_name("name", &"x".repeat(101), 100).is_err());
    }

    #[test]
    fn absolute_paths_follow_their_pattern() {
        let pattern = regex::Regex::new(ABSOLUTE_PATH_PATTERN).unwrap();
        let long = format!("/{}", "x".repeat(256));
        for (text, ok) in [
            ("/srv/x", true),
            ("/", true),
            ("//a/", true),
            ("srv", false),
            ("", false),
            ("/a\0b", false),
            (long.as_str(), false),
        ] {
            assert_eq!(absolute_path("path", text).is_ok(), ok, "{text:?}");
            assert_eq!(pattern.is_match(text), ok, "pattern on {text:?}");
        }
    }
}
