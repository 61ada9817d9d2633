//! Faults an operator meets: secrets that must never reach a log, a store that
//! refuses or hangs, and what `/readyz` says meanwhile.

mod common;

use std::process::Stdio;

const SHORT_SECRET: &str = "shortsecretXYZ";

/// Runs the real binary with `args` and `env`; it must refuse to start. Returns its
/// stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_maicivy-analytics"));
    cmd.args(["--listen", "127.0.0.1:0", "--database-url", "sqlite::memory:"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(common::WAIT, cmd.output())
        .await
        .expect("the server refuses to start in time, it does not serve")
        .expect("the binary runs");
    assert!(!out.status.success(), "a short secret must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_refused_jwt_secret_is_never_printed() {
    for (args, env) in [
        (vec!["--jwt-secret", SHORT_SECRET], vec![]),
        (vec![], vec![("MAICIVY_JWT_SECRET", SHORT_SECRET)]),
    ] {
        let stderr = refused_start(&args, &env).await;
        assert!(
            stderr.contains("at least 32 bytes"),
            "the refusal says why: {stderr}"
        );
        assert!(
            !stderr.contains(SHORT_SECRET) && !stderr.contains("shortsecret"),
            "the secret leaked into stderr: {stderr}"
        );
    }
}
