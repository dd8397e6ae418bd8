//! The store's test suite, run once on SQLite and once on a real PostgreSQL (a private cluster
//! the tests start: see `testing.rs`). Each `both!` test is two tests, `NAME::sqlite` and
//! `NAME::postgres`, with the same body: the backends must not differ in anything a caller
//! can see.

use std::collections::BTreeMap;
use std::sync::Arc;

use pitcrew_scheduler::{CampaignRun, CampaignSpec, HostView, ManualPhase, ManualState, Role};

use super::*;

/// Runs the body on a fresh SQLite store and on a fresh PostgreSQL database. The body gets
/// where the store is (to open it again) and the store.
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let at = StoreLocation::Sqlite(dir.path().join("s.db"));
                let store = Store::open_at(&at).unwrap();
                ($body)(at, store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(cluster) = testing::cluster() else {
                    return;
                };
                let at = StoreLocation::Postgres(cluster.new_database());
                let store = Store::open_at(&at).unwrap();
                ($body)(at, store).await;
            }
        }
    };
}

fn token(id: &str, uses: u32, expires: i64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        hash: format!("hash-{id}"),
        role: "worker".into(),
        labels: BTreeMap::from([("cluster".into(), "a".into())]),
        uses_left: uses,
        uses_total: uses,
        expires_at_ms: expires,
        revoked: false,
        created_at_ms: 1,
        created_by: "admin".into(),
        replace_host: String::new(),
    }
}

fn host(id: &str, name: &str, role: &str, cluster: &str) -> HostRecord {
    HostRecord {
        host_id: id.into(),
        hostname: name.into(),
        role: role.into(),
        labels: BTreeMap::from([("cluster".into(), cluster.into())]),
        cert_serial: "01".into(),
        pending_serial: String::new(),
        enrolled_at_ms: 1,
        last_seen_ms: 0,
        facts: Vec::new(),
        removed_at_ms: 0,
    }
}

async fn put_hosts(store: &Store, hosts: Vec<HostRecord>) {
    store
        .write(move |tx| {
            Box::pin(async move {
                for h in &hosts {
                    tx.upsert_host(h).await?;
                }
                Ok(())
            })
        })
        .await
        .unwrap();
}

fn enrollment(token: &str, id: &str, name: &str, serial: &str) -> HostEnrollment {
    HostEnrollment {
        token_hash: format!("hash-{token}"),
        host_id: id.into(),
        hostname: name.into(),
        serial: serial.into(),
        now_ms: 10,
    }
}

fn cert(serial: &str, name: &str, role: &str, not_after_ms: i64) -> OperatorRecord {
    OperatorRecord {
        serial: serial.into(),
        name: name.into(),
        role: role.into(),
        not_after_ms,
        revoked: false,
        created_at_ms: 1,
        created_by: "init".into(),
    }
}

fn caller(name: &str, serial: &str) -> OperatorCaller {
    OperatorCaller {
        name: name.into(),
        serial: serial.into(),
        now_ms: 100,
    }
}

fn audit(message: &str) -> EventRecord {
    EventRecord {
        kind: "audit".into(),
        message: message.into(),
        ..Default::default()
    }
}

fn run(id: &str, hosts: &[&str]) -> CampaignRun {
    let spec = CampaignSpec::parse(
        "name = \"patch\"\n[[steps]]\nname = \"noop\"\naction = \"exec\"\nargv = [\"/bin/true\"]\n",
        "patch.toml",
    )
    .unwrap();
    let views: Vec<HostView> = hosts
        .iter()
        .map(|h| HostView {
            id: (*h).into(),
            hostname: format!("name-{h}"),
            role: Role::Worker,
            labels: Default::default(),
            connected: true,
            healthy: true,
            boot_id: String::new(),
            policy: None,
            facts: None,
        })
        .collect();
    CampaignRun::new(id, &spec, &views, 5).unwrap()
}

// ---- the writer: durability, group commit, reopening ----

both!(
    a_write_is_visible_to_readers_once_it_returns,
    |_at, store: Store| async move {
        store.create_token(token("a", 1, 1000)).await.unwrap();
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed, vec![token("a", 1, 1000)]);
    }
);

both!(
    a_failing_job_loses_only_its_own_changes,
    |_at, store: Store| async move {
        let store = Arc::new(store);
        // Queued together, so they share one transaction.
        let good = store.create_token(token("good", 1, 1000));
        let bad = store.write(|tx| {
            Box::pin(async move {
                tx.insert_token(&token("bad", 1, 1000)).await?;
                Err::<(), _>(StoreError::Corrupt("refused on purpose".into()))
            })
        });
        // A statement the database refuses (a duplicate key) fails only its own job too.
        let duplicate = store.create_token(token("good", 1, 1000));
        let also_good = store.create_token(token("also", 1, 1000));
        let (good, bad, duplicate, also_good) = tokio::join!(good, bad, duplicate, also_good);
        good.unwrap();
        also_good.unwrap();
        assert!(matches!(bad, Err(StoreError::Corrupt(_))), "{bad:?}");
        assert!(
            matches!(duplicate, Err(StoreError::Sql(_))),
            "{duplicate:?}"
        );
        let ids: Vec<String> = store
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["also", "good"]);
    }
);

