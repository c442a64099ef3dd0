//! The HTTP client of a cairn backup server, and the login it keeps.
//!
//! `cairn login URL` stores `{url, token, ca_cert, user}` in `client.json` (see [`config_path`]);
//! every server command then builds a [`Client`] from it, with `--server`/`CAIRN_SERVER`,
//! `CAIRN_TOKEN` and `--ca-cert`/`CAIRN_CA_CERT` taking precedence. When a CA certificate is
//! known, it is the only root the client trusts: the server's own CA signs its certificate, and
//! nothing else should be able to stand in for it.

use std::fmt;
use std::fs;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use reqwest::blocking::{RequestBuilder, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::Global;

/// How long an ordinary API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A usage or login problem (exit code 2): the command cannot be carried out as given.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a [`UsageError`] from a format string.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::client::UsageError(format!($($arg)*)))
    };
}
pub(crate) use usage;

/// An error answer of the server.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What to tell the user (the server's message, with advice for 401 and 403).
    pub message: String,
    /// The server's machine-readable reason (`totp_required`…), when it gave one.
    pub code: Option<String>,
}

impl ApiError {
    /// The machine-readable reason of `e` if it is an error answer of the server.
    pub fn code_of(e: &anyhow::Error) -> Option<&str> {
        e.downcast_ref::<ApiError>().and_then(|a| a.code.as_deref())
    }

    /// A login or role problem: exit code 2 rather than 1. (Other refusals, such as a restore
    /// target outside the restore folders, are failures of the command: 1.)
    pub fn is_auth(&self) -> bool {
        self.status == 401
            || (self.status == 403 && matches!(self.code.as_deref(), Some("role_too_low" | "totp_setup_required")))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// What `cairn login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLogin {
    /// Base URL of the server, e.g. `https://backup.example:8520`.
    pub url: String,
    /// The login token.
    pub token: String,
    /// PEM text of the CA the server's certificate must chain to (`None`: system roots).
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// The user who logged in.
    pub user: String,
}

/// The folder of the client's configuration: `$CAIRN_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/cairn`, else `~/.config/cairn`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAIRN_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cairn"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("cairn")),
        None => bail!("cannot find a folder for the login: set CAIRN_CONFIG_DIR, XDG_CONFIG_HOME or HOME"),
    }
}

/// Where the login is kept: `client.json` in [`config_dir`].
pub fn config_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("client.json"))
}

/// Reads the stored login, if there is one.
pub fn load_login() -> anyhow::Result<Option<StoredLogin>> {
    let path = config_path()?;
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading the login in {}", path.display())),
    };
    let login = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cairn login (run `cairn login URL` again)", path.display()))?;
    Ok(Some(login))
}

/// Stores the login (folder mode 0700, file mode 0600, replaced atomically).
pub fn save_login(login: &StoredLogin) -> anyhow::Result<PathBuf> {
    let dir = config_dir()?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let path = dir.join("client.json");
    let tmp = dir.join(".client.json.tmp");
    let mut text = serde_json::to_string_pretty(login).context("encoding the login")?;
    text.push('\n');
    crate::private_file::write(&path, &tmp, text.as_bytes())
        .with_context(|| format!("writing the login to {}", path.display()))?;
    Ok(path)
}

/// Deletes the stored login; `false` if there was none.
pub fn remove_login() -> anyhow::Result<bool> {
    let path = config_path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// `https://` added when no scheme is given, trailing slashes removed.
pub fn normalize_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(usage!("the server URL is empty (e.g. https://backup.example:8520)"));
    }
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| usage!("{url:?} is not a server URL: {e}"))?;
    if parsed.scheme() != "https" && parsed.scheme() != "http" {
        return Err(usage!("{url:?} is not a server URL: the scheme must be https"));
    }
    Ok(url)
}

