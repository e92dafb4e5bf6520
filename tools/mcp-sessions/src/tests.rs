//! The command line as typed, and the revocation reports.

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let default = input::default_prefix().unwrap();
    parse_args(
        &default,
        std::iter::once("mcp-sessions").chain(args.iter().copied()),
    )
}

fn target(args: &[&str]) -> Result<Target, String> {
    let cli = parse(args).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Revoke(revoke) => revoke.target().map_err(|e| e.0),
        other => Err(format!("not a revoke: {other:?}")),
    }
}

#[test]
fn global_flags_go_before_or_after_the_command() {
    for args in [
        &[
            "--endpoints",
            "10.0.0.1:2379",
            "--prefix",
            "p/",
            "--timeout",
            "2s",
            "--json",
            "list",
        ][..],
        &[
            "list",
            "--endpoints",
            "10.0.0.1:2379",
            "--prefix",
            "p/",
            "--timeout",
            "2s",
            "--json",
        ],
    ] {
        let cli = parse(args).unwrap();
        assert_eq!(cli.endpoints, "10.0.0.1:2379");
        assert_eq!(cli.prefix.as_deref(), Some("p/"));
        assert_eq!(cli.timeout, "2s");
        assert!(cli.json);
        assert!(matches!(cli.command, Command::List));
    }
    let defaults = parse(&["list"]).unwrap();
    assert_eq!(defaults.prefix.as_deref(), Some("mcp-sessions/"));
    assert_eq!(defaults.timeout, "5s");
    let count = parse(&["count", "--by-identity"]).unwrap();
    assert!(matches!(
        count.command,
        Command::Count { by_identity: true }
    ));
}

#[test]
fn revoke_takes_a_handle_or_one_caller() {
    let alice = Identity::Header("alice".into());
    assert_eq!(
        target(&["revoke", "--handle", "0123456789ABCDEF"]),
        Ok(Target::Handle("0123456789abcdef".into()))
    );
    assert_eq!(
        target(&["revoke", "--identity", "--header", "alice"]),
        Ok(Target::Identity(alice.clone()))
    );
    assert_eq!(
        target(&["revoke", "--header", "alice"]),
        Ok(Target::Identity(alice))
    );
    assert_eq!(
        target(&[
            "revoke",
            "--identity",
            "--claim",
            "https://idp",
            "--claim",
            "alice"
        ]),
        Ok(Target::Identity(Identity::Claims(vec![
            "https://idp".into(),
            "alice".into()
        ])))
    );
    assert_eq!(
        target(&["revoke", "--peer", "spiffe://x/alice"]),
        Ok(Target::Identity(Identity::Peer("spiffe://x/alice".into())))
    );
    let digest = "9c1185a5c5e9fc54612808977ee8f548";
    assert_eq!(
        target(&["revoke", "--identity", digest]),
        Ok(Target::Identity(Identity::Digest(digest.into())))
    );
}

#[test]
fn revoke_refuses_what_names_no_sessions_or_two_kinds() {
    for (args, says) in [
        (&["revoke"][..], "say which sessions"),
        (&["revoke", "--identity"], "give the identity digest"),
        (
            &["revoke", "--identity", "abc", "--header", "x"],
            "names the caller already",
        ),
        (&["revoke", "--handle", "xyz"], "not a session handle"),
        (
            &["revoke", "--handle", "0123456789abcdef", "--header", "x"],
            "cannot be used with",
        ),
        (
            &["revoke", "--header", "x", "--peer", "y"],
            "cannot be used with",
        ),
        (
            &["revoke", "--claim", "x", "--peer", "y"],
            "cannot be used with",
        ),
        (&["revoke", "--header"], "a value is required"),
        (&["revoke", "--handel", "x"], "unexpected argument"),
    ] {
        let error = target(args).unwrap_err();
        assert!(error.contains(says), "{args:?}: {error}");
    }
}

