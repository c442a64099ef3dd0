//! Small helpers over `roxmltree` for libvirt's XML: lookups that give `None` rather than fail,
//! an error that names the document, and escaping for the XML cairn writes.

use roxmltree::{Document, Node};

/// XML that cannot be read or does not say what cairn needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct XmlError {
    /// The document or element concerned (`domain XML`, `domain web01: disk vda`).
    pub what: String,
    /// What is wrong with it.
    pub cause: String,
}

impl XmlError {
    /// An error about `what`.
    pub fn new(what: &str, cause: impl Into<String>) -> XmlError {
        XmlError {
            what: what.to_string(),
            cause: cause.into(),
        }
    }
}

/// Parses `xml`, naming it `what` in the error.
pub(crate) fn parse<'a>(what: &str, xml: &'a str) -> Result<Document<'a>, XmlError> {
    Document::parse(xml).map_err(|e| XmlError::new(what, e.to_string()))
}

/// The first child element of `node` named `name`.
pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The child elements of `node` named `name`.
pub(crate) fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The value of attribute `name`.
pub(crate) fn attr(node: Node<'_, '_>, name: &str) -> Option<String> {
    node.attribute(name).map(str::to_string)
}

/// The element's text, trimmed; `None` when empty.
pub(crate) fn text(node: Node<'_, '_>) -> Option<String> {
    let t = node.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `s` escaped for XML text and attribute values (quoted with `'` or `"`).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}
