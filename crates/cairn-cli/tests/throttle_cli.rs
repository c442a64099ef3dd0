//! `cairn throttle` against a real `cairn server` process (real TLS, SQLite and PostgreSQL):
//! adding, listing and removing network throttling rules, refusals naming what is wrong, and the
//! administrator-only changes.

mod server_common;

use serde_json::Value;
use server_common::*;

fn rules(srv: &Server) -> Value {
    ok_json(srv.cairn(["throttle", "list", "--json"]))
}

fn add_list_remove(backend: Backend) {
    let srv = Server::start(backend, "throttle_cli");
    srv.login_admin();

    let (out, err) = run_code(srv.cairn(["throttle", "list"]), 0);
    assert_eq!(out, "", "no table without rules");
    assert!(err.contains("no throttling rules"), "{err}");

    let (out, _) = run_code(
        srv.cairn([
            "throttle",
            "add",
            "--from",
            "10.0.1.0/24",
            "--to",
            "10.9.0.0/16",
            "--limit",
            "50MB/s",
            "--window",
            "mon-fri 08:00-18:00",
        ]),
        0,
    );
    assert_eq!(
        out.trim(),
        "added throttling rule 1 (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00)"
    );
    let second = ok_json(srv.cairn([
        "throttle",
        "add",
        "--from",
        "fd00::/64",
        "--to",
        "192.0.2.7",
        "--limit",
        "8MiB",
        "--json",
    ]));
    assert_eq!(second["to"], "192.0.2.7/32", "{second}");
    assert_eq!(second["limit_bytes"], 8 << 20);
    assert_eq!(second["window"], Value::Null);

    let all = rules(&srv);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all[0]["limit_bytes"], 50_000_000);
    assert_eq!(all[0]["window"], "mon-fri 08:00-18:00");

    let table = ok(srv.cairn(["throttle", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["ID", "FROM", "TO", "LIMIT", "WINDOW", "CREATED"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(
        lines[1].contains("10.0.1.0/24")
            && lines[1].contains("10.9.0.0/16")
            && lines[1].contains("50 MB/s")
            && lines[1].contains("mon-fri 08:00-18:00"),
        "{table}"
    );
    assert!(
        lines[2].contains("fd00::/64") && lines[2].contains("8 MiB/s") && lines[2].contains("always"),
        "{table}"
    );
    assert!(
        srv.stderr()
            .contains("added network throttling rule 1 (10.0.1.0/24 ↔ 10.9.0.0/16"),
        "the server logs the change: {}",
        srv.stderr()
    );

    let id = second["id"].as_i64().unwrap().to_string();
    let (out, _) = run_code(srv.cairn(["throttle", "remove", &id]), 0);
    assert_eq!(out.trim(), format!("removed throttling rule {id}"));
    assert_eq!(rules(&srv).as_array().unwrap().len(), 1);
    let (_, err) = run_code(srv.cairn(["throttle", "remove", &id]), 1);
    assert!(err.contains(&format!("throttling rule {id} not found")), "{err}");
}
both_backends!(add_list_remove);

fn refusals_name_the_problem(backend: Backend) {
    let srv = Server::start(backend, "throttle_cli_bad");
    srv.login_admin();
    let add = |from: &str, to: &str, limit: &str, window: Option<&str>| {
        let mut args = vec!["throttle", "add", "--from", from, "--to", to, "--limit", limit];
        if let Some(w) = window {
            args.extend(["--window", w]);
        }
        srv.cairn(args)
    };
    // The server refuses bad ranges and windows, naming the field (exit code 1).
    let (_, err) = run_code(add("10.0.1.0/33", "10.9.0.0/16", "1M", None), 1);
    assert!(err.contains("from \"10.0.1.0/33\": not an IP address range"), "{err}");
    let (_, err) = run_code(add("10.0.1.0/24", "backup-lan", "1M", None), 1);
    assert!(err.contains("to \"backup-lan\""), "{err}");
    let (_, err) = run_code(add("10.0.1.0/24", "10.9.0.0/16", "1M", Some("weekdays 8-18")), 1);
    assert!(err.contains("window \"weekdays 8-18\""), "{err}");
    // Rates are checked before anything is sent (usage errors, exit code 2).
    let (_, err) = run_code(add("10.0.1.0/24", "10.9.0.0/16", "fast", None), 2);
    assert!(err.contains("not a rate"), "{err}");
    let (_, err) = run_code(add("10.0.1.0/24", "10.9.0.0/16", "unlimited", None), 2);
    assert!(err.contains("--limit must be above 0"), "{err}");
    assert_eq!(rules(&srv), serde_json::json!([]), "nothing was stored");

    // A viewer lists, but cannot add or remove (refused permissions exit with 2).
    let out = with_stdin(
        srv.cairn(["user", "add", "vera", "--role", "viewer", "--password-stdin"]),
        "vera-password-1\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let viewer = srv.tmp.path().join("viewer-login");
    let out = srv.login_as(&viewer, "vera", "vera-password-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(srv.cairn([
        "throttle",
        "add",
        "--from",
        "10.0.0.0/8",
        "--to",
        "10.0.0.0/8",
        "--limit",
        "1G",
    ]));
    let listed = ok_json(srv.cairn_as(&viewer, ["throttle", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, err) = run_code(
        srv.cairn_as(
            &viewer,
            [
                "throttle",
                "add",
                "--from",
                "10.0.0.0/8",
                "--to",
                "10.0.0.0/8",
                "--limit",
                "1M",
            ],
        ),
        2,
    );
    assert!(err.contains("administrator role"), "{err}");
    let id = listed[0]["id"].as_i64().unwrap().to_string();
    run_code(srv.cairn_as(&viewer, ["throttle", "remove", &id]), 2);
    assert_eq!(rules(&srv).as_array().unwrap().len(), 1, "still there");
}
both_backends!(refusals_name_the_problem);
