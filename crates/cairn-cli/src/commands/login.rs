//! `cairn login` (with the second factor, and its set-up when the server requires one),
//! `cairn logout`, `cairn whoami`, `cairn password`, and reading passwords and codes.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::lookup::s;
use crate::args::{Global, LoginArgs, PasswordArgs};
use crate::client::{self, Client, StoredLogin, usage};
use crate::output;

/// The first line of standard input, without its line ending.
pub fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        return Err(usage!("the password on standard input is empty"));
    }
    Ok(pw.to_string())
}

/// Asks for a password on the terminal without echo (twice when `confirm`).
pub fn password_from_terminal(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    let ask = |p: &str| {
        rpassword::prompt_password(p).map_err(|e| {
            usage!(
                "cannot ask for the password: no terminal ({e}); pass --password-stdin and give it on standard input"
            )
        })
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_err()
    {
        return Err(usage!(
            "cannot ask for the password: no terminal; pass --password-stdin and give it on standard input"
        ));
    }
    let pw = ask(prompt)?;
    if pw.is_empty() {
        return Err(usage!("the password is empty"));
    }
    if confirm && ask("Again: ")? != pw {
        return Err(usage!("the two passwords differ"));
    }
    Ok(pw)
}

/// Asks for a code of the second factor on the terminal.
pub fn code_from_terminal(prompt: &str) -> anyhow::Result<String> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty");
    let Ok(mut tty) = tty else {
        return Err(usage!(
            "a code of the second factor is needed and there is no terminal to ask for it: pass --totp-code"
        ));
    };
    use std::io::Write;
    write!(tty, "{prompt}").context("writing to the terminal")?;
    let mut line = String::new();
    std::io::BufReader::new(tty)
        .read_line(&mut line)
        .context("reading the code from the terminal")?;
    let code = line.trim().to_string();
    if code.is_empty() {
        return Err(usage!("no code was given"));
    }
    Ok(code)
}

pub fn login(g: &Global, a: &LoginArgs) -> anyhow::Result<ExitCode> {
    let url = client::normalize_url(&a.url)?;
    let ca = match &g.ca_cert {
        Some(path) => Some(client::read_ca_file(path)?),
        None => None,
    };
    let password = if a.password_stdin {
        password_from_stdin()?
    } else {
        password_from_terminal(&format!("Password of {} on {url}: ", a.user), false)?
    };
    let c = Client::new(&url, None, ca.as_deref())?;
    let mut body = json!({"user": a.user, "password": password});
    if let Some(code) = &a.totp_code {
        body["code"] = json!(code);
    }
    let mut answer = match c.post("/api/v1/auth/login", &body) {
        Err(e) if client::ApiError::code_of(&e) == Some("totp_required") => {
            body["code"] = json!(code_from_terminal(&format!(
                "Code of the authenticator app for {}: ",
                a.user
            ))?);
            c.post("/api/v1/auth/login", &body)?
        }
        other => other?,
    };
    let setup_only = answer.get("totp_setup_required").and_then(Value::as_bool) == Some(true);
    if setup_only {
        eprintln!(
            "The server requires a second factor of administrators and {} has none yet: until it is set up this \
             login can do nothing else.",
            a.user
        );
        let limited = Client::new(&url, Some(s(&answer, "token").to_string()), ca.as_deref())?;
        let setup = limited.post("/api/v1/auth/totp", &json!({}))?;
        eprintln!(
            "Add this account to an authenticator app (Aegis, FreeOTP, Google Authenticator…):\n  secret: {}\n  \
             URL:    {}",
            s(&setup, "secret"),
            s(&setup, "otpauth_url")
        );
        if let Ok(code) = code_from_terminal(&format!("Code the app shows for {}: ", a.user)) {
            let confirmed = limited.post("/api/v1/auth/totp/confirm", &json!({ "code": code }))?;
            answer = confirmed.get("login").cloned().unwrap_or(Value::Null);
        } else {
            eprintln!("Then confirm it with `cairn totp confirm CODE`.");
        }
    }
    let token = s(&answer, "token");
    if token.is_empty() {
        anyhow::bail!("the server {url} answered the login without a token");
    }
    let user = answer.get("user").cloned().unwrap_or(Value::Null);
    let login = StoredLogin {
        url: url.clone(),
        token: token.to_string(),
        ca_cert: ca,
        user: a.user.clone(),
    };
    let path = client::save_login(&login)?;
    if g.json {
        output::json(&json!({
            "url": url,
            "user": user,
            "expires_at": answer.get("expires_at"),
            "config": path.display().to_string(),
        }))?;
    } else {
        let expires = answer
            .get("expires_at")
            .and_then(Value::as_str)
            .map(|t| format!(", the login lasts until {}", output::time(t)))
            .unwrap_or_default();
        println!("logged in to {url} as {} ({}){expires}", a.user, s(&user, "role"));
        if !g.quiet {
            println!("login stored in {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logout(g: &Global) -> anyhow::Result<ExitCode> {
    let stored = client::load_login()?;
    let mut server_said = None;
    if stored.is_some() || g.server.is_some() {
        let c = Client::from_global(g)?;
        // A token the server no longer knows is as good as logged out.
        match c.post("/api/v1/auth/logout", &json!({})) {
            Ok(_) => {}
            Err(e) if e.downcast_ref::<client::ApiError>().is_some_and(|a| a.status == 401) => {}
            Err(e) => server_said = Some(e),
        }
    }
    let removed = client::remove_login()?;
    if let Some(e) = server_said {
        eprintln!("warning: the server did not end the login token: {e:#}");
    }
    if g.json {
        output::json(&json!({"logged_out": removed}))?;
    } else if removed {
        println!("logged out");
    } else {
        println!("not logged in");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn password`: changes the caller's own password; the server ends every login of the user
/// and the new login token is stored in place of the old one.
pub fn change_password(g: &Global, a: &PasswordArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_global(g)?;
    let (current, new) = if a.password_stdin {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = |what: &str| -> anyhow::Result<String> {
            match lines.next() {
                Some(Ok(l)) if !l.trim_end_matches('\r').is_empty() => Ok(l.trim_end_matches('\r').to_string()),
                Some(Err(e)) => Err(e).context("reading standard input"),
                _ => Err(usage!(
                    "standard input must hold the current password, then the new one ({what} is missing)"
                )),
            }
        };
        (next("the current password")?, next("the new password")?)
    } else {
        (
            password_from_terminal("Current password: ", false)?,
            password_from_terminal("New password: ", true)?,
        )
    };
    let answer = c.post(
        "/api/v1/auth/password",
        &json!({"current_password": current, "new_password": new}),
    )?;
    let mut stored = client::load_login()?;
    let replaced = match &mut stored {
        Some(login) if login.url == c.base_url() => {
            login.token = s(&answer, "token").to_string();
            client::save_login(login)?;
            true
        }
        _ => false,
    };
    if g.json {
        output::json(&json!({"changed": true, "login_updated": replaced}))?;
    } else {
        println!(
            "password changed; every other login of {} has ended",
            s(&answer["user"], "name")
        );
        if !replaced {
            println!("log in again with `cairn login` to use the new password");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn whoami(g: &Global) -> anyhow::Result<ExitCode> {
    let c = Client::from_global(g)?;
    let me = c.get("/api/v1/auth/whoami")?;
    if g.json {
        output::json(&me)?;
    } else {
        println!("{} ({}) on {}", s(&me, "name"), s(&me, "role"), c.base_url());
    }
    Ok(ExitCode::SUCCESS)
}
