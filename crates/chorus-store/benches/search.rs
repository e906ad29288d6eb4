//! Search of 1,000,000 stored messages (protocol v1.1 §4), on SQLite and, when
//! `CHORUS_TEST_POSTGRES` names a server, on PostgreSQL: the time of
//! [`Store::search`] as the gateway calls it, p50/p95/p99/max over many searches.
//!
//! `cargo bench -p chorus-store --bench search` (figures in BENCHMARKS.md);
//! `MESSAGES=N` for another number of messages, `SEARCHES=N` for another number of
//! searches (default 2,000, after 100 to warm up), `SQLITE=0` for PostgreSQL alone,
//! `KEEP=1` to keep the databases for a look afterwards.
//!
//! The messages are stored through [`Store::append_messages`] in batches of 500, as
//! the store stage stores them, so the fill rate is the indexing path's too. 10,000
//! users; 5,000 direct conversations and 500 groups of 20; each message 6 to 16 words
//! drawn from a 20,000-word vocabulary with a Zipf-like skew (a few words are in a
//! large share of all messages, as "the" and "meeting" are), some with accents. The
//! searcher is a member of 40 conversations (under 1% of the messages). Searches mix
//! one common word, one rare word, two words, a three-letter prefix, and a search in
//! one conversation: a common word matches a large share of all messages, almost all in
//! conversations the searcher is not in, which is the hard case for a newest-first
//! search that must skip what the caller may not see.

use chorus_core::{ConversationId, UserId};
use chorus_store::postgres::PostgresStore;
use chorus_store::sqlite::SqliteStore;
use chorus_store::{NewMessage, SearchQuery, Store, search_words};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor, PgConnection};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 10_000;
const DIRECTS: usize = 5_000;
const GROUPS: usize = 500;
const GROUP_SIZE: usize = 20;
const VOCABULARY: usize = 20_000;
const BATCH: usize = 500;
const WARM_UP: usize = 100;
const KINDS: [&str; 5] = [
    "common word",
    "rare word",
    "two words",
    "3-letter prefix",
    "in one conversation",
];

#[tokio::main]
async fn main() {
    let messages = env("MESSAGES", 1_000_000);
    let searches = env("SEARCHES", 2_000);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&dir.path().join("bench.db"))
            .await
            .unwrap(),
    );
    // SQLITE=0 measures PostgreSQL alone.
    if std::env::var("SQLITE").as_deref() != Ok("0") {
        run(
            "SQLite (embedded)",
            sqlite.clone(),
            Some(sqlite),
            messages,
            searches,
        )
        .await;
    }
    // KEEP=1 leaves the SQLite database for a look at it afterwards.
    if std::env::var("KEEP").is_ok() {
        println!("the SQLite database is kept in {}", dir.keep().display());
    }
    let Ok(server) = std::env::var("CHORUS_TEST_POSTGRES") else {
        println!("CHORUS_TEST_POSTGRES is not set: PostgreSQL not measured");
        return;
    };
    let name = format!("chorus_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&server).await.unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let pg: Arc<dyn Store> = Arc::new(
        PostgresStore::connect(&with_database(&server, &name))
            .await
            .unwrap(),
    );
    run("PostgreSQL", pg.clone(), None, messages, searches).await;
    drop(pg);
    if std::env::var("KEEP").is_ok() {
        println!("the PostgreSQL database {name} is kept");
        return;
    }
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `server` with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let root = base.rsplit_once('/').map_or(base, |(root, _)| root);
    if query.is_empty() {
        format!("{root}/{name}")
    } else {
        format!("{root}/{name}?{query}")
    }
}

/// A made-up word of four letters or more; every seventh starts with an accent.
fn word(i: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnoprstuvwyz";
    let mut n = i + 7;
    let mut w = String::new();
    while w.len() < 4 || n > 0 {
        w.push(LETTERS[n % LETTERS.len()] as char);
        n /= LETTERS.len();
    }
    if i % 7 == 3 {
        w.replace_range(0..1, "é");
    }
    w
}

/// A word index skewed toward the first words (about Zipf with s = 1).
fn skewed(rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    ((VOCABULARY as f64).powf(u) as usize).saturating_sub(1)
}

