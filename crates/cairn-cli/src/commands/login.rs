//! `cairn login`, `cairn logout`, `cairn whoami`, and reading passwords.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::lookup::s;
use crate::args::{Global, LoginArgs};
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
    let answer = c.post("/api/v1/auth/login", &json!({"user": a.user, "password": password}))?;
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
