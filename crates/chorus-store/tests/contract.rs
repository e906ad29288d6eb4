//! The `Store` contract, one suite generated for every backend.
//!
//! SQLite runs always, on a fresh file per test. PostgreSQL runs when
//! `CHORUS_TEST_POSTGRES` names a server (`postgres://postgres@127.0.0.1:5432/postgres`):
//! every test creates its own database there and drops it afterwards.

use chorus_core::model::{
    Attachment, AutoReply, ConversationKind, GitSource, Hook, Job, JobError, JobSource, JobStatus,
    Message, MessageKind, Origin, Script, ScriptError, User,
};
use chorus_core::{AttachmentId, ConversationId, JobId, MessageId, ScriptId, UserId};
use chorus_store::postgres::PostgresStore;
use chorus_store::sqlite::SqliteStore;
use chorus_store::{
    AfterMarker, Appended, Directory, FinishedJob, NewMessage, PRESENCE_MAX_GROUP, Page,
    ScriptRuns, SearchQuery, Store, StoreError, search_words,
};
use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Connection, Executor, PgConnection};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// One empty database for one test. Every [`Fresh::open`] is a separate store (its own
/// connections) on it, as separate nodes of a cluster would be.
enum Fresh {
    Sqlite {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Postgres {
        server: String,
        name: String,
        url: String,
    },
}

impl Fresh {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::Sqlite {
            path: dir.path().join("chorus.db"),
            _dir: dir,
        }
    }

    /// A new database on the server named by `CHORUS_TEST_POSTGRES`, if set.
    async fn postgres() -> Option<Self> {
        let Ok(server) = std::env::var("CHORUS_TEST_POSTGRES") else {
            eprintln!("CHORUS_TEST_POSTGRES is not set: PostgreSQL store test skipped");
            return None;
        };
        let name = format!("chorus_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("connecting to CHORUS_TEST_POSTGRES={server}: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let url = with_database(&server, &name);
        Some(Self::Postgres { server, name, url })
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).await.unwrap()),
            Self::Postgres { url, .. } => Arc::new(PostgresStore::connect(url).await.unwrap()),
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let Self::Postgres { server, name, .. } = self else {
            return;
        };
        let drop_database = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let server = server.clone();
        // Runs while a test (possibly a failed one) unwinds inside its runtime, which
        // cannot block on itself: a thread with a runtime of its own, and no panics.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ = admin.execute(drop_database.as_str()).await;
                }
            });
        })
        .join();
    }
}

/// `server` (a `postgres://` URL) with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (scheme, rest) = server.split_once("://").expect("a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[end..]
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{}/{name}{query}", &rest[..end])
}

async fn user(store: &Arc<dyn Store>, name: &str) -> User {
    store.create_user(name, "hash").await.unwrap()
}

async fn users<const N: usize>(store: &Arc<dyn Store>) -> [UserId; N] {
    let mut ids = [UserId::default(); N];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = user(store, &format!("user{i}")).await.id;
    }
    ids
}

/// A time with sub-millisecond digits, which the store drops.
fn sent_at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap()
}

fn new_message(conversation: ConversationId, sender: UserId, key: &str) -> NewMessage {
    NewMessage::text(
        sender,
        conversation,
        key,
        &format!("body of {key}"),
        sent_at(),
    )
}

#[track_caller]
fn new(a: &Appended) -> &Message {
    match a {
        Appended::New(m) => m,
        other => panic!("expected New, got {other:?}"),
    }
}

#[track_caller]
fn existing(a: &Appended) -> &Message {
    match a {
        Appended::Existing(m) => m,
        other => panic!("expected Existing, got {other:?}"),
    }
}

