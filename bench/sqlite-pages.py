#!/usr/bin/env python3
"""Pages written to SQLite's write-ahead log per message, for the store's insert pattern
and for other layouts of the messages table.

Usage: bench/sqlite-pages.py [MESSAGES] [BATCH]

Inserts MESSAGES messages (default 100000) over 100 conversations, BATCH (default 8)
per transaction with one counter update, with the pragmas of chorus's writer
connection, and prints the log frames (4 KiB pages) written per message and the
database's size per message for each layout:

- text:          the store's table (UUIDs as text, primary key (conversation_id, seq)
                 WITHOUT ROWID, a unique index on message_id);
- blob:          the same with UUIDs as 16-byte blobs;
- text-rowid:    a rowid table (appended in insertion order) with unique indexes on
                 (conversation_id, seq) and message_id;
- blob-rowid:    the same with blobs;
- text-noidx, text-rowid-noidx: without the message_id index (no idempotency: for
                 what that index costs).
"""
import os
import random
import sqlite3
import sys
import tempfile
import uuid

CONVERSATIONS = 100
LAYOUTS = ["text", "blob", "text-rowid", "blob-rowid", "text-noidx", "text-rowid-noidx"]


def run(layout, messages, batch, directory):
    path = os.path.join(directory, f"{layout}.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")
    db.execute("pragma wal_autocheckpoint=0")
    db.execute("pragma cache_size=-65536")
    blob = layout.startswith("blob")
    kind = "BLOB" if blob else "TEXT"
    unique = "" if layout.endswith("noidx") else "UNIQUE"
    db.execute(f"create table conversations (id {kind} primary key, last_seq integer not null)")
    columns = f"""conversation_id {kind} not null, seq integer not null,
        message_id {kind} not null {unique}, client_msg_id text not null,
        sender_id {kind} not null, body text not null, sent_at integer not null,
        origin text not null"""
    if "rowid" in layout:
        db.execute(f"create table messages ({columns}, unique (conversation_id, seq))")
    else:
        db.execute(f"create table messages ({columns}, primary key (conversation_id, seq)) without rowid")

    def as_id(u):
        return u.bytes if blob else str(u)

    conversations = [uuid.uuid4() for _ in range(CONVERSATIONS)]
    senders = {c: (uuid.uuid4(), uuid.uuid4()) for c in conversations}
    last = dict.fromkeys(conversations, 0)
    for c in conversations:
        db.execute("insert into conversations values (?, 0)", (as_id(c),))

    def log_frames():
        return db.execute("pragma wal_checkpoint(PASSIVE)").fetchone()[1]

    frames = -log_frames()
    rng = random.Random(1)
    for start in range(0, messages, batch):
        db.execute("begin immediate")
        touched = set()
        for j in range(batch):
            c = rng.choice(conversations)
            last[c] += 1
            touched.add(c)
            db.execute(
                "insert into messages values (?, ?, ?, ?, ?, ?, ?, ?)",
                (as_id(c), last[c], as_id(uuid.uuid4()), str(uuid.uuid4()),
                 as_id(senders[c][j % 2]), "x" * 100, 1_700_000_000_000 + start, "user"),
            )
        for c in touched:
            db.execute("update conversations set last_seq = ? where id = ?", (last[c], as_id(c)))
        db.execute("commit")
        if (start // batch) % 2000 == 1999:
            frames += log_frames()
            db.execute("pragma wal_checkpoint(TRUNCATE)")
            frames -= log_frames()
    frames += log_frames()
    db.execute("pragma wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    db.close()
    return frames / messages, size / messages


def main():
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    print(f"{messages} messages, {batch} per transaction, {CONVERSATIONS} conversations")
    print(f"{'layout':<18} {'log pages/message':>18} {'bytes/message':>14}")
    with tempfile.TemporaryDirectory() as directory:
        for layout in LAYOUTS:
            pages, size = run(layout, messages, batch, directory)
            print(f"{layout:<18} {pages:>18.2f} {size:>14.0f}")


if __name__ == "__main__":
    main()