/// Reads a PEM CA certificate file and checks that it holds a certificate.
pub fn read_ca_file(path: &Path) -> anyhow::Result<String> {
    let pem = fs::read_to_string(path).with_context(|| format!("reading CA certificate {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(pem)
}

/// A client of one server.
pub struct Client {
    base: String,
    token: Option<String>,
    has_ca: bool,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of `url` with `token`, trusting only `ca_pem` when given (else the system roots).
    pub fn new(url: &str, token: Option<String>, ca_pem: Option<&str>) -> anyhow::Result<Client> {
        let base = normalize_url(url)?;
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("the stored CA certificate is not PEM (run `cairn login URL --ca-cert FILE` again)")?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().context("setting up the HTTPS client")?;
        Ok(Client {
            base,
            token,
            has_ca: ca_pem.is_some(),
            http,
        })
    }

    /// The client of the server named by the flags, the environment or the stored login.
    pub fn from_global(g: &Global) -> anyhow::Result<Client> {
        let stored = load_login()?;
        let url = match (&g.server, &stored) {
            (Some(url), _) => normalize_url(url)?,
            (None, Some(s)) => s.url.clone(),
            (None, None) => return Err(usage!("not logged in — run `cairn login URL`")),
        };
        // The stored token and CA belong to the stored server only: never send them elsewhere.
        let same = stored.as_ref().filter(|s| s.url == url);
        let token = std::env::var("CAIRN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| same.map(|s| s.token.clone()));
        let ca = match &g.ca_cert {
            Some(path) => Some(read_ca_file(path)?),
            None => same.and_then(|s| s.ca_cert.clone()),
        };
        Client::new(&url, token, ca.as_deref())
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path` (path starts with `/api/`).
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// `GET path` with query parameters.
    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let req = self.request(Method::GET, path).query(query);
        self.finish(Method::GET, path, req)
    }

    /// `POST path` with a JSON body.
    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body))
    }

    /// `POST path` with a JSON body and a time limit other than the usual one.
    pub fn post_with_timeout<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let req = self.request(Method::POST, path).json(body).timeout(timeout);
        self.finish(Method::POST, path, req)
    }

    /// `PUT path` with a JSON body.
    pub fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.call(Method::PUT, path, Some(body))
    }

    /// `PATCH path` with a JSON body.
    pub fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.call(Method::PATCH, path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::DELETE, path, None::<&()>)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    fn call<B: Serialize + ?Sized>(&self, method: Method, path: &str, body: Option<&B>) -> anyhow::Result<Value> {
        let mut req = self.request(method.clone(), path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.finish(method, path, req)
    }

    fn finish(&self, method: Method, path: &str, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return read_json(resp, &method, path);
        }
        let text = resp.text().unwrap_or_default();
        let parsed = serde_json::from_str::<Value>(&text).ok();
        let code = parsed
            .as_ref()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string));
        let server_message = parsed
            .as_ref()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                let t = text.trim();
                if t.is_empty() {
                    status.to_string()
                } else {
                    t.chars().take(300).collect()
                }
            });
        let message = match status.as_u16() {
            401 if path == "/api/v1/auth/login" => server_message,
            401 => format!("not logged in — run `cairn login URL` ({server_message})"),
            403 if code.as_deref() == Some("totp_setup_required") => format!(
                "administrators of this server must use a second factor: run `cairn login` again to set it up \
                 ({server_message})"
            ),
            403 if code.as_deref() == Some("role_too_low") => {
                let role = self.role().unwrap_or_else(|| "(unknown)".to_string());
                format!(
                    "your role {role} may not {} ({server_message})",
                    describe_action(&method, path)
                )
            }
            _ => server_message,
        };
        Err(ApiError {
            status: status.as_u16(),
            message,
            code,
        }
        .into())
    }

    /// The caller's role, asked of the server (for a 403 message).
    fn role(&self) -> Option<String> {
        let resp = self.request(Method::GET, "/api/v1/auth/whoami").send().ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().ok()?;
        v.get("role").and_then(Value::as_str).map(str::to_string)
    }

    fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let chain = error_text(e);
        let lower = chain.to_lowercase();
        if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("invalid peer") {
            let cause = innermost(e);
            if self.has_ca {
                return usage!(
                    "cannot verify the certificate of {} with the CA certificate given ({cause}): \
                     pass the server's own CA with `--ca-cert DATA/ca.pem` (DATA is the server's data folder)",
                    self.base
                );
            }
            return usage!(
                "cannot verify the certificate of {} ({cause}): pass the server's CA with \
                 `--ca-cert DATA/ca.pem` (DATA is the server's data folder)",
                self.base
            );
        }
        if e.is_timeout() {
            return anyhow::anyhow!("the server {} did not answer in time ({chain})", self.base);
        }
        anyhow::anyhow!("cannot reach the server {} ({chain})", self.base)
    }
}

fn read_json(resp: Response, method: &Method, path: &str) -> anyhow::Result<Value> {
    let bytes = resp
        .bytes()
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).with_context(|| format!("the answer to {method} {path} is not JSON"))
}

/// The text of an error and its sources, without repeats.
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let t = err.to_string();
        if !out.contains(&t) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&t);
        }
        cur = err.source();
    }
    out
}

/// The text of the innermost source of an error (the actual cause).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What a request does, in words, for "your role X may not …".
fn describe_action(method: &Method, path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let last = parts.last().copied().unwrap_or("");
    let what = parts.first().copied().unwrap_or("");
    let read = *method == Method::GET;
    match (what, last) {
        ("users", _) if read => "list users".into(),
        ("users", _) => "manage users".into(),
        ("tokens", _) => "manage these tokens".into(),
        ("jobs", "run") => "run jobs".into(),
        ("jobs", "stop") => "stop jobs".into(),
        ("sessions", "stop") => "stop sessions".into(),
        ("restores", _) => "restore".into(),
        ("settings", _) if !read => "change settings".into(),
        (w, _) if read => format!("read {w}"),
        ("jobs", _) => "change jobs".into(),
        ("hosts", _) => "change hosts".into(),
        ("repositories", _) => "change repositories".into(),
        ("proxies", _) => "change proxies".into(),
        (w, _) => format!("change {w}"),
    }
}

/// An answer of the server as the API type `T`.
pub fn typed<T: serde::de::DeserializeOwned>(answer: Value) -> anyhow::Result<T> {
    serde_json::from_value(answer).context("the server's answer is not what this version of cairn expects")
}

/// The answer of the server to `cairn COMMAND` as the API type `T`; an answer that does not fit
/// is an error naming the command and the cause.
pub fn typed_for<T: serde::de::DeserializeOwned>(command: &str, answer: Value) -> anyhow::Result<T> {
    serde_json::from_value(answer)
        .with_context(|| format!("cairn {command}: the server's answer is not what this version of cairn expects"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_and_lose_trailing_slashes() {
        assert_eq!(normalize_url("host:8520/").unwrap(), "https://host:8520");
        assert_eq!(
            normalize_url("https://127.0.0.1:8520").unwrap(),
            "https://127.0.0.1:8520"
        );
        assert!(normalize_url("").is_err());
        assert!(normalize_url("ftp://x").is_err());
    }

    #[test]
    fn actions_are_named() {
        assert_eq!(describe_action(&Method::POST, "/api/v1/jobs/3/run"), "run jobs");
        assert_eq!(describe_action(&Method::PUT, "/api/v1/jobs/3"), "change jobs");
        assert_eq!(describe_action(&Method::GET, "/api/v1/users"), "list users");
        assert_eq!(describe_action(&Method::POST, "/api/v1/restores"), "restore");
    }
}