both!(
    the_store_survives_reopening,
    |at, store: Store| async move {
        store
            .register_operators(
                vec![cert("01", "alice", "admin", 1000)],
                Some(audit("hello")),
            )
            .await
            .unwrap();
        drop(store);
        let again = Store::open_at(&at).unwrap();
        let listed = again.list_events(EventFilter::default()).await.unwrap();
        assert_eq!(listed[0].message, "hello");
        assert_eq!(again.list_operators().await.unwrap().len(), 1);
    }
);

both!(
    blocking_callers_use_the_same_operations,
    |_at, store: Store| async move {
        // `init`, tests and tools without a runtime call the async operations through a local
        // executor; on a plain thread, as they would.
        let store = Arc::new(store);
        let on_thread = store.clone();
        std::thread::spawn(move || {
            futures::executor::block_on(on_thread.create_token(token("t", 1, 1000))).unwrap();
            let listed = futures::executor::block_on(on_thread.list_tokens()).unwrap();
            assert_eq!(listed.len(), 1);
        })
        .join()
        .unwrap();
    }
);

// ---- tokens and enrollment ----

both!(
    tokens_are_counted_expire_and_can_be_revoked,
    |_at, store: Store| async move {
        store.create_token(token("a", 2, 1000)).await.unwrap();
        store.create_token(token("b", 1, 1000)).await.unwrap();
        let redeem = |hash: &str, now: i64| store.redeem_token(hash.to_owned(), now);
        assert_eq!(redeem("hash-a", 10).await.unwrap().unwrap().uses_left, 1);
        assert_eq!(
            redeem("hash-a", 10).await.unwrap().unwrap().labels["cluster"],
            "a"
        );
        assert_eq!(
            redeem("hash-a", 10).await.unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            redeem("hash-b", 1000).await.unwrap(),
            Err(TokenRefusal::Expired)
        );
        let revoked = store.revoke_token("b".into()).await.unwrap().unwrap();
        assert!(revoked.revoked);
        assert_eq!(
            redeem("hash-b", 10).await.unwrap(),
            Err(TokenRefusal::Revoked)
        );
        assert_eq!(
            redeem("nope", 10).await.unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(store.revoke_token("nope".into()).await.unwrap(), None);
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].uses_left, 0);
    }
);

