//! The SQLite store against a real database file in a temporary directory.
use super::*;
use dormouse_proxy::claims::Role;

async fn store() -> anyhow::Result<(tempfile::TempDir, SqliteStore)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("control.db")).await?;
    Ok((dir, store))
}

fn tenant(name: &str) -> Tenant {
    Tenant { id: format!("t-{name}"), name: name.into(), created_at: 1 }
}

fn database(tenant: &Tenant, name: &str) -> Database {
    Database {
        id: InstanceId::generate(),
        tenant_id: tenant.id.clone(),
        name: name.into(),
        engine: EngineKind::Redis,
        plan: "micro".into(),
        status: DatabaseStatus::Creating,
        port: 0,
        password: Secret::generate(),
        created_at: 2,
        idle_timeout_seconds: 300,
        last_wake_ms: None,
        start_failure: None,
        allowed_cidrs: AllowList::default(),
        expires_at: None,
    }
}

#[tokio::test]
async fn tenants_and_databases_round_trip_with_unique_names() -> anyhow::Result<()> {
    let (_dir, s) = store().await?;
    let t = tenant("acme");
    s.insert_tenant(&t).await?;
    assert!(matches!(
        s.insert_tenant(&Tenant { id: "t-other".into(), ..t.clone() }).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.tenant(&t.id).await?, Some(t.clone()));

    let d = database(&t, "cache");
    s.insert_database(&d).await?;
    assert!(matches!(s.insert_database(&database(&t, "cache")).await, Err(StoreError::Conflict)));
    s.update_database_status(&d.id, DatabaseStatus::Running, Some(7000)).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    assert_eq!((got.status, got.port), (DatabaseStatus::Running, 7000));
    assert_eq!(got.password, d.password);
    s.set_idle_timeout(&d.id, 0).await?;
    s.set_last_wake(&d.id, 42).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    assert_eq!((got.idle_timeout_seconds, got.last_wake_ms), (0, Some(42)));
    assert_eq!(got.start_failure, None);
    s.record_start(&d.id, Some(("disk full", 10))).await?;
    s.record_start(&d.id, Some(("still full", 20))).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    let failure = StartFailure { reason: "still full".into(), at: 20, attempts: 2 };
    assert_eq!(got.start_failure, Some(failure));
    s.record_start(&d.id, None).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    assert_eq!(got.start_failure, None, "a start that succeeded clears it");
    assert_eq!(got.allowed_cidrs, AllowList::default(), "any address unless set");
    let cidrs = AllowList::parse(&["10.0.0.0/8", "2001:db8::/32"])?;
    s.set_allowed_cidrs(&d.id, &cidrs).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    assert_eq!(got.allowed_cidrs, cidrs);
    s.set_allowed_cidrs(&d.id, &AllowList::default()).await?;
    let got = s.database(&t.id, "cache").await?.expect("stored");
    assert_eq!(got.allowed_cidrs, AllowList::default(), "cleared");
    assert_eq!(s.list_databases(&t.id).await?.len(), 1);
    s.delete_database(&d.id).await?;
    assert!(s.database(&t.id, "cache").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn revoked_tokens_are_listed_until_they_expire() -> anyhow::Result<()> {
    let (_dir, s) = store().await?;
    let t = tenant("acme");
    s.insert_tenant(&t).await?;
    for (id, db, exp) in [("a", Some("cache"), 100), ("b", Some("cache"), 10), ("c", None, 100)] {
        s.insert_token(&TokenRecord {
            id: id.into(),
            tenant_id: Some(t.id.clone()),
            database: db.map(Into::into),
            role: Role::Readwrite,
            expires_at: exp,
            revoked_at: None,
            created_at: 1,
        })
        .await?;
    }
    assert!(s.revoke_token("c", 5).await?);
    assert!(!s.revoke_token("missing", 5).await?);
    let mut scoped = s.revoke_database_tokens(&t.id, "cache", 5).await?;
    scoped.sort();
    assert_eq!(scoped, ["a", "b"]);
    let mut revoked = s.revoked_tokens(50).await?;
    revoked.sort();
    assert_eq!(revoked, ["a", "c"]);
    Ok(())
}