fn seqs(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

async fn page(
    store: &Arc<dyn Store>,
    conversation: ConversationId,
    after_seq: Option<i64>,
    before_seq: Option<i64>,
    limit: i64,
) -> Vec<i64> {
    let page = Page {
        after_seq,
        before_seq,
        limit,
    };
    seqs(&store.messages(conversation, page).await.unwrap())
}

/// Stores `n` messages in `conversation`, one batch.
async fn fill(store: &Arc<dyn Store>, conversation: ConversationId, sender: UserId, n: usize) {
    let batch: Vec<NewMessage> = (0..n)
        .map(|i| new_message(conversation, sender, &format!("fill-{i}")))
        .collect();
    store.append_messages(&batch).await.unwrap();
}

async fn health(db: &Fresh) {
    db.open().await.health().await.unwrap();
}

async fn users_are_unique_and_found(db: &Fresh) {
    let store = db.open().await;
    let alice = store.create_user("alice", "phc-hash").await.unwrap();
    assert_eq!(alice.username, "alice");
    assert!(matches!(
        store.create_user("alice", "other").await,
        Err(StoreError::Conflict("username"))
    ));
    let account = store.account("alice").await.unwrap().unwrap();
    assert_eq!(account.user, alice);
    assert_eq!(account.password_hash, "phc-hash");
    assert!(store.account("Alice").await.unwrap().is_none());
    assert!(store.account("nobody").await.unwrap().is_none());
    assert_eq!(store.user(alice.id).await.unwrap(), Some(alice));
    assert_eq!(store.user(UserId::new()).await.unwrap(), None);
}

async fn external_identities_map_to_one_user_each(db: &Fresh) {
    let store = db.open().await;
    let iss = "https://sso.example.com/realms/chorus";
    assert_eq!(store.external_user(iss, "sub-1").await.unwrap(), None);
    let ada = store
        .create_external_user(iss, "sub-1", "ada")
        .await
        .unwrap();
    assert_eq!(ada.username, "ada");
    // Found again by issuer and subject, from another connection too.
    assert_eq!(
        store.external_user(iss, "sub-1").await.unwrap(),
        Some(ada.clone())
    );
    let other = db.open().await;
    assert_eq!(
        other.external_user(iss, "sub-1").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(store.user(ada.id).await.unwrap(), Some(ada.clone()));
    // Linked once: a second link fails and leaves no second user behind.
    assert!(matches!(
        store.create_external_user(iss, "sub-1", "ada-2").await,
        Err(StoreError::Conflict("identity"))
    ));
    assert!(store.account("ada-2").await.unwrap().is_none());
    // A taken name (a built-in account here) creates nothing and links nothing.
    let bob = user(&store, "bob").await;
    assert!(matches!(
        store.create_external_user(iss, "sub-2", "bob").await,
        Err(StoreError::Conflict("username"))
    ));
    assert_eq!(store.external_user(iss, "sub-2").await.unwrap(), None);
    assert_eq!(store.account("bob").await.unwrap().unwrap().user, bob);
    // The subject is only unique per issuer.
    let ada_elsewhere = store
        .create_external_user("https://other.example.com", "sub-1", "ada-other")
        .await
        .unwrap();
    assert_ne!(ada_elsewhere.id, ada.id);
    assert_eq!(
        store
            .external_user("https://other.example.com", "sub-1")
            .await
            .unwrap(),
        Some(ada_elsewhere)
    );
    // No password opens an outside identity's account.
    let account = store.account("ada").await.unwrap().unwrap();
    assert_eq!(account.user, ada);
    assert_eq!(account.password_hash, "");
}

async fn external_identity_is_linked_once_under_races(db: &Fresh) {
    let iss = "https://sso.example.com";
    let mut tasks = Vec::new();
    for i in 0..4 {
        let store = db.open().await;
        tasks.push(tokio::spawn(async move {
            store
                .create_external_user(iss, "racer", &format!("racer-{i}"))
                .await
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(user) => created.push(user),
            Err(StoreError::Conflict("identity")) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    let store = db.open().await;
    assert_eq!(
        store.external_user(iss, "racer").await.unwrap(),
        Some(created[0].clone())
    );
    assert_eq!(store.search_users("racer", 10).await.unwrap(), created);
}

/// The stored invite codes, read past the store.
async fn stored_invite_codes(db: &Fresh) -> Vec<String> {
    let query = "SELECT code_sha256 FROM invites";
    match db {
        Fresh::Sqlite { path, .. } => {
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
        Fresh::Postgres { url, .. } => {
            let mut conn = PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
    }
}

async fn invites_make_one_account_each_until_they_expire(db: &Fresh) {
    let store = db.open().await;
    let admin = user(&store, "admin").await;
    let now = at(1_700_000_000_000);
    let hour = chrono::Duration::hours(1);
    store
        .create_invite("code-one", Some(admin.id), now + hour)
        .await
        .unwrap();
    assert!(store.invite_usable("code-one", now).await.unwrap());
    assert!(!store.invite_usable("code-two", now).await.unwrap());
    assert!(!store.invite_usable("code-one", now + hour).await.unwrap());
    // Only a digest is stored.
    let stored = stored_invite_codes(db).await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], "code-one");
    assert_eq!(stored[0].len(), 64, "SHA-256 in hex: {stored:?}");

    // A taken name uses nothing up.
    assert!(matches!(
        store
            .create_user_with_invite("admin", "hash", "code-one", now)
            .await,
        Err(StoreError::Conflict("username"))
    ));
    assert!(store.invite_usable("code-one", now).await.unwrap());
    let ada = store
        .create_user_with_invite("ada", "hash-a", "code-one", now)
        .await
        .unwrap();
    assert_eq!(store.account("ada").await.unwrap().unwrap().user, ada);
    assert!(!store.invite_usable("code-one", now).await.unwrap());
    // A used, unknown or expired code creates nothing.
    for (code, when) in [("code-one", now), ("nope", now)] {
        assert!(matches!(
            store
                .create_user_with_invite("bob", "hash-b", code, when)
                .await,
            Err(StoreError::NotFound("invite"))
        ));
    }
    store
        .create_invite("code-late", None, now + hour)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_user_with_invite("bob", "hash-b", "code-late", now + hour)
            .await,
        Err(StoreError::NotFound("invite"))
    ));
    assert!(store.account("bob").await.unwrap().is_none());
    // The same invite just before it expires still works.
    let bob = store
        .create_user_with_invite(
            "bob",
            "hash-b",
            "code-late",
            now + hour - chrono::Duration::milliseconds(1),
        )
        .await
        .unwrap();
    assert_eq!(bob.username, "bob");
}

async fn an_invite_makes_one_account_under_races(db: &Fresh) {
    let now = Utc::now();
    db.open()
        .await
        .create_invite("shared-code", None, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        // Each on its own connections, as sign-ups on different gateways would be.
        let store = db.open().await;
        tasks.push(tokio::spawn(async move {
            store
                .create_user_with_invite(&format!("racer-{i}"), "hash", "shared-code", now)
                .await
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(user) => created.push(user),
            Err(StoreError::NotFound("invite")) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    let store = db.open().await;
    assert_eq!(store.search_users("racer", 10).await.unwrap(), created);
}

async fn search_is_a_literal_prefix_in_byte_order(db: &Fresh) {
    let store = db.open().await;
    for name in ["alice", "al_ice", "alxice", "al%x", "al", "Zed", "bob"] {
        user(&store, name).await;
    }
    let search = |prefix: &'static str, limit| {
        let store = store.clone();
        async move { store.search_users(prefix, limit).await.unwrap() }
    };
    assert_eq!(names(&search("al_", 10).await), ["al_ice"]);
    assert_eq!(names(&search("al%", 10).await), ["al%x"]);
    assert_eq!(
        names(&search("al", 10).await),
        ["al", "al%x", "al_ice", "alice", "alxice"]
    );
    assert_eq!(names(&search("al", 2).await), ["al", "al%x"]);
    assert_eq!(
        names(&search("", 10).await),
        ["Zed", "al", "al%x", "al_ice", "alice", "alxice", "bob"]
    );
    assert!(search("alicia", 10).await.is_empty());
    assert!(search("z", 10).await.is_empty());
}

async fn direct_is_one_per_pair(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users(&store).await;
    let (ab, created) = store.direct(a, b).await.unwrap();
    assert!(created);
    assert_eq!(ab.kind, ConversationKind::Direct);
    assert_eq!(ab.members, [a, b]);
    assert_eq!(
        (ab.title.as_deref(), ab.owner_id, ab.last_seq),
        (None, None, 0)
    );
    assert_eq!(store.conversation(ab.id).await.unwrap(), Some(ab.clone()));

    let (ba, created) = store.direct(b, a).await.unwrap();
    assert!(!created);
    assert_eq!(ba, ab);
    let (ac, created) = store.direct(a, c).await.unwrap();
    assert!(created);
    assert_ne!(ac.id, ab.id);
    assert!(matches!(
        store.direct(a, UserId::new()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn direct_is_created_once_under_races(db: &Fresh) {
    let stores = [db.open().await, db.open().await];
    let [a, b] = users(&stores[0]).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = stores[i % 2].clone();
            let (x, y) = if i % 4 < 2 { (a, b) } else { (b, a) };
            tokio::spawn(async move { store.direct(x, y).await.unwrap() })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (record, new) = t.await.unwrap();
        ids.insert(record.id);
        created += usize::from(new);
        assert_eq!(sorted(record.members), sorted(vec![a, b]));
    }
    assert_eq!(ids.len(), 1, "one conversation per pair");
    assert_eq!(created, 1, "created exactly once");
}

async fn groups_keep_joining_order_and_hand_over_ownership(db: &Fresh) {
    let store = db.open().await;
    let [owner, b, c, d] = users(&store).await;
    let group = store
        .create_group(owner, "team", &[b, c, owner, b])
        .await
        .unwrap();
    assert_eq!(group.kind, ConversationKind::Group);
    assert_eq!(group.title.as_deref(), Some("team"));
    assert_eq!(group.owner_id, Some(owner));
    assert_eq!(group.members, [owner, b, c], "owner first, duplicates once");
    assert_eq!(
        store.conversation(group.id).await.unwrap(),
        Some(group.clone())
    );
    assert!(
        store
            .conversation(ConversationId::new())
            .await
            .unwrap()
            .is_none()
    );

    store.add_member(group.id, d).await.unwrap();
    store.add_member(group.id, d).await.unwrap();
    assert_eq!(store.members(group.id).await.unwrap(), [owner, b, c, d]);
    assert!(matches!(
        store.add_member(group.id, UserId::new()).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.add_member(ConversationId::new(), d).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create_group(owner, "bad", &[UserId::new()]).await,
        Err(StoreError::NotFound(_))
    ));

    store.remove_member(group.id, b).await.unwrap();
    assert!(matches!(
        store.remove_member(group.id, b).await,
        Err(StoreError::NotFound("member"))
    ));
    let after = store.conversation(group.id).await.unwrap().unwrap();
    assert_eq!(
        (after.owner_id, after.members),
        (Some(owner), vec![owner, c, d])
    );

    store.remove_member(group.id, owner).await.unwrap();
    let after = store.conversation(group.id).await.unwrap().unwrap();
    assert_eq!((after.owner_id, after.members), (Some(c), vec![c, d]));
    store.remove_member(group.id, c).await.unwrap();
    assert_eq!(
        store
            .conversation(group.id)
            .await
            .unwrap()
            .unwrap()
            .owner_id,
        Some(d)
    );
    store.remove_member(group.id, d).await.unwrap();
    let after = store.conversation(group.id).await.unwrap().unwrap();
    assert_eq!((after.owner_id, after.members), (None, vec![]));
}

async fn conversations_of_lists_members_and_read_markers(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c, stranger] = users(&store).await;
    let (direct, _) = store.direct(a, b).await.unwrap();
    let group = store.create_group(a, "g", &[b, c]).await.unwrap();
    fill(&store, group.id, b, 4).await;
    store.mark_read(group.id, a, 3).await.unwrap();

    let of_a = store.conversations_of(a).await.unwrap();
    let order: Vec<_> = of_a.iter().map(|(r, _)| (r.created_at, r.id)).collect();
    assert_eq!(order, sorted(order.clone()), "by creation time, then id");
    let by_id: HashMap<_, _> = of_a.into_iter().map(|(r, seq)| (r.id, (r, seq))).collect();
    assert_eq!(by_id.len(), 2);
    let (d, read) = &by_id[&direct.id];
    assert_eq!(
        (d.members.as_slice(), d.last_seq, *read),
        (&[a, b][..], 0, 0)
    );
    let (g, read) = &by_id[&group.id];
    assert_eq!(
        (g.members.as_slice(), g.last_seq, *read),
        (&[a, b, c][..], 4, 3)
    );
    assert_eq!(g.clone().view(*read, AfterMarker::default()).unread, 1);

    let of_c = store.conversations_of(c).await.unwrap();
    assert_eq!(of_c.len(), 1);
    assert_eq!((of_c[0].0.id, of_c[0].1), (group.id, 0));
    assert!(store.conversations_of(stranger).await.unwrap().is_empty());
    assert_eq!(store.read_seq(group.id, a).await.unwrap(), Some(3));
    assert_eq!(store.read_seq(group.id, c).await.unwrap(), Some(0));
    assert_eq!(store.read_seq(group.id, stranger).await.unwrap(), None);
}

async fn contacts_share_a_conversation(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c, d, loner] = users(&store).await;
    store.direct(a, b).await.unwrap();
    store.create_group(a, "g", &[b, c, d]).await.unwrap();
    assert_eq!(
        sorted(store.contacts(a, true).await.unwrap()),
        sorted(vec![b, c, d])
    );
    assert_eq!(
        sorted(store.contacts(b, true).await.unwrap()),
        sorted(vec![a, c, d])
    );
    assert!(store.contacts(loner, true).await.unwrap().is_empty());

    // Members of a group larger than PRESENCE_MAX_GROUP are not contacts through it.
    let mut crowd = Vec::new();
    for i in 0..PRESENCE_MAX_GROUP {
        crowd.push(
            store
                .create_user(&format!("crowd{i}"), "h")
                .await
                .unwrap()
                .id,
        );
    }
    store.create_group(loner, "big", &crowd).await.unwrap();
    assert!(store.contacts(loner, true).await.unwrap().is_empty());
    assert!(
        !store
            .contacts(crowd[0], true)
            .await
            .unwrap()
            .contains(&loner)
    );
    store
        .create_group(d, "at the limit", &crowd[1..])
        .await
        .unwrap();
    assert_eq!(
        store.contacts(d, true).await.unwrap().len(),
        3 + crowd.len() - 1,
        "a, b, c, and the others of a group of exactly PRESENCE_MAX_GROUP"
    );
}

async fn contacts_may_leave_direct_conversations_out(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c, stranger] = users(&store).await;
    store.direct(stranger, a).await.unwrap();
    store.create_group(a, "g", &[b]).await.unwrap();
    // A two-member group is still a group.
    store.create_group(c, "pair", &[a]).await.unwrap();
    assert_eq!(
        sorted(store.contacts(a, true).await.unwrap()),
        sorted(vec![b, c, stranger])
    );
    assert_eq!(
        sorted(store.contacts(a, false).await.unwrap()),
        sorted(vec![b, c]),
        "whoever opens a direct conversation does not see presence through it"
    );
    assert!(store.contacts(stranger, false).await.unwrap().is_empty());
}

async fn append_numbers_each_conversation_from_one(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users(&store).await;
    let (one, _) = store.direct(a, b).await.unwrap();
    let two = store.create_group(a, "g", &[b]).await.unwrap();
    let out = store
        .append_messages(&[
            new_message(one.id, a, "1"),
            new_message(two.id, b, "2"),
            new_message(one.id, b, "3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|a| new(a).seq).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    let first = new(&out[0]);
    let expected_time = DateTime::from_timestamp_millis(sent_at().timestamp_millis()).unwrap();
    assert_eq!(first.sent_at, expected_time, "kept to the millisecond");
    assert_eq!(
        (
            first.body.as_str(),
            first.client_msg_id.as_str(),
            first.origin
        ),
        ("body of 1", "1", Origin::User)
    );
    assert_eq!(
        store.message(first.message_id).await.unwrap().as_ref(),
        Some(first)
    );
    assert!(
        store
            .message(MessageId::derive(a, one.id, "none"))
            .await
            .unwrap()
            .is_none()
    );

    let out = store
        .append_messages(&[
            new_message(one.id, a, "4"),
            NewMessage {
                origin: Origin::AutoReply,
                ..new_message(one.id, b, "5")
            },
        ])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 3);
    assert_eq!(new(&out[1]).origin, Origin::AutoReply);
    assert_eq!(
        store.conversation(one.id).await.unwrap().unwrap().last_seq,
        4
    );
    assert_eq!(
        store.conversation(two.id).await.unwrap().unwrap().last_seq,
        1
    );
    assert_eq!(page(&store, one.id, None, None, 100).await, [1, 2, 3, 4]);
    assert!(store.append_messages(&[]).await.unwrap().is_empty());
}

/// A batch larger than one statement takes (500 messages): every message is stored
/// once, in order, and the counters continue from where the batch left them.
async fn append_a_batch_larger_than_a_statement(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users(&store).await;
    let (one, _) = store.direct(a, b).await.unwrap();
    let two = store.create_group(a, "g", &[b]).await.unwrap();
    let batch: Vec<NewMessage> = (0..1201)
        .map(|i| {
            let conversation = if i % 3 == 0 { two.id } else { one.id };
            new_message(conversation, a, &format!("big-{i}"))
        })
        .collect();
    let out = store.append_messages(&batch).await.unwrap();
    assert_eq!(out.len(), 1201);
    let (mut in_one, mut in_two) = (0, 0);
    for (sent, answer) in batch.iter().zip(&out) {
        let stored = new(answer);
        assert_eq!(stored.message_id, sent.message_id);
        let count = if sent.conversation_id == two.id {
            &mut in_two
        } else {
            &mut in_one
        };
        *count += 1;
        assert_eq!(stored.seq, *count, "numbered in batch order");
    }
    assert_eq!((in_one, in_two), (800, 401));
    let all = page(&store, one.id, None, None, 1000).await;
    assert_eq!(all, (1..=800).collect::<Vec<i64>>());
    assert_eq!(
        store.conversation(two.id).await.unwrap().unwrap().last_seq,
        401
    );
    let next = store
        .append_messages(&[new_message(one.id, b, "after")])
        .await
        .unwrap();
    assert_eq!(new(&next[0]).seq, 801);
}

async fn append_stores_each_message_once(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users(&store).await;
    let (c, _) = store.direct(a, b).await.unwrap();
    let out = store
        .append_messages(&[
            new_message(c.id, a, "x"),
            new_message(c.id, a, "y"),
            new_message(c.id, a, "x"),
        ])
        .await
        .unwrap();
    assert_eq!((new(&out[0]).seq, new(&out[1]).seq), (1, 2));
    assert_eq!(existing(&out[2]), new(&out[0]), "duplicate inside a batch");

    let retry = NewMessage {
        body: "changed on retry".into(),
        ..new_message(c.id, a, "y")
    };
    let out2 = store
        .append_messages(&[retry, new_message(c.id, a, "z")])
        .await
        .unwrap();
    assert_eq!(
        existing(&out2[0]),
        new(&out[1]),
        "the stored copy, unchanged"
    );
    assert_eq!(new(&out2[1]).seq, 3);
    assert_eq!(page(&store, c.id, None, None, 100).await, [1, 2, 3]);
    assert_eq!(store.conversation(c.id).await.unwrap().unwrap().last_seq, 3);
}

async fn append_to_an_unknown_conversation_stores_nothing(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users(&store).await;
    let (c, _) = store.direct(a, b).await.unwrap();
    let nowhere = ConversationId::new();
    let out = store
        .append_messages(&[
            new_message(nowhere, a, "lost"),
            new_message(c.id, a, "kept"),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], Appended::NoConversation));
    assert_eq!(new(&out[1]).seq, 1);
    assert!(
        store
            .message(MessageId::derive(a, nowhere, "lost"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(page(&store, nowhere, None, None, 10).await.is_empty());
}

/// Two stores (as two nodes while a partition moves) append to the same conversations
/// at once, partly the same messages: every message is stored once, every conversation
/// is numbered 1..N without gaps, and every answer agrees with what was stored.
async fn concurrent_appenders_keep_seq_contiguous(db: &Fresh) {
    const TASKS: usize = 8;
    const BATCHES: usize = 25;
    const PER_BATCH: usize = 4;
    let stores = [db.open().await, db.open().await];
    let [a, b] = users(&stores[0]).await;
    let (x, _) = stores[0].direct(a, b).await.unwrap();
    let y = stores[0].create_group(a, "g", &[b]).await.unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            // Tasks 2k and 2k+1 send the same messages, through different stores, in
            // opposite orders: each batch touches both conversations, first x or first y.
            let store = stores[task % 2].clone();
            let (x, y) = (x.id, y.id);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for batch in 0..BATCHES {
                    let mut messages: Vec<NewMessage> = (0..PER_BATCH)
                        .map(|j| {
                            let key = format!("{}-{batch}-{j}", task / 2);
                            new_message(if j % 2 == 0 { x } else { y }, a, &key)
                        })
                        .collect();
                    if task % 2 == 1 {
                        messages.reverse();
                    }
                    answers.extend(store.append_messages(&messages).await.unwrap());
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }

    let unique = TASKS / 2 * BATCHES * PER_BATCH;
    let mut stored: HashMap<MessageId, Message> = HashMap::new();
    for c in [x.id, y.id] {
        let messages = stores[1]
            .messages(
                c,
                Page {
                    after_seq: Some(0),
                    before_seq: None,
                    limit: 10_000,
                },
            )
            .await
            .unwrap();
        let n = messages.len() as i64;
        assert_eq!(seqs(&messages), (1..=n).collect::<Vec<_>>(), "contiguous");
        assert_eq!(
            stores[0].conversation(c).await.unwrap().unwrap().last_seq,
            n
        );
        for m in messages {
            assert!(stored.insert(m.message_id, m).is_none(), "stored once");
        }
    }
    assert_eq!(stored.len(), unique);
    let mut news = 0;
    for answer in &answers {
        let m = match answer {
            Appended::New(m) => {
                news += 1;
                m
            }
            Appended::Existing(m) => m,
            Appended::NoConversation | Appended::Unchanged | Appended::TargetGone => {
                panic!("messages to conversations")
            }
        };
        assert_eq!(
            Some(m),
            stored.get(&m.message_id),
            "answer agrees with the store"
        );
    }
    assert_eq!(news, unique, "each message reported new exactly once");
}

async fn history_pages(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c2] = users(&store).await;
    let (c, _) = store.direct(a, b).await.unwrap();
    let (empty, _) = store.direct(a, c2).await.unwrap();
    fill(&store, c.id, a, 10).await;
    assert_eq!(
        page(&store, c.id, None, None, 3).await,
        [8, 9, 10],
        "latest"
    );
    assert_eq!(page(&store, c.id, None, Some(8), 3).await, [5, 6, 7]);
    assert_eq!(page(&store, c.id, None, Some(3), 10).await, [1, 2]);
    assert_eq!(page(&store, c.id, Some(2), None, 3).await, [3, 4, 5]);
    assert_eq!(page(&store, c.id, Some(2), Some(5), 10).await, [3, 4]);
    assert_eq!(page(&store, c.id, Some(8), None, 10).await, [9, 10]);
    assert_eq!(
        page(&store, c.id, Some(0), None, 100).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert!(page(&store, c.id, Some(10), None, 10).await.is_empty());
    assert!(page(&store, c.id, None, Some(1), 10).await.is_empty());
    assert!(page(&store, c.id, None, None, 0).await.is_empty());
    assert!(page(&store, empty.id, None, None, 10).await.is_empty());
}

async fn read_marker_moves_forward_and_stops_at_last_seq(db: &Fresh) {
    let store = db.open().await;
    let [a, b, stranger] = users(&store).await;
    let (c, _) = store.direct(a, b).await.unwrap();
    assert_eq!(
        store.mark_read(c.id, a, 5).await.unwrap(),
        0,
        "nothing to read"
    );
    fill(&store, c.id, b, 5).await;
    assert_eq!(store.mark_read(c.id, a, 3).await.unwrap(), 3);
    assert_eq!(
        store.mark_read(c.id, a, 2).await.unwrap(),
        3,
        "never backwards"
    );
    assert_eq!(store.mark_read(c.id, a, 99).await.unwrap(), 5, "capped");
    assert_eq!(store.read_seq(c.id, a).await.unwrap(), Some(5));
    assert_eq!(
        store.read_seq(c.id, b).await.unwrap(),
        Some(0),
        "per member"
    );
    assert!(matches!(
        store.mark_read(c.id, stranger, 1).await,
        Err(StoreError::NotFound("member"))
    ));
    assert!(matches!(
        store.mark_read(ConversationId::new(), a, 1).await,
        Err(StoreError::NotFound("member"))
    ));
}

async fn last_seqs_cover_every_conversation_of_a_user(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c, stranger] = users(&store).await;
    let (ab, _) = store.direct(a, b).await.unwrap();
    let g = store.create_group(a, "g", &[c]).await.unwrap();
    fill(&store, ab.id, b, 3).await;
    assert_eq!(
        sorted(store.last_seqs(a).await.unwrap()),
        sorted(vec![(ab.id, 3), (g.id, 0)])
    );
    assert_eq!(store.last_seqs(c).await.unwrap(), [(g.id, 0)]);
    assert!(store.last_seqs(stranger).await.unwrap().is_empty());
}

async fn directory_caches_members_until_invalidated(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users(&store).await;
    let g = store.create_group(a, "g", &[b]).await.unwrap();
    let directory = Directory::new(store.clone());
    let members = directory.members(g.id).await.unwrap();
    assert!(members.contains(a) && members.contains(b) && !members.contains(c));
    store.add_member(g.id, c).await.unwrap();
    assert!(
        !directory.members(g.id).await.unwrap().contains(c),
        "cached"
    );
    directory.invalidate(g.id);
    let members = directory.members(g.id).await.unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.contains(c));
    assert!(
        directory
            .members(ConversationId::new())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn groups_are_counted_by_owner(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users(&store).await;
    store.create_group(a, "one", &[b]).await.unwrap();
    store.create_group(a, "two", &[c]).await.unwrap();
    store.create_group(b, "three", &[a]).await.unwrap();
    store.direct(a, c).await.unwrap();
    assert_eq!(
        store.groups_owned(a).await.unwrap(),
        2,
        "direct ones are not owned"
    );
    assert_eq!(store.groups_owned(b).await.unwrap(), 1);
    assert_eq!(store.groups_owned(c).await.unwrap(), 0);
}

async fn directory_entries_expire_so_a_missed_notice_is_wrong_for_a_while_only(db: &Fresh) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    let store = db.open().await;
    let [a, b, _] = users(&store).await;
    let g = store.create_group(a, "g", &[b]).await.unwrap();
    let start = Instant::now();
    let elapsed_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let elapsed_ms = elapsed_ms.clone();
        Arc::new(move || start + Duration::from_millis(elapsed_ms.load(Ordering::SeqCst)))
    };
    let directory = Directory::with_ttl(store.clone(), Duration::from_secs(30), clock);
    assert!(directory.members(g.id).await.unwrap().contains(b));
    // b is removed on another node, whose notice this node never gets.
    store.remove_member(g.id, b).await.unwrap();
    elapsed_ms.store(29_999, Ordering::SeqCst);
    assert!(directory.members(g.id).await.unwrap().contains(b), "cached");
    elapsed_ms.store(30_000, Ordering::SeqCst);
    assert!(
        !directory.members(g.id).await.unwrap().contains(b),
        "expired: read again"
    );
}

fn script(owner: UserId, name: &str, hooks: Vec<Hook>) -> Script {
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    Script {
        id: ScriptId::new(),
        owner_id: owner,
        name: name.into(),
        source: "export function onIncoming() {}".into(),
        hooks,
        enabled: true,
        fail_closed: false,
        memory_bytes: 4 << 20,
        cpu_ms: 10,
        version: 1,
        runs: 0,
        failures: 0,
        consecutive_failures: 0,
        last_error: None,
        last_logs: Vec::new(),
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    }
}

fn runs(id: ScriptId, ok: i64, failed: i64, trailing: i64) -> ScriptRuns {
    ScriptRuns {
        id,
        runs: ok + failed,
        failures: failed,
        any_ok: ok > 0,
        trailing_failures: trailing,
        last_error: (failed > 0).then(|| ScriptError {
            code: "thrown".into(),
            message: "Error: boom".into(),
            at: Utc.timestamp_millis_opt(1_700_000_000_500).unwrap(),
        }),
        last_logs: vec!["line".into()],
    }
}

async fn scripts_round_trip_and_belong_to_their_owner(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let first = script(a, "first", vec![Hook::Incoming]);
    let mut second = script(a, "second", vec![Hook::Incoming, Hook::Outgoing]);
    second.created_at += chrono::Duration::milliseconds(1);
    store.create_script(&first).await.unwrap();
    store.create_script(&second).await.unwrap();
    store
        .create_script(&script(b, "other", vec![Hook::Outgoing]))
        .await
        .unwrap();
    let mine = store.scripts_of(a).await.unwrap();
    assert_eq!(mine, vec![first.clone(), second.clone()]);
    assert_eq!(store.script(second.id).await.unwrap(), Some(second.clone()));

    let mut changed = second.clone();
    changed.name = "renamed".into();
    changed.enabled = false;
    changed.version = 2;
    changed.hooks = vec![Hook::Outgoing];
    store.update_script(&changed).await.unwrap();
    assert_eq!(
        store.script(second.id).await.unwrap(),
        Some(changed.clone())
    );
    let enabled: Vec<String> = store
        .enabled_scripts()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        sorted(enabled),
        vec!["first".to_string(), "other".to_string()]
    );

    store.kv_set(first.id, "k", "1", 10).await.unwrap();
    assert!(store.delete_script(first.id).await.unwrap());
    assert!(!store.delete_script(first.id).await.unwrap());
    assert_eq!(store.script(first.id).await.unwrap(), None);
    assert_eq!(
        store.kv_get(first.id, "k").await.unwrap(),
        None,
        "state goes with the script"
    );
    assert!(matches!(
        store.update_script(&first).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn script_runs_count_and_disable_after_failures_in_a_row(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let s = script(a, "flaky", vec![Hook::Incoming]);
    store.create_script(&s).await.unwrap();
    assert!(
        store
            .record_script_runs(&[runs(s.id, 3, 2, 2)], 5)
            .await
            .unwrap()
            .is_empty()
    );
    let now = store.script(s.id).await.unwrap().unwrap();
    assert_eq!(
        (now.runs, now.failures, now.consecutive_failures),
        (5, 2, 2)
    );
    assert_eq!(now.last_error.as_ref().unwrap().code, "thrown");
    assert_eq!(now.last_logs, vec!["line".to_string()]);
    // A good run resets the count: 2 before, then a batch ending in a success.
    assert!(
        store
            .record_script_runs(&[runs(s.id, 1, 1, 0)], 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .script(s.id)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
    // Failures only: 3, then 2 more reach 5 and disable it, once.
    assert!(
        store
            .record_script_runs(&[runs(s.id, 0, 3, 3)], 5)
            .await
            .unwrap()
            .is_empty()
    );
    let disabled = store
        .record_script_runs(&[runs(s.id, 0, 2, 2)], 5)
        .await
        .unwrap();
    assert_eq!(disabled.len(), 1);
    assert!(!disabled[0].enabled);
    assert_eq!(disabled[0].version, s.version + 1);
    assert!(
        disabled[0]
            .disabled_reason
            .as_deref()
            .unwrap()
            .contains("5 failed runs")
    );
    assert!(
        store
            .record_script_runs(&[runs(s.id, 0, 1, 1)], 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.enabled_scripts().await.unwrap().is_empty());
    // A script deleted meanwhile is skipped.
    store.delete_script(s.id).await.unwrap();
    assert!(
        store
            .record_script_runs(&[runs(s.id, 1, 0, 0)], 5)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn script_state_is_bounded_per_script(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let (s, t) = (
        script(a, "s", vec![Hook::Incoming]),
        script(a, "t", vec![Hook::Incoming]),
    );
    store.create_script(&s).await.unwrap();
    store.create_script(&t).await.unwrap();
    assert!(store.kv_set(s.id, "a", "1", 2).await.unwrap());
    assert!(store.kv_set(s.id, "b", "\"two\"", 2).await.unwrap());
    assert!(
        !store.kv_set(s.id, "c", "3", 2).await.unwrap(),
        "a third key is refused"
    );
    assert!(
        store.kv_set(s.id, "a", "10", 2).await.unwrap(),
        "an existing key may change"
    );
    assert_eq!(
        store.kv_get(s.id, "a").await.unwrap().as_deref(),
        Some("10")
    );
    assert_eq!(store.kv_get(s.id, "c").await.unwrap(), None);
    assert_eq!(
        store.kv_get(t.id, "a").await.unwrap(),
        None,
        "state is per script"
    );
    store.kv_delete(s.id, "a").await.unwrap();
    assert_eq!(store.kv_get(s.id, "a").await.unwrap(), None);
    assert!(
        store.kv_set(s.id, "c", "3", 2).await.unwrap(),
        "a deleted key frees its place"
    );
}

async fn auto_reply_settings_and_window(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users::<3>(&store).await;
    assert_eq!(store.auto_reply(a).await.unwrap(), AutoReply::default());
    let on = AutoReply {
        enabled: true,
        text: "away".into(),
    };
    store.set_auto_reply(a, &on).await.unwrap();
    store
        .set_auto_reply(
            b,
            &AutoReply {
                enabled: false,
                text: "x".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.auto_reply(a).await.unwrap(), on);
    assert_eq!(
        store.enabled_auto_replies().await.unwrap(),
        vec![(a, "away".to_string())]
    );

    let (conversation, _) = store.direct(a, b).await.unwrap();
    let window = std::time::Duration::from_secs(3600);
    let t0 = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let m1 = MessageId::derive(b, conversation.id, "1");
    let m2 = MessageId::derive(b, conversation.id, "2");
    let claim = |trigger, sender, at| {
        let store = store.clone();
        async move {
            store
                .claim_auto_reply(a, conversation.id, sender, trigger, at, window)
                .await
                .unwrap()
        }
    };
    assert!(claim(m1, b, t0).await, "the first message is answered");
    assert!(
        !claim(m2, b, t0 + chrono::Duration::minutes(30)).await,
        "not again within the window"
    );
    assert!(
        claim(m1, b, t0 + chrono::Duration::minutes(31)).await,
        "a replayed trigger is answered again"
    );
    assert!(
        claim(m2, c, t0).await,
        "another sender has their own window"
    );
    assert!(
        claim(m2, b, t0 + chrono::Duration::minutes(92)).await,
        "after the window, again"
    );
}

async fn automations_cache_follows_refresh(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let out = script(a, "out", vec![Hook::Outgoing]);
    store.create_script(&out).await.unwrap();
    let directory = Directory::new(store.clone());
    let cache = directory.automations();
    cache.load().await.unwrap();
    assert!(cache.has(a, Hook::Outgoing));
    assert!(!cache.has(a, Hook::Incoming));
    assert!(
        cache.get(b).is_none(),
        "users without automation take no space"
    );
    store
        .set_auto_reply(
            b,
            &AutoReply {
                enabled: true,
                text: "later".into(),
            },
        )
        .await
        .unwrap();
    assert!(!cache.has(b, Hook::Incoming), "not seen before a refresh");
    cache.refresh(b).await.unwrap();
    assert!(cache.has(b, Hook::Incoming));
    assert_eq!(cache.get(b).unwrap().auto_reply.as_deref(), Some("later"));
    let mut off = out.clone();
    off.enabled = false;
    store.update_script(&off).await.unwrap();
    cache.refresh(a).await.unwrap();
    assert!(cache.get(a).is_none());
}

fn new_job(source: JobSource, at_ms: i64) -> Job {
    Job {
        id: JobId::new(),
        status: JobStatus::Queued,
        source,
        cpu_ms: 5000,
        memory_bytes: 16 << 20,
        submitted_at: DateTime::from_timestamp_millis(at_ms).unwrap(),
        started_at: None,
        finished_at: None,
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn finished(status: JobStatus, output: serde_json::Value, started: i64, ended: i64) -> FinishedJob {
    FinishedJob {
        status,
        error: (status != JobStatus::Succeeded).then(|| JobError {
            code: "thrown".into(),
            message: "Error: no".into(),
        }),
        output,
        elapsed_ms: (ended - started) as u64,
        started_at: at(started),
        finished_at: at(ended),
    }
}

async fn jobs_round_trip_and_belong_to_their_owner(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let inline = new_job(JobSource::Script("export function main() {}".into()), 1_000);
    let git = new_job(
        JobSource::Git(GitSource {
            url: "https://example.com/r.git".into(),
            reference: "main".into(),
            path: "jobs/x.js".into(),
        }),
        2_000,
    );
    store.create_job(a, &inline).await.unwrap();
    store.create_job(a, &git).await.unwrap();
    store
        .create_job(b, &new_job(JobSource::Script("b".into()), 3_000))
        .await
        .unwrap();

    let got = store.job(inline.id).await.unwrap().unwrap();
    assert_eq!(got.owner_id, a);
    assert_eq!(got.job, inline);
    let mine = store.jobs_of(a, 100).await.unwrap();
    assert_eq!(mine, vec![git.clone(), inline.clone()], "newest first");
    assert_eq!(store.jobs_count(a).await.unwrap(), 2);
    assert_eq!(store.jobs_count(b).await.unwrap(), 1);
    assert_eq!(store.jobs_of(a, 1).await.unwrap(), vec![git.clone()]);
    assert!(store.job(JobId::new()).await.unwrap().is_none());
    assert!(
        store.job_result(inline.id).await.unwrap().is_none(),
        "not finished"
    );

    assert!(store.delete_job(git.id).await.unwrap());
    assert!(!store.delete_job(git.id).await.unwrap());
    assert!(store.job(git.id).await.unwrap().is_none());
    assert_eq!(store.jobs_of(a, 100).await.unwrap(), vec![inline]);
    assert_eq!(store.jobs_count(a).await.unwrap(), 1);
}

async fn the_first_recorded_job_result_wins(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let job = new_job(JobSource::Script("s".into()), 1_000);
    store.create_job(a, &job).await.unwrap();

    let running = store.start_job(job.id, at(1_500)).await.unwrap().unwrap();
    assert_eq!(running.job.status, JobStatus::Running);
    assert_eq!(running.job.started_at, Some(at(1_500)));
    // A second worker (the first died) starts it again.
    let again = store.start_job(job.id, at(1_700)).await.unwrap().unwrap();
    assert_eq!(again.job.started_at, Some(at(1_700)));

    let first = finished(
        JobStatus::Succeeded,
        serde_json::json!({"n": 1}),
        1_700,
        1_900,
    );
    let done = store.finish_job(job.id, &first).await.unwrap().unwrap();
    assert_eq!(done.job.status, JobStatus::Succeeded);
    assert_eq!(done.job.finished_at, Some(at(1_900)));
    // The dead worker's (or a redelivery's) late outcome changes nothing.
    let late = finished(JobStatus::Failed, serde_json::Value::Null, 1_500, 2_500);
    assert!(store.finish_job(job.id, &late).await.unwrap().is_none());
    assert!(store.start_job(job.id, at(3_000)).await.unwrap().is_none());

    let result = store.job_result(job.id).await.unwrap().unwrap();
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.output, serde_json::json!({"n": 1}));
    assert_eq!(result.error, None);
    assert_eq!(result.elapsed_ms, 200);
    assert_eq!(result.queued_ms, 700);

    let failed = new_job(JobSource::Script("s".into()), 5_000);
    store.create_job(a, &failed).await.unwrap();
    let f = finished(JobStatus::TimedOut, serde_json::Value::Null, 5_000, 6_000);
    store.finish_job(failed.id, &f).await.unwrap().unwrap();
    let result = store.job_result(failed.id).await.unwrap().unwrap();
    assert_eq!(result.status, JobStatus::TimedOut);
    assert_eq!(result.output, serde_json::Value::Null);
    assert_eq!(result.error.unwrap().code, "thrown");

    // Results of a deleted job are gone with it, and nothing is recorded for it later.
    assert!(store.delete_job(job.id).await.unwrap());
    assert!(store.job_result(job.id).await.unwrap().is_none());
    assert!(store.finish_job(job.id, &first).await.unwrap().is_none());
}

async fn concurrent_job_results_record_exactly_one(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let job = new_job(JobSource::Script("s".into()), 1_000);
    store.create_job(a, &job).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.open().await;
        let id = job.id;
        tasks.push(tokio::spawn(async move {
            let f = finished(JobStatus::Succeeded, serde_json::json!(i), 1_000, 2_000 + i);
            store.finish_job(id, &f).await.unwrap().is_some()
        }));
    }
    let mut recorded = 0;
    for t in tasks {
        recorded += usize::from(t.await.unwrap());
    }
    assert_eq!(recorded, 1);
}

async fn observer_config_is_kept(db: &Fresh) {
    let store = db.open().await;
    assert_eq!(store.observer_config().await.unwrap(), None);
    store
        .set_observer_config(r#"{"max_workers":3}"#)
        .await
        .unwrap();
    store
        .set_observer_config(r#"{"max_workers":4}"#)
        .await
        .unwrap();
    assert_eq!(
        store.observer_config().await.unwrap().as_deref(),
        Some(r#"{"max_workers":4}"#)
    );
}

/// One `#[tokio::test]` per case, inside a backend's module (which defines `fresh`).
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(db) = fresh().await else { return };
                super::$case(&db).await;
            }
        )*
    };
}

/// The whole suite for one backend. `$fresh` is a future of `Option<Fresh>`: `None`
/// when the backend's server is not configured (it says so), and the tests pass
/// without running.
macro_rules! store_contract {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            async fn fresh() -> Option<super::Fresh> {
                $fresh.await
            }

            cases! {
                health,
                users_are_unique_and_found,
                external_identities_map_to_one_user_each,
                external_identity_is_linked_once_under_races,
                invites_make_one_account_each_until_they_expire,
                an_invite_makes_one_account_under_races,
                search_is_a_literal_prefix_in_byte_order,
                direct_is_one_per_pair,
                direct_is_created_once_under_races,
                groups_keep_joining_order_and_hand_over_ownership,
                conversations_of_lists_members_and_read_markers,
                contacts_share_a_conversation,
                contacts_may_leave_direct_conversations_out,
                append_numbers_each_conversation_from_one,
                append_stores_each_message_once,
                append_a_batch_larger_than_a_statement,
                append_to_an_unknown_conversation_stores_nothing,
                concurrent_appenders_keep_seq_contiguous,
                history_pages,
                read_marker_moves_forward_and_stops_at_last_seq,
                last_seqs_cover_every_conversation_of_a_user,
                directory_caches_members_until_invalidated,
                directory_entries_expire_so_a_missed_notice_is_wrong_for_a_while_only,
                groups_are_counted_by_owner,
                scripts_round_trip_and_belong_to_their_owner,
                script_runs_count_and_disable_after_failures_in_a_row,
                script_state_is_bounded_per_script,
                auto_reply_settings_and_window,
                automations_cache_follows_refresh,
                jobs_round_trip_and_belong_to_their_owner,
                the_first_recorded_job_result_wins,
                concurrent_job_results_record_exactly_one,
                observer_config_is_kept,
                uploads_complete_within_the_quota,
                concurrent_uploads_share_one_quota,
                messages_carry_attachments_and_share_them_with_members,
                expired_uploads_are_those_no_message_carries,
                replies_are_kept_and_paged_like_history,
                mentions_are_kept_and_counted_after_the_read_marker,
                edits_are_entries_and_change_the_current_body,
                deletes_erase_the_message_and_its_edits,
                reactions_are_one_per_user_and_emoji,
                changes_are_not_unread_messages,
                search_finds_word_prefixes_in_the_callers_conversations,
            }
        }
    };
}

store_contract!(sqlite, async { Some(super::Fresh::sqlite()) });
store_contract!(postgres, super::Fresh::postgres());

/// An upload of `owner`, begun at `at` and completed with `size` bytes.
async fn uploaded(
    store: &Arc<dyn Store>,
    owner: UserId,
    name: &str,
    size: i64,
    at: DateTime<Utc>,
) -> Attachment {
    let id = AttachmentId::new();
    store
        .begin_attachment(id, owner, name, "image/png", at)
        .await
        .unwrap();
    let sha = format!("{:064x}", size);
    assert!(
        store
            .finish_attachment(id, size, &sha, 1 << 40)
            .await
            .unwrap()
    );
    Attachment {
        attachment_id: id,
        name: name.into(),
        content_type: "image/png".into(),
        size,
        sha256: sha,
    }
}

async fn uploads_complete_within_the_quota(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let id = AttachmentId::new();
    store
        .begin_attachment(id, a, "a.bin", "application/octet-stream", sent_at())
        .await
        .unwrap();
    let pending = store.attachment(id).await.unwrap().unwrap();
    assert!(!pending.ready, "not ready until completed");
    assert_eq!(pending.owner_id, a);
    assert_eq!(
        store.attachment_bytes(a).await.unwrap(),
        0,
        "a pending upload counts nothing"
    );
    assert!(
        store.owned_attachments(a, &[id]).await.unwrap().is_empty(),
        "a pending upload cannot be sent"
    );
    assert!(store.finish_attachment(id, 600, "ab", 1000).await.unwrap());
    let done = store.attachment(id).await.unwrap().unwrap();
    assert!(done.ready);
    assert_eq!(
        (done.attachment.size, done.attachment.sha256.as_str()),
        (600, "ab")
    );
    assert!(
        !store.finish_attachment(id, 600, "ab", 1000).await.unwrap(),
        "completed once"
    );

    let second = AttachmentId::new();
    store
        .begin_attachment(second, a, "b", "x/y", sent_at())
        .await
        .unwrap();
    assert!(
        !store
            .finish_attachment(second, 401, "cd", 1000)
            .await
            .unwrap(),
        "600 + 401 > 1000"
    );
    assert!(!store.attachment(second).await.unwrap().unwrap().ready);
    assert!(
        store
            .finish_attachment(second, 400, "cd", 1000)
            .await
            .unwrap(),
        "exactly the quota"
    );
    assert_eq!(store.attachment_bytes(a).await.unwrap(), 1000);
    assert_eq!(
        store.attachment_bytes(b).await.unwrap(),
        0,
        "quotas are per user"
    );
    assert_eq!(store.attachment_totals().await.unwrap(), (2, 1000));

    let mine = store.owned_attachments(a, &[second, id]).await.unwrap();
    let ids: Vec<AttachmentId> = mine.iter().map(|x| x.attachment_id).collect();
    assert_eq!(ids, vec![second, id], "in the order asked");
    assert!(
        store.owned_attachments(b, &[id]).await.unwrap().is_empty(),
        "not b's"
    );
    assert!(store.remove_attachment(second).await.unwrap());
    assert!(store.attachment(second).await.unwrap().is_none());
    assert!(
        !store.remove_attachment(second).await.unwrap(),
        "gone already"
    );
    assert_eq!(store.attachment_bytes(a).await.unwrap(), 600);
}

async fn concurrent_uploads_share_one_quota(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let id = AttachmentId::new();
        store
            .begin_attachment(id, a, &format!("f{i}"), "x/y", sent_at())
            .await
            .unwrap();
        ids.push(id);
    }
    // Two nodes complete uploads at once; each fits alone, three fit together.
    let (one, two) = (db.open().await, db.open().await);
    let finishes = ids.iter().enumerate().map(|(i, id)| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let id = *id;
        async move { store.finish_attachment(id, 300, "ff", 1000).await.unwrap() }
    });
    // Polled together, so that they really race.
    let done = futures::future::join_all(finishes).await;
    assert_eq!(done.iter().filter(|d| **d).count(), 3, "{done:?}");
    assert_eq!(store.attachment_bytes(a).await.unwrap(), 900);
}

async fn messages_carry_attachments_and_share_them_with_members(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users::<3>(&store).await;
    let group = store.create_group(a, "g", &[b]).await.unwrap();
    let photo = uploaded(&store, a, "photo.png", 10, sent_at()).await;
    let doc = uploaded(&store, a, "doc.pdf", 20, sent_at()).await;
    let mut m = new_message(group.id, a, "with files");
    m.attachments = vec![doc.clone(), photo.clone()];
    let plain = new_message(group.id, a, "plain");
    let appended = store.append_messages(&[m.clone(), plain]).await.unwrap();
    let Appended::New(stored) = &appended[0] else {
        panic!("{appended:?}")
    };
    assert_eq!(
        stored.attachments,
        vec![doc.clone(), photo.clone()],
        "in the order sent"
    );
    let again = store.message(m.message_id).await.unwrap().unwrap();
    assert_eq!(
        again.attachments,
        vec![doc.clone(), photo.clone()],
        "read back"
    );
    let all = Page {
        after_seq: None,
        before_seq: None,
        limit: 10,
    };
    let history = store.messages(group.id, all).await.unwrap();
    assert_eq!(history[0].attachments, vec![doc.clone(), photo.clone()]);
    assert!(history[1].attachments.is_empty());
    // A retry is the stored message, and links nothing twice.
    let retry = store.append_messages(&[m]).await.unwrap();
    assert!(matches!(&retry[0], Appended::Existing(e) if e.attachments.len() == 2));

    assert!(
        store
            .shares_attachment(photo.attachment_id, b)
            .await
            .unwrap(),
        "a member"
    );
    assert!(
        !store
            .shares_attachment(photo.attachment_id, c)
            .await
            .unwrap(),
        "not a member"
    );
    store.add_member(group.id, c).await.unwrap();
    assert!(
        store
            .shares_attachment(photo.attachment_id, c)
            .await
            .unwrap(),
        "joined"
    );
    store.remove_member(group.id, b).await.unwrap();
    assert!(
        !store
            .shares_attachment(photo.attachment_id, b)
            .await
            .unwrap(),
        "left"
    );
    assert!(
        !store.remove_attachment(photo.attachment_id).await.unwrap(),
        "a file a message carries is not removed"
    );
}

async fn expired_uploads_are_those_no_message_carries(db: &Fresh) {
    let store = db.open().await;
    let [a] = users::<1>(&store).await;
    let other = user(&store, "other").await.id;
    let direct = store.direct(a, other).await.unwrap().0;
    let old = sent_at();
    let new = old + chrono::Duration::hours(48);
    let unsent = uploaded(&store, a, "unsent", 1, old).await;
    let sent = uploaded(&store, a, "sent", 1, old).await;
    let recent = uploaded(&store, a, "recent", 1, new).await;
    let cut_short = AttachmentId::new();
    store
        .begin_attachment(cut_short, a, "cut", "x/y", old)
        .await
        .unwrap();
    let mut m = new_message(direct.id, a, "m");
    m.attachments = vec![sent.clone()];
    store.append_messages(&[m]).await.unwrap();

    let cutoff = old + chrono::Duration::hours(24);
    let mut expired = store.expired_attachments(cutoff, 100).await.unwrap();
    expired.sort();
    let mut want = vec![unsent.attachment_id, cut_short];
    want.sort();
    assert_eq!(
        expired, want,
        "sent {:?} and recent {:?} stay",
        sent.attachment_id, recent.attachment_id
    );
    assert_eq!(
        store.expired_attachments(cutoff, 1).await.unwrap().len(),
        1,
        "at most limit"
    );
}

async fn replies_are_kept_and_paged_like_history(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let group = store.create_group(a, "g", &[b]).await.unwrap();
    let original = new_message(group.id, a, "original");
    let other = new_message(group.id, a, "other");
    let mut batch = vec![original.clone(), other.clone()];
    for i in 0..5 {
        let mut reply = new_message(group.id, b, &format!("reply {i}"));
        reply.reply_to = Some(if i == 2 {
            other.message_id
        } else {
            original.message_id
        });
        batch.push(reply);
    }
    store.append_messages(&batch).await.unwrap();
    let page = |after_seq, before_seq, limit| Page {
        after_seq,
        before_seq,
        limit,
    };
    let seqs = |ms: Vec<Message>| ms.iter().map(|m| m.seq).collect::<Vec<_>>();
    let replies = store
        .replies(group.id, original.message_id, page(None, None, 10))
        .await
        .unwrap();
    assert_eq!(seqs(replies.clone()), vec![3, 4, 6, 7], "oldest first");
    assert!(
        replies
            .iter()
            .all(|m| m.reply_to == Some(original.message_id))
    );
    assert_eq!(
        seqs(
            store
                .replies(group.id, original.message_id, page(Some(3), None, 2))
                .await
                .unwrap()
        ),
        vec![4, 6],
        "after a seq"
    );
    assert_eq!(
        seqs(
            store
                .replies(group.id, original.message_id, page(None, Some(7), 2))
                .await
                .unwrap()
        ),
        vec![4, 6],
        "the last before a seq"
    );
    assert_eq!(
        seqs(
            store
                .replies(group.id, other.message_id, page(None, None, 10))
                .await
                .unwrap()
        ),
        vec![5]
    );
    let history = store
        .messages(group.id, page(None, None, 10))
        .await
        .unwrap();
    assert_eq!(
        seqs(history.clone()),
        vec![1, 2, 3, 4, 5, 6, 7],
        "history has them all"
    );
    assert_eq!(history[0].reply_to, None);
    assert_eq!(
        store
            .message(batch[4].message_id)
            .await
            .unwrap()
            .unwrap()
            .reply_to,
        Some(other.message_id)
    );
}

async fn mentions_are_kept_and_counted_after_the_read_marker(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users::<3>(&store).await;
    let group = store.create_group(a, "g", &[b, c]).await.unwrap();
    let direct = store.direct(a, b).await.unwrap().0;
    let mut batch = Vec::new();
    for (i, mentions) in [vec![b, c], vec![], vec![b], vec![c]]
        .into_iter()
        .enumerate()
    {
        let mut m = new_message(group.id, a, &format!("g{i}"));
        m.mentions = mentions;
        batch.push(m);
    }
    let mut in_direct = new_message(direct.id, a, "d");
    in_direct.mentions = vec![b];
    batch.push(in_direct);
    store.append_messages(&batch).await.unwrap();
    let stored = store.message(batch[0].message_id).await.unwrap().unwrap();
    assert_eq!(stored.mentions, vec![b, c], "in order");
    assert!(
        store
            .message(batch[1].message_id)
            .await
            .unwrap()
            .unwrap()
            .mentions
            .is_empty()
    );

    let mentions = |after: HashMap<ConversationId, AfterMarker>| -> Vec<(ConversationId, i64)> {
        sorted(
            after
                .into_iter()
                .filter(|(_, a)| a.mentions > 0)
                .map(|(c, a)| (c, a.mentions))
                .collect(),
        )
    };
    assert_eq!(
        mentions(store.after_marker(b).await.unwrap()),
        sorted(vec![(group.id, 2), (direct.id, 1)])
    );
    store.mark_read(group.id, b, 2).await.unwrap();
    let after: Vec<_> = mentions(store.after_marker(b).await.unwrap())
        .into_iter()
        .filter(|(id, _)| *id == group.id)
        .collect();
    assert_eq!(after, vec![(group.id, 1)], "only the mention after seq 2");
    store.mark_read(group.id, c, 4).await.unwrap();
    assert!(
        mentions(store.after_marker(c).await.unwrap()).is_empty(),
        "all read"
    );
    assert!(
        mentions(store.after_marker(a).await.unwrap()).is_empty(),
        "nobody named a"
    );

    let named = store
        .users_named(&["user1", "nobody", "user0"])
        .await
        .unwrap();
    let ids: Vec<UserId> = named.iter().map(|u| u.id).collect();
    assert_eq!(ids, vec![b, a], "those that exist, in the order asked");
}

/// A change by `sender` to `target`, keyed `key`.
fn change(
    conversation: ConversationId,
    sender: UserId,
    key: &str,
    kind: MessageKind,
    target: MessageId,
) -> NewMessage {
    NewMessage {
        kind,
        target_id: Some(target),
        ..NewMessage::text(sender, conversation, key, "", sent_at())
    }
}

fn edit(c: ConversationId, sender: UserId, key: &str, target: MessageId, body: &str) -> NewMessage {
    NewMessage {
        body: body.into(),
        ..change(c, sender, key, MessageKind::Edit, target)
    }
}

fn reaction(
    c: ConversationId,
    sender: UserId,
    key: &str,
    target: MessageId,
    emoji: &str,
    remove: bool,
) -> NewMessage {
    NewMessage {
        emoji: Some(emoji.into()),
        remove,
        ..change(c, sender, key, MessageKind::Reaction, target)
    }
}

async fn found(store: &Arc<dyn Store>, user: UserId, q: &str) -> Vec<String> {
    let query = SearchQuery {
        words: search_words(q),
        conversation: None,
        limit: 20,
    };
    store
        .search(user, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

async fn edits_are_entries_and_change_the_current_body(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let group = store.create_group(a, "g", &[b]).await.unwrap();
    let m = NewMessage::text(a, group.id, "m", "hello @user1 wrold", sent_at());
    let mut mentioning = m.clone();
    mentioning.mentions = vec![b];
    let later = sent_at() + chrono::Duration::seconds(5);
    let mut fix = edit(group.id, a, "e", m.message_id, "hello world");
    fix.sent_at = later;
    let out = store
        .append_messages(&[mentioning, fix.clone()])
        .await
        .unwrap();
    let entry = new(&out[1]);
    assert_eq!(
        (entry.seq, entry.kind, entry.target_id, entry.body.as_str()),
        (2, MessageKind::Edit, Some(m.message_id), "hello world")
    );
    let original = store.message(m.message_id).await.unwrap().unwrap();
    assert_eq!(original.body, "hello @user1 wrold", "entries are immutable");
    assert_eq!(original.edited_at, Some(entry.sent_at), "the edit's time");
    assert!(!original.deleted);
    assert_eq!(found(&store, b, "wor").await, vec!["hello world"]);
    assert!(found(&store, b, "wrold").await.is_empty(), "the old body");
    assert_eq!(
        store.after_marker(b).await.unwrap()[&group.id].mentions,
        0,
        "the edit names nobody"
    );
    let retry = store.append_messages(&[fix]).await.unwrap();
    assert_eq!(existing(&retry[0]).seq, 2, "a retried edit is stored once");

    let by_b = NewMessage::text(b, group.id, "b", "b's", sent_at());
    let store_b = store.append_messages(&[by_b]).await.unwrap();
    assert_eq!(new(&store_b[0]).seq, 3);
    let elsewhere = store.direct(a, b).await.unwrap().0;
    let out = store
        .append_messages(&[
            edit(elsewhere.id, a, "x", m.message_id, "wrong conversation"),
            edit(
                group.id,
                a,
                "y",
                MessageId(uuid::Uuid::from_u128(1)),
                "no message",
            ),
            edit(
                group.id,
                a,
                "z",
                entry.message_id,
                "an edit is not a message",
            ),
        ])
        .await
        .unwrap();
    assert!(
        out.iter().all(|a| matches!(a, Appended::TargetGone)),
        "{out:?}"
    );
    assert_eq!(
        store
            .conversation(group.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        3
    );
}

async fn deletes_erase_the_message_and_its_edits(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let group = store.create_group(a, "g", &[b]).await.unwrap();
    let photo = uploaded(&store, a, "photo.png", 10, sent_at()).await;
    let mut m = NewMessage::text(a, group.id, "m", "secret plan", sent_at());
    m.attachments = vec![photo.clone()];
    m.mentions = vec![b];
    let e = edit(group.id, a, "e", m.message_id, "secret plan v2");
    let d = change(group.id, a, "d", MessageKind::Delete, m.message_id);
    store
        .append_messages(&[m.clone(), e.clone()])
        .await
        .unwrap();
    assert_eq!(found(&store, b, "secret").await.len(), 1);
    let out = store
        .append_messages(std::slice::from_ref(&d))
        .await
        .unwrap();
    assert_eq!(
        (new(&out[0]).seq, new(&out[0]).kind),
        (3, MessageKind::Delete)
    );

    let gone = store.message(m.message_id).await.unwrap().unwrap();
    assert!(gone.deleted);
    assert_eq!((gone.body.as_str(), gone.attachments.len()), ("", 0));
    assert!(gone.mentions.is_empty());
    let edit_row = store.message(e.message_id).await.unwrap().unwrap();
    assert_eq!(edit_row.body, "", "the edit's body is erased too");
    let history = store
        .messages(
            group.id,
            Page {
                after_seq: None,
                before_seq: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        history.iter().all(|h| !h.body.contains("secret")),
        "{history:?}"
    );
    assert!(found(&store, b, "secret").await.is_empty());
    assert_eq!(
        store
            .after_marker(b)
            .await
            .unwrap()
            .get(&group.id)
            .map_or(0, |a| a.mentions),
        0,
        "a deleted message mentions nobody"
    );
    let cutoff = sent_at() + chrono::Duration::hours(24);
    assert_eq!(
        store.expired_attachments(cutoff, 10).await.unwrap(),
        vec![photo.attachment_id],
        "no message carries the photo now: the sweep frees it"
    );

    let out = store
        .append_messages(&[
            change(group.id, b, "again", MessageKind::Delete, m.message_id),
            edit(group.id, a, "late", m.message_id, "back"),
            reaction(group.id, b, "r", m.message_id, "👍", false),
        ])
        .await
        .unwrap();
    assert!(
        out.iter().all(|a| matches!(a, Appended::TargetGone)),
        "a deleted message takes no more changes: {out:?}"
    );
    let retry = store.append_messages(&[d]).await.unwrap();
    assert_eq!(
        existing(&retry[0]).seq,
        3,
        "a retried delete is stored once"
    );
}

async fn reactions_are_one_per_user_and_emoji(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let direct = store.direct(a, b).await.unwrap().0;
    let m = NewMessage::text(a, direct.id, "m", "lunch?", sent_at());
    let t = m.message_id;
    let out = store
        .append_messages(&[
            m,
            reaction(direct.id, b, "1", t, "👍", false),
            reaction(direct.id, b, "2", t, "👍", false),
            reaction(direct.id, a, "3", t, "👍", false),
            reaction(direct.id, b, "4", t, "🎉", true),
        ])
        .await
        .unwrap();
    assert!(matches!(out[2], Appended::Unchanged), "{:?}", out[2]);
    assert!(matches!(out[4], Appended::Unchanged), "{:?}", out[4]);
    let r = new(&out[1]);
    assert_eq!(
        (
            r.kind,
            r.target_id,
            r.emoji.as_deref(),
            r.remove,
            r.body.as_str()
        ),
        (MessageKind::Reaction, Some(t), Some("👍"), false, "")
    );
    assert!(store.reacted(t, b, "👍").await.unwrap());
    assert!(store.reacted(t, a, "👍").await.unwrap());
    assert!(!store.reacted(t, b, "🎉").await.unwrap());
    let out = store
        .append_messages(&[reaction(direct.id, b, "5", t, "👍", true)])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 4);
    assert!(!store.reacted(t, b, "👍").await.unwrap());
    assert!(store.reacted(t, a, "👍").await.unwrap(), "a's stays");
}

async fn changes_are_not_unread_messages(db: &Fresh) {
    let store = db.open().await;
    let [a, b] = users::<2>(&store).await;
    let direct = store.direct(a, b).await.unwrap().0;
    let one = NewMessage::text(a, direct.id, "1", "one", sent_at());
    let two = NewMessage::text(a, direct.id, "2", "two", sent_at());
    let three = NewMessage::text(a, direct.id, "3", "three", sent_at());
    store
        .append_messages(&[
            one.clone(),
            two.clone(),
            three.clone(),
            edit(direct.id, a, "e", one.message_id, "one!"),
            reaction(direct.id, b, "r", two.message_id, "👍", false),
            change(direct.id, a, "d", MessageKind::Delete, three.message_id),
        ])
        .await
        .unwrap();
    let unread = |store: Arc<dyn Store>| async move {
        let after = store.after_marker(b).await.unwrap();
        let (record, read) = store
            .conversations_of(b)
            .await
            .unwrap()
            .into_iter()
            .find(|(c, _)| c.id == direct.id)
            .unwrap();
        let after = after.get(&record.id).copied().unwrap_or_default();
        (record.last_seq, record.view(read, after).unread)
    };
    assert_eq!(
        unread(store.clone()).await,
        (6, 2),
        "six entries; of the messages, one was deleted"
    );
    store.mark_read(direct.id, b, 2).await.unwrap();
    assert_eq!(unread(store.clone()).await, (6, 0), "the third was deleted");
}

async fn search_finds_word_prefixes_in_the_callers_conversations(db: &Fresh) {
    let store = db.open().await;
    let [a, b, c] = users::<3>(&store).await;
    let ab = store.direct(a, b).await.unwrap().0;
    let group = store.create_group(a, "g", &[b, c]).await.unwrap();
    let elsewhere = store.direct(a, c).await.unwrap().0;
    let at = |s: i64| sent_at() + chrono::Duration::seconds(s);
    let mut batch = vec![
        NewMessage::text(a, ab.id, "1", "Le Café de la Gare", at(1)),
        NewMessage::text(b, group.id, "2", "café au lait, s'il vous plaît", at(2)),
        NewMessage::text(a, elsewhere.id, "3", "cafe for c only", at(3)),
        NewMessage::text(c, group.id, "4", "CAFÉTÉRIA closed", at(4)),
        NewMessage::text(a, ab.id, "5", "nothing to see", at(5)),
    ];
    batch.push(reaction(ab.id, b, "r", batch[0].message_id, "☕", false));
    store.append_messages(&batch).await.unwrap();

    assert_eq!(
        found(&store, b, "cafe").await,
        vec![
            "CAFÉTÉRIA closed",
            "café au lait, s'il vous plaît",
            "Le Café de la Gare"
        ],
        "accents and case aside, word prefixes, newest first, b's conversations only"
    );
    assert_eq!(
        found(&store, b, "caf gare").await,
        vec!["Le Café de la Gare"]
    );
    assert!(found(&store, b, "caf zebra").await.is_empty(), "every word");
    assert_eq!(found(&store, c, "CAFE").await.len(), 3);
    assert_eq!(
        found(&store, b, "plait").await,
        vec!["café au lait, s'il vous plaît"]
    );
    assert!(
        found(&store, b, "fe").await.is_empty(),
        "prefixes, not infixes"
    );
    assert!(
        found(&store, b, "NEAR AND OR").await.is_empty(),
        "operators are words"
    );

    let one = SearchQuery {
        words: search_words("cafe"),
        conversation: Some(ab.id),
        limit: 20,
    };
    let in_ab = store.search(b, &one).await.unwrap();
    assert_eq!(in_ab.len(), 1);
    assert_eq!(
        (in_ab[0].kind, in_ab[0].conversation_id, in_ab[0].seq),
        (MessageKind::Text, ab.id, 1)
    );
    let first = SearchQuery {
        words: search_words("cafe"),
        conversation: None,
        limit: 1,
    };
    assert_eq!(store.search(b, &first).await.unwrap().len(), 1, "limit");
}
