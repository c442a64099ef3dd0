//! `cairn totp setup|disable`: the caller's own second factor.

use std::process::ExitCode;

use cairn_api::auth::{TotpEnabled, TotpSetup, UserInfo};
use serde_json::json;

use super::login::code_from_terminal;
use crate::args::{Global, TotpCommand};
use crate::client::{self, Client, typed_for};
use crate::output;

/// Confirms the second factor being set up; stores the full login token the server gives when
/// the stored one was good only for the set-up.
fn confirm(g: &Global, client: &Client, name: &str, code: &str) -> anyhow::Result<()> {
    let answer: TotpEnabled = typed_for(
        "totp confirm",
        client.post("/api/v1/auth/totp/confirm", &json!({ "code": code }))?,
    )?;
    let token = answer.login.map(|l| l.token).unwrap_or_default();
    let mut stored_new = false;
    if !token.is_empty()
        && let Some(mut login) = client::load_login()?
        && login.url == client.base_url()
    {
        login.token = token;
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
    let me: UserInfo = typed_for("totp", client.get("/api/v1/auth/whoami")?)?;
    let name = me.name;
    match c {
        TotpCommand::Setup => {
            let setup = client.post("/api/v1/auth/totp", &json!({}))?;
            if g.json {
                output::json(&setup)?;
                return Ok(ExitCode::SUCCESS);
            }
            let setup: TotpSetup = typed_for("totp setup", setup)?;
            println!(
                "Add this account to an authenticator app (Aegis, FreeOTP, Google Authenticator…):\n  secret: {}\n  URL:    {}",
                setup.secret, setup.otpauth_url
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