#[test]
fn bad_values_are_caught_before_etcd_is_asked() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Port 1: were etcd asked, the error would be a connection error, not these.
    for (args, says) in [
        (
            &["--endpoints", "127.0.0.1", "list"][..],
            "--endpoints: \"127.0.0.1\" has no port",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "--timeout", "soon", "list"],
            "--timeout: \"soon\"",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "--prefix", "", "count"],
            "--prefix: must not be empty",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "revoke", "--header", ""],
            "--header: an empty value",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "revoke", "--identity", "1234"],
            "is not an identity digest",
        ),
    ] {
        let cli = parse(args).unwrap();
        match runtime.block_on(run(&cli)) {
            Err(Failure::Bad(BadInput(e))) => assert!(e.contains(says), "{args:?}: {e}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn an_unreachable_etcd_is_an_etcd_error_naming_the_endpoint() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cli = parse(&["--endpoints", "127.0.0.1:1", "--timeout", "500ms", "count"]).unwrap();
    match runtime.block_on(run(&cli)) {
        Err(Failure::Etcd(EtcdError(e))) => {
            assert!(
                e.starts_with("cannot reach etcd (count): 127.0.0.1:1: "),
                "{e}"
            );
            assert!(e.to_lowercase().contains("connection refused"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_complete_revocation_lists_what_it_deleted() {
    let done = IdentityRevoke {
        revoked: vec!["aaaaaaaaaaaaaaaa".into(), "bbbbbbbbbbbbbbbb".into()],
        ended_meanwhile: vec!["cccccccccccccccc".into()],
        transactions: 1,
        ..Default::default()
    };
    assert!(done.complete());
    assert_eq!(
        identity_text("dd", &done),
        "revoked 2 session(s) of identity dd (in one transaction):\n  aaaaaaaaaaaaaaaa\n  bbbbbbbbbbbbbbbb\n\
         1 session(s) ended before their revocation (gone):\n  cccccccccccccccc\n"
    );
    let json = identity_json("dd", &done);
    assert_eq!(json["complete"], true);
    assert_eq!(json["revoked"][1], "bbbbbbbbbbbbbbbb");
}

#[test]
fn a_partial_revocation_says_what_was_and_was_not_deleted() {
    let partial = IdentityRevoke {
        revoked: vec!["aaaaaaaaaaaaaaaa".into()],
        gone: vec!["bbbbbbbbbbbbbbbb".into()],
        not_revoked: vec!["cccccccccccccccc".into()],
        transactions: 2,
        error: Some(EtcdError("etcd did not answer".into())),
        ..Default::default()
    };
    assert!(!partial.complete());
    let text = identity_text("dd", &partial);
    assert!(text.starts_with("INCOMPLETE: revoked 1 session(s) of identity dd (in 2 transactions of at most 64 sessions), not all:\n  aaaaaaaaaaaaaaaa\n"), "{text}");
    assert!(text.contains("1 session(s) gone after a transaction whose answer was lost (most likely revoked by it):\n  bbbbbbbbbbbbbbbb\n"), "{text}");
    assert!(
        text.contains("1 session(s) NOT revoked (still in etcd):\n  cccccccccccccccc\n"),
        "{text}"
    );
    let json = identity_json("dd", &partial);
    assert_eq!(json["complete"], false);
    assert_eq!(json["not_revoked"][0], "cccccccccccccccc");
    assert_eq!(json["error"], "etcd did not answer");
}

#[test]
fn sessions_found_gone_after_a_lost_answer_complete_the_revocation() {
    let gone = IdentityRevoke {
        revoked: vec!["aaaaaaaaaaaaaaaa".into()],
        gone: vec!["bbbbbbbbbbbbbbbb".into()],
        transactions: 2,
        error: Some(EtcdError(
            "etcd did not answer the transaction in time".into(),
        )),
        ..Default::default()
    };
    assert!(gone.complete());
    let text = identity_text("dd", &gone);
    assert!(
        text.starts_with("revoked 1 session(s) of identity dd"),
        "{text}"
    );
    assert!(
        text.contains("gone after a transaction whose answer was lost"),
        "{text}"
    );
}
