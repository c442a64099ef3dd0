//! Closed sets of names the API, the configuration database and the command line share: roles,
//! token kinds, host kinds, session states… Each is an enum serialised as its name, with
//! [`std::str::FromStr`] and [`std::fmt::Display`] on the same text.

/// A name that is not one of its set's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?}: expected one of {expected}")]
pub struct UnknownName {
    /// The set, e.g. `role`.
    pub what: &'static str,
    /// The text given.
    pub text: String,
    /// The names of the set, comma-separated.
    pub expected: String,
}

/// Declares a closed set of names (an enum serialised as its names).
macro_rules! names {
    ($(#[doc = $doc:literal])* $name:ident ($what:literal) { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant),+];
            /// The name as stored and as the API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        /// A string schema listing the names (a derive would list the Rust variants).
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let doc: &[&str] = &[$($doc),*];
                let description = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .description(Some(description))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::names::UnknownName {
                        what: $what,
                        text: s.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

names! {
    /// What a user may do; checked on every API call. Ordered: a viewer may read, a restore
    /// operator may also restore, an administrator may do everything.
    Role ("role") {
        /// Everything, including users and configuration.
        Administrator => "administrator",
        /// Restores and reading.
        RestoreOperator => "restore-operator",
        /// Reading only.
        Viewer => "viewer",
    }
}

impl Role {
    /// Rank: a higher rank may do everything a lower one may.
    pub fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::RestoreOperator => 1,
            Role::Administrator => 2,
        }
    }

    /// Whether this role may do what `need` may.
    pub fn at_least(self, need: Role) -> bool {
        self.rank() >= need.rank()
    }
}

names! {
    /// Where a token comes from.
    TokenKind ("token kind") {
        /// Issued by a login with a password; short-lived.
        Login => "login",
        /// Created by a user for scripts.
        Api => "api",
    }
}

names! {
    /// What a token may be used for.
    TokenScope ("token scope") {
        /// Everything its owner's role allows.
        Full => "full",
        /// Only setting up a second factor (an administrator who must have one and has none yet).
        TotpSetup => "totp-setup",
    }
}

names! {
    /// What an agent may do for the server.
    AgentRole ("agent role") {
        /// Source data mover: reads VM disks.
        Proxy => "proxy",
        /// Target data mover: owns a repository folder and writes to it.
        Repository => "repository",
        /// Reaches SMB/NFS shares or object storage for others.
        Gateway => "gateway",
    }
}

names! {
    /// The kind of an inventory source.
    HostKind ("host kind") {
        /// A folder of disk image files; its location is the folder's path.
        ImageFolder => "image-folder",
        /// A QEMU/KVM host; its location names its QMP socket or folder of sockets.
        Qemu => "qemu",
        /// A Microsoft Hyper-V host; its location is its address.
        HyperV => "hyperv",
    }
}

names! {
    /// State of a session or a task.
    SessionState ("session state") {
        /// Queued, waiting for resources.
        Waiting => "waiting",
        /// Processing.
        Running => "running",
        /// Ended without problems.
        Success => "success",
        /// Ended with warnings (e.g. a VM needed retries).
        Warning => "warning",
        /// Ended with errors.
        Failed => "failed",
        /// Stopped by a user or a closing backup window.
        Stopped => "stopped",
    }
}

impl SessionState {
    /// Whether the session or task has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, SessionState::Waiting | SessionState::Running)
    }
}

names! {
    /// Severity of a task log line.
    LogLevel ("log level") {
        /// Progress information.
        Info => "info",
        /// Something the user should look at.
        Warning => "warning",
        /// A failure.
        Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_name_the_set() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "role \"root\": expected one of administrator, restore-operator, viewer"
        );
        assert!(Role::Administrator.at_least(Role::RestoreOperator));
        assert!(!Role::Viewer.at_least(Role::RestoreOperator));
        assert!(SessionState::Stopped.is_final() && !SessionState::Running.is_final());
    }

    /// The OpenAPI schema of each set lists exactly the names the API sends.
    #[test]
    fn schemas_list_the_serialised_names() {
        fn names_in<T: utoipa::PartialSchema>() -> Vec<String> {
            let schema = serde_json::to_value(T::schema()).unwrap();
            assert_eq!(schema["type"], "string", "{schema}");
            assert!(
                schema["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{schema}"
            );
            schema["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        }
        let texts = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names_in::<Role>(),
            texts(&["administrator", "restore-operator", "viewer"])
        );
        assert_eq!(
            names_in::<HostKind>(),
            HostKind::ALL.iter().map(|h| h.as_str().to_owned()).collect::<Vec<_>>()
        );
        assert_eq!(
            names_in::<SessionState>(),
            SessionState::ALL.iter().map(|h| h.to_string()).collect::<Vec<_>>()
        );
    }
}
