//! Arguments of `cairn user …` and `cairn token …`: users and API tokens.

use clap::Subcommand;

/// A role of a user.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Administrator,
    /// Read everything and restore.
    RestoreOperator,
    /// Read only.
    Viewer,
}

impl Role {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::RestoreOperator => "restore-operator",
            Role::Viewer => "viewer",
        }
    }
}

/// `cairn user …`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user.
    Add {
        /// User name.
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from standard input (else it is asked for twice on the terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Change a user's role or password.
    Set {
        /// User name.
        name: String,
        /// New role.
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Read a new password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Remove {
        /// User name.
        name: String,
    },
    /// Remove a user's second factor (a lost phone); the user's logins end.
    ResetTotp {
        /// User name.
        name: String,
    },
}

/// `cairn token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token for yourself (printed once).
    Create {
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Days until the token expires (default: never).
        #[arg(long, value_name = "N")]
        expires_days: Option<u32>,
    },
    /// List your tokens (without their secrets).
    List,
    /// Delete one of your tokens.
    Remove {
        /// Token id (see `cairn token list`).
        id: i64,
    },
}