/// The conversations, each with its members, and the searcher.
async fn conversations(
    store: &Arc<dyn Store>,
    rng: &mut StdRng,
) -> (Vec<(ConversationId, Vec<UserId>)>, UserId) {
    let mut users: Vec<UserId> = Vec::with_capacity(USERS);
    for i in 0..USERS {
        users.push(store.create_user(&format!("u{i}"), "x").await.unwrap().id);
    }
    let searcher = users[0];
    let mut out = Vec::new();
    for i in 0..DIRECTS {
        // The searcher is in the first 30 directs and the first 10 groups.
        let (a, b) = if i < 30 {
            (searcher, users[1 + i])
        } else {
            (
                users[rng.random_range(1..USERS)],
                users[rng.random_range(1..USERS)],
            )
        };
        if a != b {
            out.push((store.direct(a, b).await.unwrap().0.id, vec![a, b]));
        }
    }
    for g in 0..GROUPS {
        let owner = if g < 10 { searcher } else { users[1 + g] };
        let members: Vec<UserId> = (0..GROUP_SIZE - 1)
            .map(|_| users[rng.random_range(1..USERS)])
            .collect();
        let c = store.create_group(owner, "g", &members).await.unwrap();
        out.push((c.id, c.members));
    }
    (out, searcher)
}

/// Fills `store` and searches it; `indexed_apart`, the same SQLite store, is waited for
/// until its search index (a file of its own, written after the messages) has caught
/// up with the fill.
async fn run(
    label: &str,
    store: Arc<dyn Store>,
    indexed_apart: Option<Arc<SqliteStore>>,
    messages: usize,
    searches: usize,
) {
    let mut rng = StdRng::seed_from_u64(7);
    let words: Vec<String> = (0..VOCABULARY).map(word).collect();
    let (conversations, searcher) = conversations(&store, &mut rng).await;
    let started = Instant::now();
    let mut stored = 0;
    while stored < messages {
        let n = BATCH.min(messages - stored);
        let batch: Vec<NewMessage> = (0..n)
            .map(|i| {
                let (conversation, members) =
                    &conversations[rng.random_range(0..conversations.len())];
                let sender = members[rng.random_range(0..members.len())];
                let len = rng.random_range(6..=16);
                let body: Vec<&str> = (0..len).map(|_| words[skewed(&mut rng)].as_str()).collect();
                let key = format!("m{}", stored + i);
                NewMessage::text(sender, *conversation, &key, &body.join(" "), Utc::now())
            })
            .collect();
        store.append_messages(&batch).await.unwrap();
        stored += n;
    }
    let fill = started.elapsed();
    let mine: Vec<ConversationId> = conversations
        .iter()
        .filter(|(_, m)| m.contains(&searcher))
        .map(|(c, _)| *c)
        .collect();
    println!(
        "{label}: {messages} messages stored in {:.1} s ({:.0} msg/s, batches of {BATCH}); \
         the searcher is in {} of {} conversations",
        fill.as_secs_f64(),
        messages as f64 / fill.as_secs_f64(),
        mine.len(),
        conversations.len()
    );
    if let Some(sqlite) = indexed_apart {
        let waited = Instant::now();
        sqlite.search_caught_up().await.unwrap();
        println!(
            "{label}: the search index caught up {:.1} s after the last message was stored",
            waited.elapsed().as_secs_f64()
        );
    }

    let mut times: Vec<(&str, Duration)> = Vec::with_capacity(searches);
    let mut results = 0;
    for i in 0..searches + WARM_UP {
        let kind = KINDS[i % KINDS.len()];
        let (text, conversation) = match i % KINDS.len() {
            0 => (words[rng.random_range(0..10)].clone(), None),
            1 => (words[rng.random_range(5_000..VOCABULARY)].clone(), None),
            2 => (
                format!("{} {}", words[skewed(&mut rng)], words[skewed(&mut rng)]),
                None,
            ),
            3 => (
                words[rng.random_range(0..VOCABULARY)]
                    .chars()
                    .take(3)
                    .collect(),
                None,
            ),
            _ => (
                words[skewed(&mut rng)].clone(),
                Some(mine[rng.random_range(0..mine.len())]),
            ),
        };
        let query = SearchQuery {
            words: search_words(&text),
            conversation,
            limit: 20,
        };
        let t = Instant::now();
        let found = store.search(searcher, &query).await.unwrap();
        let took = t.elapsed();
        if i >= WARM_UP {
            results += found.len();
            times.push((kind, took));
        }
    }
    let mut all: Vec<Duration> = times.iter().map(|(_, d)| *d).collect();
    println!(
        "{label}: {searches} searches by one user (limit 20, {:.1} results on average): {}",
        results as f64 / searches as f64,
        summary(&mut all)
    );
    for kind in KINDS {
        let mut of_kind: Vec<Duration> = times
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .collect();
        println!("  {kind:>20}: {}", summary(&mut of_kind));
    }
}

fn summary(times: &mut [Duration]) -> String {
    times.sort_unstable();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.50)),
        ms(at(0.95)),
        ms(at(0.99)),
        ms(times[times.len() - 1])
    )
}
