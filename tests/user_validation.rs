//! Issue 18: user data that could not travel safely in identity headers
//! (a role with a comma, whitespace or a control character; an email or
//! claim with a control character) is refused where users come in. The
//! users file at start and `users add` are covered in tests/cli.rs, a
//! PostgreSQL row in tests/postgres.rs.

mod support;

use support::{user, users_toml, TestGateway};

/// A reload that meets such a file keeps the users it had.
#[tokio::test]
async fn a_users_file_with_a_comma_in_a_role_is_not_reloaded() {
    let gw = TestGateway::start(
        "",
        &[
            user("alice", "alice-pw", &["dev"]),
            user("bob", "bob-pw", &["dev"]),
        ],
    )
    .await;
    std::fs::write(
        gw.path("users.toml"),
        users_toml(&[
            user("alice", "alice-pw", &["dev"]),
            user("eve", "eve-pw", &["dev,admin"]),
        ]),
    )
    .unwrap();
    gw.gateway.load().users.reload();

    assert_eq!(gw.password_grant("bob", "bob-pw").await.status(), 200);
    assert_eq!(gw.password_grant("eve", "eve-pw").await.status(), 401);

    // The same file without the bad role is taken: the reload itself works.
    std::fs::write(
        gw.path("users.toml"),
        users_toml(&[
            user("alice", "alice-pw", &["dev"]),
            user("eve", "eve-pw", &["dev", "admin"]),
        ]),
    )
    .unwrap();
    gw.gateway.load().users.reload();
    assert_eq!(gw.password_grant("bob", "bob-pw").await.status(), 401);
    assert_eq!(gw.password_grant("eve", "eve-pw").await.status(), 200);
}
