//! Arguments of the commands about the caller's own login: `cairn login`, `cairn password` and
//! `cairn totp …`.

use clap::{Args, Subcommand};

/// `cairn login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Server URL, e.g. https://backup.example:8520.
    pub url: String,
    /// User name.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Read the password from the first line of standard input (else it is asked for on the
    /// terminal).
    #[arg(long)]
    pub password_stdin: bool,
    /// The current code of the authenticator app, when the user has a second factor (else it is
    /// asked for on the terminal when needed).
    #[arg(long, value_name = "CODE")]
    pub totp_code: Option<String>,
}

/// `cairn password`.
#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// Read the current password and then the new one from two lines of standard input (else
    /// they are asked for on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `cairn totp …`.
#[derive(Subcommand, Debug)]
pub enum TotpCommand {
    /// Set up a second factor: shows the secret for an authenticator app, then asks for a code
    /// on the terminal (without one, confirm later with `cairn totp confirm CODE`).
    Setup,
    /// Confirm the second factor being set up with a code the app shows.
    Confirm {
        /// The code.
        code: String,
    },
    /// Remove your second factor (needs a current code).
    Disable {
        /// The code the app shows (else it is asked for on the terminal).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
}
