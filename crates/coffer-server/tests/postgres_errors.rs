//! A PostgreSQL that refuses the first connection is reported by what to
//! check: no such database, no such role, nothing listening.

#![allow(clippy::unwrap_used)]

use coffer_server::store::Store;
use coffer_server::testing::Postgres;

async fn refusal(url: &str) -> String {
    match Store::open(url).await {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_refused_first_connection_says_what_to_check() {
    let pg = Postgres::start();
    let url = pg.database("coffer_errors").await;
    Store::open(&url).await.unwrap();
    let base = url.trim_end_matches("/coffer_errors");

    let missing = refusal(&format!("{base}/no_such_db")).await;
    assert!(
        missing.contains("has no database \"no_such_db\"")
            && missing.contains("createdb --owner postgres no_such_db"),
        "{missing}"
    );

    let port = base.rsplit(':').next().unwrap();
    let role = refusal(&format!("postgres://nobody@127.0.0.1:{port}/coffer_errors")).await;
    assert!(role.contains("role \"nobody\""), "{role}");
    assert!(role.contains("pg_hba.conf"), "{role}");

    // No TLS to PostgreSQL in this version: asking for it is refused, not
    // quietly served in the clear (docs/server.md).
    let tls = refusal(&format!("{url}?sslmode=require")).await;
    assert!(tls.contains("connects without TLS"), "{tls}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = closed.local_addr().unwrap().port();
    drop(closed);
    let nothing = refusal(&format!("postgres://postgres@127.0.0.1:{free}/coffer")).await;
    assert!(
        nothing.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{free}")),
        "{nothing}"
    );
}
