//! Identifiers of the things the scheduler counts.

use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, " (cheap to clone; any string the caller uses, e.g. a database key).")]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            #[doc = concat!("Wraps `id` as a ", $what, " identifier.")]
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.into())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(ProxyId, "proxy");
id_type!(RepositoryId, "repository");
id_type!(JobId, "job");