both!(
    an_enrollment_checks_the_token_and_the_host_in_one_transaction,
    |_at, store: Store| async move {
        store.create_token(token("t", 3, 1000)).await.unwrap();
        let done = store
            .enroll(enrollment("t", "id1", "web-1", "s1"))
            .await
            .unwrap()
            .unwrap();
        assert!(!done.reenrolled);
        assert_eq!(done.record.role, "worker");
        assert_eq!(done.record.labels["cluster"], "a");
        assert_eq!(done.token.id, "t");
        // The same host id with an ordinary token: refused, and no use is spent.
        let refused = store
            .enroll(enrollment("t", "id1", "web-1", "s2"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, EnrollRefusal::Taken { .. }), "{refused}");
        // Another host under a name already enrolled.
        let refused = store
            .enroll(enrollment("t", "id2", "web-1", "s3"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, EnrollRefusal::NameTaken { .. }),
            "{refused}"
        );
        assert_eq!(store.list_tokens().await.unwrap()[0].uses_left, 2);
        // An unknown token.
        let refused = store
            .enroll(enrollment("x", "id3", "web-3", "s4"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused, EnrollRefusal::Token(TokenRefusal::Unknown));
        // A token made to re-enroll id1: only id1, keeping its name, role and labels.
        store
            .create_token(TokenRecord {
                replace_host: "id1".into(),
                role: "manager".into(),
                ..token("r", 2, 1000)
            })
            .await
            .unwrap();
        let refused = store
            .enroll(enrollment("r", "id9", "web-9", "s5"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, EnrollRefusal::WrongHost { .. }),
            "{refused}"
        );
        let again = store
            .enroll(enrollment("r", "id1", "other-name", "s6"))
            .await
            .unwrap()
            .unwrap();
        assert!(again.reenrolled);
        assert_eq!(again.record.hostname, "web-1");
        assert_eq!(again.record.role, "worker");
        let stored = store.host("id1".into()).await.unwrap().unwrap();
        assert_eq!(stored.cert_serial, "s6");
    }
);

both!(
    a_single_use_token_enrolls_one_of_many_concurrent_hosts,
    |_at, store: Store| async move {
        let store = Arc::new(store);
        store.create_token(token("once", 1, 1000)).await.unwrap();
        let attempts: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .enroll(enrollment("once", &format!("id{i}"), &format!("h{i}"), "s"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut enrolled = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => enrolled += 1,
                Err(refusal) => assert_eq!(refusal, EnrollRefusal::Token(TokenRefusal::UsedUp)),
            }
        }
        assert_eq!(enrolled, 1);
        assert_eq!(
            store.list_hosts(HostFilter::default()).await.unwrap().len(),
            1
        );
    }
);

// ---- hosts ----

both!(
    hosts_are_listed_in_pages_with_filters,
    |_at, store: Store| async move {
        put_hosts(
            &store,
            (0..25)
                .map(|i| {
                    let role = if i % 5 == 0 { "manager" } else { "worker" };
                    let cluster = if i % 2 == 0 { "a" } else { "b" };
                    host(&format!("id{i:02}"), &format!("h{i:02}"), role, cluster)
                })
                // Byte order, not a locale's: upper case before lower case, '-' before digits.
                .chain([
                    host("x1", "Zed", "worker", "a"),
                    host("x2", "h-1", "worker", "a"),
                ])
                .collect(),
        )
        .await;
        let mut seen = Vec::new();
        let mut filter = HostFilter {
            limit: 10,
            ..Default::default()
        };
        loop {
            let page = store.list_hosts(filter.clone()).await.unwrap();
            assert!(page.len() <= 10);
            let Some(last) = page.last() else { break };
            filter.after = Some((last.hostname.clone(), last.host_id.clone()));
            seen.extend(page.into_iter().map(|h| h.hostname));
        }
        assert_eq!(seen.len(), 27);
        assert!(
            seen.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()),
            "{seen:?}"
        );
        assert_eq!(seen[0], "Zed");
        assert_eq!(seen[1], "h-1");

        let managers = store
            .list_hosts(HostFilter {
                role: Some("manager".into()),
                label: Some(("cluster".into(), "a".into())),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<_> = managers.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(names, vec!["h00", "h10", "h20"]);
        let none = store
            .list_hosts(HostFilter {
                label: Some(("rack".into(), "a".into())),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
);

both!(
    facts_never_rename_a_host_and_last_seen_only_moves_forward,
    |_at, store: Store| async move {
        put_hosts(&store, vec![host("id1", "web-1", "worker", "a")]).await;
        store
            .write(|tx| {
                Box::pin(async move {
                    tx.set_facts("id1", &[1, 2], 50).await?;
                    tx.set_last_seen(&[("id1".into(), 40)]).await?;
                    tx.set_last_seen(&[("id1".into(), 70), ("unknown".into(), 5)])
                        .await
                })
            })
            .await
            .unwrap();
        store.set_last_seen(vec![("id1".into(), 60)]).await.unwrap();
        let h = store.host("id1".into()).await.unwrap().unwrap();
        assert_eq!(h.hostname, "web-1");
        assert_eq!(h.facts, vec![1, 2]);
        assert_eq!(h.last_seen_ms, 70);
        // Re-enrollment keeps facts and last-seen.
        put_hosts(
            &store,
            vec![HostRecord {
                cert_serial: "02".into(),
                ..host("id1", "web-1", "worker", "a")
            }],
        )
        .await;
        let h = store.host("id1".into()).await.unwrap().unwrap();
        assert_eq!(
            (h.facts, h.last_seen_ms, h.cert_serial.as_str()),
            (vec![1, 2], 70, "02")
        );
        let found = store.find_host("web-1".into(), None).await.unwrap();
        assert!(found.by_id.is_none());
        assert_eq!(found.by_name.len(), 1);
    }
);

both!(
    id_prefixes_find_enrolled_hosts_in_id_order,
    |_at, store: Store| async move {
        put_hosts(
            &store,
            vec![
                host("ab12", "web-1", "worker", "a"),
                host("ab34", "web-2", "worker", "a"),
                host("cd56", "web-3", "worker", "a"),
                host("cd78", "web-4", "worker", "a"),
            ],
        )
        .await;
        store
            .commit_turn(TurnWrites {
                host_changes: vec![HostChange::Removed {
                    host_id: "cd78".into(),
                    at_ms: 50,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        let ids = |found: Vec<HostRecord>| -> Vec<String> {
            found.into_iter().map(|h| h.host_id).collect()
        };
        let by = |prefix: &str| store.hosts_by_id_prefix(prefix.into(), 10);
        assert_eq!(ids(by("ab").await.unwrap()), ["ab12", "ab34"]);
        assert_eq!(ids(by("ab3").await.unwrap()), ["ab34"]);
        assert_eq!(
            ids(by("cd").await.unwrap()),
            ["cd56"],
            "a removed host is not found"
        );
        assert_eq!(ids(by("cd56").await.unwrap()), ["cd56"]);
        assert!(by("e").await.unwrap().is_empty());
        assert_eq!(
            ids(store.hosts_by_id_prefix("a".into(), 1).await.unwrap()),
            ["ab12"]
        );
        // The lookup by name falls back on a prefix only when asked and nothing else matched.
        let found = store.find_host("ab1".into(), Some(10)).await.unwrap();
        assert_eq!(ids(found.by_prefix), ["ab12"]);
        let found = store.find_host("ab1".into(), None).await.unwrap();
        assert!(found.by_prefix.is_empty());
        let found = store.find_host("ab12".into(), Some(10)).await.unwrap();
        assert!(found.by_id.is_some() && found.by_prefix.is_empty());
    }
);

both!(
    a_renewed_certificate_is_pending_until_first_used,
    |_at, store: Store| async move {
        put_hosts(&store, vec![host("id1", "web-1", "worker", "a")]).await;
        store
            .set_pending_serial("id1".into(), "02".into())
            .await
            .unwrap();
        let h = store.host("id1".into()).await.unwrap().unwrap();
        assert_eq!(
            (h.cert_serial.as_str(), h.pending_serial.as_str()),
            ("01", "02")
        );
        assert!(
            !store
                .promote_pending_serial("id1".into(), "03".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .promote_pending_serial("id1".into(), String::new())
                .await
                .unwrap()
        );
        assert!(
            store
                .promote_pending_serial("id1".into(), "02".into())
                .await
                .unwrap()
        );
        let h = store.host("id1".into()).await.unwrap().unwrap();
        assert_eq!(
            (h.cert_serial.as_str(), h.pending_serial.as_str()),
            ("02", "")
        );
    }
);

both!(
    a_removed_host_keeps_its_row_lists_apart_and_frees_its_hostname,
    |_at, store: Store| async move {
        put_hosts(
            &store,
            vec![
                host("id1", "mgr-1", "manager", "a"),
                host("id2", "mgr-2", "manager", "a"),
            ],
        )
        .await;
        let writes = TurnWrites {
            host_changes: vec![
                HostChange::Removed {
                    host_id: "id1".into(),
                    at_ms: 50,
                },
                HostChange::Set {
                    host_id: "id2".into(),
                    role: Role::Worker,
                    labels: BTreeMap::from([("cluster".into(), "b".into())]),
                },
            ],
            ..Default::default()
        };
        store.commit_turn(writes).await.unwrap();
        let enrolled = store.list_hosts(HostFilter::default()).await.unwrap();
        assert_eq!(enrolled.len(), 1);
        assert_eq!(
            (
                enrolled[0].role.as_str(),
                enrolled[0].labels["cluster"].as_str()
            ),
            ("worker", "b")
        );
        let removed = store
            .list_hosts(HostFilter {
                removed: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].removed_at_ms, 50);
        assert!(
            removed[0].cert_serial.is_empty(),
            "its certificate is no longer accepted"
        );
        let found = store.find_host("mgr-1".into(), None).await.unwrap();
        assert!(found.by_name.is_empty());
        assert_eq!(found.removed.map(|h| h.host_id), Some("id1".into()));
        // It comes back only with a token made for it, and then is enrolled again.
        store
            .create_token(TokenRecord {
                replace_host: "id1".into(),
                ..token("r", 1, 1000)
            })
            .await
            .unwrap();
        let back = store
            .enroll(enrollment("r", "id1", "mgr-1", "09"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.record.removed_at_ms, back.record.cert_serial.as_str()),
            (0, "09")
        );
    }
);

// ---- operators ----

both!(
    operator_certificates_are_kept_per_name_and_revoked_together,
    |_at, store: Store| async move {
        store
            .register_operators(
                vec![
                    cert("01", "alice", "admin", 1000),
                    cert("02", "alice", "admin", 2000),
                    cert("03", "bob", "viewer", 1000),
                    cert("04", "carol", "admin", 10),
                ],
                None,
            )
            .await
            .unwrap();
        let counts = store
            .read(|tx| {
                Box::pin(async move {
                    Ok((
                        tx.count_active_names("admin", "bob", 100).await?,
                        tx.count_active_names("admin", "alice", 100).await?,
                        tx.active_role("bob", 100).await?,
                        tx.active_role("carol", 100).await?,
                        tx.operator("99").await?,
                    ))
                })
            })
            .await
            .unwrap();
        assert_eq!(counts, (1, 0, Some("viewer".into()), None, None));
        // bob (a viewer) may not be given another role while he has a valid certificate.
        let refused = store
            .add_operator(caller("alice", "01"), cert("05", "bob", "admin", 1000))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, OperatorRefusal::RoleTaken { .. }),
            "{refused}"
        );
        // alice is the last admin with a valid certificate.
        let refused = store
            .revoke_operator(caller("alice", "01"), "alice".into())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, OperatorRefusal::LastAdmin { .. }),
            "{refused}"
        );
        let refused = store
            .revoke_operator(caller("alice", "01"), "nobody".into())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, OperatorRefusal::Unknown { .. }),
            "{refused}"
        );
        store
            .add_operator(caller("alice", "01"), cert("06", "dave", "admin", 1000))
            .await
            .unwrap()
            .unwrap();
        let revoked = store
            .revoke_operator(caller("dave", "06"), "alice".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked.iter().all(|r| r.revoked));
        // A revoked caller can change nothing, not even renew itself.
        let refused = store
            .renew_operator(caller("alice", "02"), cert("07", "alice", "admin", 3000))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, OperatorRefusal::CallerRevoked { .. }),
            "{refused}"
        );
        store
            .renew_operator(caller("bob", "03"), cert("08", "bob", "viewer", 3000))
            .await
            .unwrap()
            .unwrap();
        let all = store.list_operators().await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(),
            ["01", "02", "03", "08", "04", "06"]
        );
    }
);

// ---- events ----

both!(
    old_events_and_those_beyond_the_cap_are_pruned,
    |_at, store: Store| async move {
        let writes = TurnWrites {
            events: (0..10)
                .map(|i| EventRecord {
                    at_ms: i * 100,
                    ..audit(&format!("m{i}"))
                })
                .collect(),
            ..Default::default()
        };
        let logged = store.commit_turn(writes).await.unwrap();
        assert!(logged.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
        // Older than 300 ms: m0, m1, m2 go; then only the newest 5 stay.
        assert_eq!(store.prune_events(300, 5).await.unwrap(), 5);
        let left = store.list_events(EventFilter::default()).await.unwrap();
        let words: Vec<_> = left.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m5", "m6", "m7", "m8", "m9"]);
    }
);

both!(
    events_page_backwards_from_the_newest_and_name_their_host,
    |_at, store: Store| async move {
        put_hosts(&store, vec![host("id1", "web-1", "worker", "a")]).await;
        let writes = TurnWrites {
            events: (0..10)
                .map(|i| EventRecord {
                    campaign_id: if i % 2 == 0 {
                        "c1".into()
                    } else {
                        String::new()
                    },
                    host_id: if i == 9 { "id1".into() } else { String::new() },
                    ..audit(&format!("m{i}"))
                })
                .collect(),
            ..Default::default()
        };
        store.commit_turn(writes).await.unwrap();
        let page = |before: i64| {
            store.list_events(EventFilter {
                before_id: before,
                limit: 4,
                ..Default::default()
            })
        };
        let newest = page(0).await.unwrap();
        let words: Vec<_> = newest.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m6", "m7", "m8", "m9"]);
        assert_eq!(newest[3].hostname, "web-1");
        assert_eq!(newest[2].hostname, "");
        let older = page(newest[0].id).await.unwrap();
        let words: Vec<_> = older.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m2", "m3", "m4", "m5"]);
        let campaign = store
            .list_events(EventFilter {
                campaign_id: Some("c1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(campaign.len(), 5);
        let of_host = store
            .list_events(EventFilter {
                host_id: Some("id1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(of_host.len(), 1);
        let after = store
            .list_events(EventFilter {
                after_id: newest[2].id,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(after.len(), 1);
        // Appended without waiting: the callback gets the event with its id once durable.
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .append_event(audit("later"), move |stored| {
                let _ = tx.send(stored);
            })
            .unwrap();
        let stored = rx.await.unwrap().unwrap();
        assert!(stored.id > newest[3].id);
    }
);

// ---- actions ----

both!(
    an_action_result_is_recorded_once,
    |_at, store: Store| async move {
        let record = ActionRecord {
            action_id: "x".into(),
            host_id: "h".into(),
            campaign_id: String::new(),
            request: vec![1],
            result: None,
            created_at_ms: 1,
        };
        assert_eq!(store.record_action(record.clone()).await.unwrap(), None);
        // The same id again: nothing changes, and the host it is for is named.
        let other = ActionRecord {
            host_id: "other".into(),
            ..record.clone()
        };
        assert_eq!(store.record_action(other).await.unwrap(), Some("h".into()));
        // A turn recording it again keeps the first record.
        store
            .commit_turn(TurnWrites {
                actions: vec![ActionRecord {
                    request: vec![9],
                    ..record.clone()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            store.unfinished_actions("h".into()).await.unwrap(),
            vec![record.clone()]
        );
        let finish = |result: Vec<u8>| {
            store.write(move |tx| Box::pin(async move { tx.finish_action("x", &result).await }))
        };
        assert!(finish(vec![2]).await.unwrap());
        assert!(!finish(vec![3]).await.unwrap());
        assert_eq!(
            store.action("x".into()).await.unwrap().unwrap().result,
            Some(vec![2])
        );
        assert!(
            store
                .unfinished_actions("h".into())
                .await
                .unwrap()
                .is_empty()
        );
        let results = store
            .action_results(vec!["x".into(), "nope".into()])
            .await
            .unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results["x"], vec![2]);
    }
);

// ---- campaigns and manual maintenance ----

both!(
    a_run_is_stored_as_rows_and_read_back_whole,
    |at, store: Store| async move {
        let mut created = run("c1", &["h1", "h2", "h3"]);
        store
            .commit_turn(TurnWrites {
                new_runs: vec![(created.clone(), "name = \"patch\"".into(), "alice".into())],
                ..Default::default()
            })
            .await
            .unwrap();
        // One host's progress and the header change: exactly those rows are written.
        created.hosts[1].attempt = 2;
        created.failures = 1;
        let writes = TurnWrites {
            hosts: vec![CampaignHostRow {
                campaign_id: "c1".into(),
                host_id: "h2".into(),
                progress_json: campaigns::host_progress_json(&created.hosts[1]).unwrap(),
            }],
            headers: vec![("c1".into(), campaigns::header_json(&created).unwrap())],
            manual: vec![(
                "h9".into(),
                Some(ManualState {
                    phase: ManualPhase::Maintenance,
                    since_ms: 1,
                    by: "bob".into(),
                }),
            )],
            ..Default::default()
        };
        store.commit_turn(writes).await.unwrap();
        drop(store);
        let store = Store::open_at(&at).unwrap();
        let fleet = store.load_fleet().await.unwrap();
        assert_eq!(fleet.campaigns.len(), 1);
        assert_eq!(fleet.campaigns[0].run, created);
        assert_eq!(fleet.campaigns[0].created_by, "alice");
        assert_eq!(fleet.campaigns[0].spec_toml, "name = \"patch\"");
        assert_eq!(fleet.manual["h9"].by, "bob");
        store
            .commit_turn(TurnWrites {
                manual: vec![("h9".into(), None)],
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(store.load_fleet().await.unwrap().manual.is_empty());
    }
);

both!(
    a_turn_that_cannot_be_written_is_lost_whole,
    |_at, store: Store| async move {
        // A host row of a run that does not exist: the whole turn fails and writes nothing, so
        // the engine sends nothing it decided.
        let writes = TurnWrites {
            actions: vec![ActionRecord {
                action_id: "a1".into(),
                host_id: "h".into(),
                campaign_id: "c9".into(),
                request: vec![1],
                result: None,
                created_at_ms: 1,
            }],
            hosts: vec![CampaignHostRow {
                campaign_id: "c9".into(),
                host_id: "h".into(),
                progress_json: "{}".into(),
            }],
            ..Default::default()
        };
        let error = store.commit_turn(writes).await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        assert_eq!(store.action("a1".into()).await.unwrap(), None);
    }
);

both!(
    runs_of_thousands_of_hosts_load_in_order,
    |_at, store: Store| async move {
        let ids: Vec<String> = (0..3000).map(|i| format!("h{i:05}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let big = run("big", &refs);
        store
            .commit_turn(TurnWrites {
                new_runs: vec![(big.clone(), String::new(), "x".into())],
                ..Default::default()
            })
            .await
            .unwrap();
        let fleet = store.load_fleet().await.unwrap();
        assert_eq!(fleet.campaigns[0].run, big);
    }
);

// ---- schema versions ----

both!(
    opening_again_migrates_nothing_and_a_newer_schema_is_refused,
    |at, store: Store| async move {
        drop(store);
        // Opening an up-to-date store changes nothing.
        drop(Store::open_at(&at).unwrap());
        match &at {
            StoreLocation::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let version: i64 = conn
                    .pragma_query_value(None, "user_version", |r| r.get(0))
                    .unwrap();
                assert_eq!(version, sqlite_schema_version());
                conn.pragma_update(None, "user_version", 99).unwrap();
            }
            StoreLocation::Postgres(settings) => {
                let cluster = testing::cluster().unwrap();
                let db = database_of(settings);
                let versions = cluster.sql(&db, "SELECT string_agg(version::text, ',' ORDER BY version) FROM pitcrew_schema").unwrap();
                assert_eq!(versions, postgres_schema_versions());
                cluster
                    .sql(&db, "INSERT INTO pitcrew_schema (version) VALUES (99)")
                    .unwrap();
            }
        }
        let error = Store::open_at(&at)
            .err()
            .expect("a newer schema is refused")
            .to_string();
        assert!(
            error.contains("version 99, newer than this coordinator knows"),
            "{error}"
        );
    }
);

fn sqlite_schema_version() -> i64 {
    7
}

fn postgres_schema_versions() -> String {
    "1,2,3,4,5".into()
}

fn database_of(settings: &PostgresSettings) -> String {
    settings
        .describe()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

// ---- PostgreSQL only: logins, concurrent start, lost connections ----

fn pg() -> Option<&'static testing::TestCluster> {
    testing::cluster()
}

#[test]
fn a_postgres_url_with_a_password_is_refused_without_repeating_it() {
    let error =
        PostgresSettings::new("postgres://pitcrew:s3cret-pw@db.example/fleet", None).unwrap_err();
    assert!(error.contains("carries a password"), "{error}");
    assert!(!error.contains("s3cret-pw"), "{error}");
    let error =
        PostgresSettings::new("host=db password=s3cret-pw user=x dbname=y", None).unwrap_err();
    assert!(!error.contains("s3cret-pw"), "{error}");
    let error = PostgresSettings::new("postgres://db.example/fleet", None).unwrap_err();
    assert!(error.contains("names no user"), "{error}");
    let error = PostgresSettings::new("postgres://u@db:notaport/x", None).unwrap_err();
    assert!(error.contains("not valid"), "{error}");
    let settings = PostgresSettings::new(
        "postgres://pitcrew@db.example:5433/fleet",
        Some("pw\n".into()),
    )
    .unwrap();
    assert_eq!(
        settings.describe(),
        "postgres://pitcrew@db.example:5433/fleet"
    );
    assert!(!format!("{settings:?}").contains("pw\""), "{settings:?}");
}

#[test]
fn a_wrong_password_or_an_unreachable_database_is_a_clear_error() {
    let Some(cluster) = pg() else { return };
    let db = cluster.create_database();
    let wrong = PostgresSettings::new(&cluster.url(&db), Some("not-the-password".into())).unwrap();
    let error = Store::open_postgres(&wrong).err().unwrap().to_string();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    let nowhere = tempfile::tempdir().unwrap();
    let url = format!(
        "host={} port=5432 user=pitcrew dbname=x",
        nowhere.path().display()
    );
    let mut settings = PostgresSettings::new(&url, Some("x".into())).unwrap();
    settings.connect_timeout = std::time::Duration::from_secs(2);
    let error = Store::open_postgres(&settings).err().unwrap().to_string();
    assert!(
        error.contains(&nowhere.path().display().to_string()),
        "{error}"
    );
}

#[test]
fn coordinators_opening_one_new_database_together_migrate_it_once() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let settings = settings.clone();
            std::thread::spawn(move || Store::open_postgres(&settings).map(drop))
        })
        .collect();
    for open in opened {
        open.join().unwrap().unwrap();
    }
    let db = database_of(&settings);
    assert_eq!(
        cluster
            .sql(
                &db,
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM pitcrew_schema"
            )
            .unwrap(),
        postgres_schema_versions(),
        "each version applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_is_an_error_and_the_next_write_reconnects() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let db = database_of(&settings);
    let store = Store::open_postgres(&settings).unwrap();
    store.create_token(token("a", 1, 1000)).await.unwrap();
    // Every connection of the store is cut by the server, as a restart or a network cut would.
    let killed = cluster
        .sql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ),
        )
        .unwrap();
    assert_ne!(killed, "0");
    // The next writes either fail cleanly (the batch that met the dead connection) or work on
    // a fresh one; nothing panics, nothing half-written stays, and the store recovers.
    let mut outcomes = Vec::new();
    for i in 0..3 {
        outcomes.push(store.create_token(token(&format!("b{i}"), 1, 1000)).await);
    }
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(
                matches!(error, StoreError::Unavailable(_) | StoreError::Sql(_)),
                "{error}"
            );
        }
    }
    let stored: Vec<String> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            stored.contains(&format!("b{i}")),
            outcome.is_ok(),
            "{stored:?} {outcomes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_never_wait_for_the_leaders_writes_and_a_takeover_does() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let db = database_of(&settings);
    let (a, b) = (
        Store::open_postgres(&settings).unwrap(),
        Store::open_postgres(&settings).unwrap(),
    );
    let long = std::time::Duration::from_secs(60);
    let ha = holder("a");
    let epoch = a
        .take_lease(ha.clone(), String::new(), long)
        .await
        .unwrap()
        .unwrap();
    // A write of the leader in progress, holding the lease row as the fence does.
    let mut config: tokio_postgres::Config = cluster.url(&db).parse().unwrap();
    config.password(cluster.password());
    let (writer, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    writer
        .batch_execute("BEGIN; SELECT epoch FROM leader_lease WHERE id = 1 FOR KEY SHARE")
        .await
        .unwrap();
    let renewed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        a.renew_lease(ha, epoch, long),
    )
    .await
    .expect("a renewal waited for the leader's own write in progress");
    assert!(renewed.unwrap());
    // The lease lapses; a takeover must wait until that write has committed.
    cluster
        .sql(
            &db,
            "UPDATE leader_lease SET expires_at = now() - interval '1 second'",
        )
        .unwrap();
    let takeover =
        tokio::spawn(async move { b.take_lease(holder("b"), String::new(), long).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover did not wait for the old leader's write in progress"
    );
    writer.batch_execute("COMMIT").await.unwrap();
    let taken = takeover.await.unwrap().unwrap();
    assert!(taken.is_some_and(|e| e > epoch), "{taken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_transaction_a_stalled_coordinator_leaves_open() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let (client, connection) = settings
        .connect_config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let shown = client
        .query_one("SHOW idle_in_transaction_session_timeout", &[])
        .await
        .unwrap();
    assert_eq!(shown.get::<_, String>(0), "5s");
    // Left open (as by a coordinator paused mid-commit), the server ends it.
    client.batch_execute("BEGIN").await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), connection)
        .await
        .expect("the server left an idle transaction open");
    assert!(
        ended.unwrap().is_err(),
        "the connection ended with an error"
    );
}

/// A coordinator's holder name, unique per process incarnation.
fn holder(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_lease_is_held_renewed_and_taken_over_by_the_database_clock() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let db = database_of(&settings);
    let (a, b) = (
        Store::open_postgres(&settings).unwrap(),
        Store::open_postgres(&settings).unwrap(),
    );
    let (ha, hb) = (holder("a"), holder("b"));
    let long = std::time::Duration::from_secs(60);
    let never = a.leader().await.unwrap();
    assert!(!never.valid && never.holder.is_empty(), "{never:?}");
    let epoch_a = a
        .take_lease(ha.clone(), "https://a.example:7443".into(), long)
        .await
        .unwrap()
        .expect("free: taken");
    // Standbys learn who leads and where, by the database's clock.
    let seen = b.leader().await.unwrap();
    assert_eq!(
        (
            seen.holder.as_str(),
            seen.address.as_str(),
            seen.epoch,
            seen.valid
        ),
        (ha.as_str(), "https://a.example:7443", epoch_a, true)
    );
    // ...and when it expires, to try to take it then.
    assert!(
        seen.expires_in > long - std::time::Duration::from_secs(10) && seen.expires_in <= long,
        "{seen:?}"
    );
    assert_eq!(
        a.take_lease(ha.clone(), String::new(), long).await.unwrap(),
        Some(epoch_a),
        "kept"
    );
    assert_eq!(
        b.take_lease(hb.clone(), String::new(), long).await.unwrap(),
        None,
        "held by a"
    );
    assert!(a.renew_lease(ha.clone(), epoch_a, long).await.unwrap());
    assert!(!b.renew_lease(hb.clone(), epoch_a, long).await.unwrap());
    // a stalls past its lease (its expiry moved into the past, as the database's clock would).
    cluster
        .sql(
            &db,
            "UPDATE leader_lease SET expires_at = now() - interval '1 second'",
        )
        .unwrap();
    let expired = b.leader().await.unwrap();
    assert!(
        !expired.valid && expired.expires_in.is_zero(),
        "{expired:?}"
    );
    assert!(
        !a.renew_lease(ha.clone(), epoch_a, long).await.unwrap(),
        "expired"
    );
    let epoch_b = b
        .take_lease(hb.clone(), String::new(), long)
        .await
        .unwrap()
        .expect("expired: taken");
    assert!(epoch_b > epoch_a);
    let seen = a.leader().await.unwrap();
    assert_eq!(
        (seen.holder.as_str(), seen.address.as_str(), seen.epoch),
        (hb.as_str(), "", epoch_b)
    );
    assert_eq!(a.take_lease(ha, String::new(), long).await.unwrap(), None);
    let sqlite = tempfile::tempdir().unwrap();
    let local = Store::open(&sqlite.path().join("s.db")).unwrap();
    assert!(matches!(
        local.take_lease(hb, String::new(), long).await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(local.fence(1), Err(StoreError::Unsupported(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_leader_writes_nothing_once_a_newer_leader_holds_the_lease() {
    let Some(cluster) = pg() else { return };
    let settings = cluster.new_database();
    let db = database_of(&settings);
    let (a, b) = (
        Store::open_postgres(&settings).unwrap(),
        Store::open_postgres(&settings).unwrap(),
    );
    let long = std::time::Duration::from_secs(60);
    let epoch_a = a
        .take_lease(holder("a"), String::new(), long)
        .await
        .unwrap()
        .unwrap();
    a.fence(epoch_a).unwrap();
    a.create_token(token("by-a", 1, 1000)).await.unwrap();
    // a is paused past its lease; b takes over and leads.
    cluster
        .sql(
            &db,
            "UPDATE leader_lease SET expires_at = now() - interval '1 second'",
        )
        .unwrap();
    let epoch_b = b
        .take_lease(holder("b"), String::new(), long)
        .await
        .unwrap()
        .unwrap();
    b.fence(epoch_b).unwrap();
    // a wakes up: its turn (an action record, the host's progress, an event) and any other
    // write are refused by the database, whole.
    let turn = TurnWrites {
        actions: vec![ActionRecord {
            action_id: "late".into(),
            host_id: "h".into(),
            campaign_id: "c".into(),
            request: vec![1],
            result: None,
            created_at_ms: 1,
        }],
        events: vec![audit("written by a fenced leader")],
        ..Default::default()
    };
    let error = a.commit_turn(turn).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Fenced { ours, current } if ours == epoch_a && current == epoch_b),
        "{error}"
    );
    assert!(matches!(
        a.create_token(token("late", 1, 1000)).await,
        Err(StoreError::Fenced { .. })
    ));
    // b writes; nothing of a's late writes exists.
    b.create_token(token("by-b", 1, 1000)).await.unwrap();
    assert_eq!(b.action("late".into()).await.unwrap(), None);
    let ids: Vec<String> = b
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["by-a", "by-b"]);
    assert!(
        b.list_events(EventFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

mod schedules;

fn delivery(id: &str, webhook: &str, campaign: &str, at: i64) -> DeliveryRecord {
    DeliveryRecord {
        id: id.into(),
        webhook: webhook.into(),
        event: "campaign-started".into(),
        campaign_id: campaign.into(),
        host_id: String::new(),
        hostname: String::new(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        created_at_ms: at,
        attempts: 0,
        state: DeliveryState::Pending,
        last_error: String::new(),
        next_attempt_ms: at,
        delivered_at_ms: 0,
    }
}

both!(
    webhook_deliveries_are_written_with_a_turn_updated_listed_and_pruned,
    |at, store: Store| async move {
        // Written with an engine turn (in its transaction), once even when repeated.
        let writes = TurnWrites {
            deliveries: vec![
                delivery("n1", "ops", "c1", 10),
                delivery("n1", "chat", "c1", 10),
                delivery("n2", "ops", "c2", 20),
            ],
            events: vec![audit("with the turn")],
            ..Default::default()
        };
        store.commit_turn(writes).await.unwrap();
        let mut changed = delivery("n1", "ops", "c1", 10);
        changed.payload = "other".into();
        let again = TurnWrites {
            deliveries: vec![changed],
            ..Default::default()
        };
        store.commit_turn(again).await.unwrap();

        let pending = store.pending_deliveries().await.unwrap();
        let keys: Vec<(&str, &str)> = pending
            .iter()
            .map(|d| (d.id.as_str(), d.webhook.as_str()))
            .collect();
        assert_eq!(keys, [("n1", "chat"), ("n1", "ops"), ("n2", "ops")]);
        assert_eq!(pending[1], delivery("n1", "ops", "c1", 10));

        // An attempt refused, then one delivered; another given up on.
        let mut first = delivery("n1", "ops", "c1", 10);
        first.attempts = 1;
        first.last_error = "HTTP 503 Service Unavailable".into();
        first.next_attempt_ms = 5_010;
        store.record_delivery(first.clone()).await.unwrap();
        let mut delivered = first.clone();
        delivered.attempts = 2;
        delivered.state = DeliveryState::Delivered;
        delivered.delivered_at_ms = 5_020;
        store.record_delivery(delivered.clone()).await.unwrap();
        let mut failed = delivery("n2", "ops", "c2", 20);
        failed.attempts = 10;
        failed.state = DeliveryState::Failed;
        failed.last_error = "cannot connect".into();
        store.record_delivery(failed.clone()).await.unwrap();

        let all = store
            .list_deliveries(DeliveryFilter::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], failed, "newest first");
        let ops_c1 = all
            .iter()
            .find(|d| d.id == "n1" && d.webhook == "ops")
            .unwrap();
        assert_eq!(*ops_c1, delivered);
        let c1 = store
            .list_deliveries(DeliveryFilter {
                campaign_id: Some("c1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(c1.len(), 2);
        let only_pending = store
            .list_deliveries(DeliveryFilter {
                state: Some(DeliveryState::Pending),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(only_pending.len(), 1);
        assert_eq!(only_pending[0].webhook, "chat");
        let one = store
            .list_deliveries(DeliveryFilter {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(store.pending_deliveries().await.unwrap().len(), 1);

        // The record survives a restart; pruning keeps what is still pending.
        drop(store);
        let store = Store::open_at(&at).unwrap();
        assert_eq!(store.prune_deliveries(1_000).await.unwrap(), 2);
        let left = store
            .list_deliveries(DeliveryFilter::default())
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].state, DeliveryState::Pending);
    }
);
