//! `cairn totp setup|disable`: the caller's own second factor.

use std::process::ExitCode;

use serde_json::json;

use super::login::code_from_terminal;
use super::lookup::s;
use crate::args::{Global, TotpCommand};
use crate::client::{self, Client};
use crate::output;

/// Confirms the second factor being set up; stores the full login token the server gives when
/// the stored one was good only for the set-up.
fn confirm(g: &Global, client: &Client, name: &str, code: &str) -> anyhow::Result<()> {
    let answer = client.post("/api/v1/auth/totp/confirm", &json!({ "code": code }))?;
    let token = s(&answer["login"], "token");
    let mut stored_new = false;
    if !token.is_empty()
        && let Some(mut login) = client::load_login()?
        && login.url == client.base_url()
    {
        login.token = token.to_string();
        client::save_login(&login)?;
        stored_new = true;
    }
    if g.json {
        output::json(&json!({"enabled": true, "user": name, "login_stored": stored_new}))?;
    } else {
        println!("second factor of {name} is in force: every login asks for a code from now on");
    }
    Ok(())
}

/// Runs `cairn totp …` for the logged-in user.
pub fn run(g: &Global, c: &TotpCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    let me = client.get("/api/v1/auth/whoami")?;
    let name = me["name"].as_str().unwrap_or("you").to_string();
    match c {
        TotpCommand::Setup => {
            let setup = client.post("/api/v1/auth/totp", &json!({}))?;
            if g.json {
                output::json(&setup)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "Add this account to an authenticator app (Aegis, FreeOTP, Google Authenticator…):\n  secret: {}\n  URL:    {}",
                s(&setup, "secret"),
                s(&setup, "otpauth_url")
            );
            match code_from_terminal(&format!("Code the app shows for {name}: ")) {
                Ok(code) => confirm(g, &client, &name, &code)?,
                Err(_) => println!("then confirm it with `cairn totp confirm CODE`"),
            }
        }
        TotpCommand::Confirm { code } => confirm(g, &client, &name, code)?,
        TotpCommand::Disable { code } => {
            let code = match code {
                Some(c) => c.clone(),
                None => code_from_terminal("Current code of the authenticator app: ")?,
            };
            client.post("/api/v1/auth/totp/disable", &json!({ "code": code }))?;
            if g.json {
                output::json(&json!({"enabled": false, "user": name}))?;
            } else {
                println!("second factor of {name} removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
