//! Cluster scenarios: delivery across nodes, attachments written through one node and
//! read through another, and losing a gateway, a stage instance or the broker without
//! losing or duplicating a message.

use crate::harness::{Backends, Broker, Cluster};
use crate::helpers::{Api, PATIENCE, TestUser, WsClient, hex_sha256};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends until the message comes back as stored, retrying with the same key: what a
/// client does when the server may lose what it had only accepted.
async fn send_until_stored(ws: &mut WsClient, conversation: &str, key: &str, body: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        ws.send(json!({ "type": "send", "client_msg_id": key, "conversation_id": conversation, "body": body }))
            .await;
        let attempt = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < attempt {
            let Ok(frame) = tokio::time::timeout_at(attempt, ws.next()).await else {
                break;
            };
            if frame["type"] == "message" && frame["message"]["client_msg_id"] == key {
                return frame["message"].clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} was never stored"
        );
    }
}

#[tokio::test]
async fn users_on_different_gateways_talk_in_order() {
    let Some(backends) = Backends::from_env() else {
        return;
    };
    let cluster = Cluster::new(backends).await;
    let (n1, n2) = (cluster.start("n1", "").await, cluster.start("n2", "").await);
    let (api1, api2) = (n1.api(), n2.api());
    let ada = api1.register("ada").await;
    let bob = api2.register("bob").await;
    let carol = api1.register("carol").await;
    let direct = api1.direct(&ada, &bob).await;
    let group = api2.group(&bob, &[&ada, &carol]).await;

    let mut ada_ws = n1.ws(&ada).await;
    let mut bob_ws = n2.ws(&bob).await;
    let mut carol_n1 = n1.ws(&carol).await;
    let mut carol_n2 = n2.ws(&carol).await;
    const N: usize = 40;
    for i in 0..N {
        ada_ws.send(json!({ "type": "send", "client_msg_id": format!("d{i}"), "conversation_id": direct, "body": format!("direct {i}") })).await;
        bob_ws.send(json!({ "type": "send", "client_msg_id": format!("g{i}"), "conversation_id": group, "body": format!("group {i}") })).await;
    }
    let expected_direct: Vec<String> = (0..N).map(|i| format!("direct {i}")).collect();
    let expected_group: Vec<String> = (0..N).map(|i| format!("group {i}")).collect();
    let all: Vec<i64> = (1..=N as i64).collect();
    for ws in [&mut ada_ws, &mut bob_ws] {
        let got = ws.messages(2 * N).await;
        let (d, g): (Vec<Value>, Vec<Value>) = got
            .into_iter()
            .partition(|m| m["conversation_id"] == direct.as_str());
        assert_eq!(
            (bodies(&d), seqs(&d)),
            (expected_direct.clone(), all.clone())
        );
        assert_eq!(
            (bodies(&g), seqs(&g)),
            (expected_group.clone(), all.clone())
        );
    }
    for ws in [&mut carol_n1, &mut carol_n2] {
        let got = ws.messages(N).await;
        assert_eq!(
            (bodies(&got), seqs(&got)),
            (expected_group.clone(), all.clone()),
            "both of carol's sessions, on both nodes"
        );
    }
    assert_eq!(bodies(&api2.history(&ada, &direct).await), expected_direct);
}

#[tokio::test]
async fn a_killed_gateway_loses_nothing_its_clients_sent() {
    let Some(backends) = Backends::from_env() else {
        return;
    };
    let cluster = Cluster::new(backends).await;
    let (n1, n2) = (cluster.start("n1", "").await, cluster.start("n2", "").await);
    let api2 = n2.api();
    let ada = api2.register("ada").await;
    let bob = api2.register("bob").await;
    let conv = api2.direct(&ada, &bob).await;
    let mut bob_ws = n2.ws(&bob).await;
    let mut ada_ws = n1.ws(&ada).await;
    const N: usize = 60;
    let mut confirmed = HashSet::new();
    for i in 0..N / 2 {
        ada_ws.send(json!({ "type": "send", "client_msg_id": format!("k{i}"), "conversation_id": conv, "body": format!("m{i}") })).await;
    }
    for m in ada_ws.messages(N / 4).await {
        confirmed.insert(m["client_msg_id"].as_str().unwrap().to_owned());
    }
    // Mid-stream: some sends are stored, some only accepted, some in flight.
    n1.kill().await;
    drop(ada_ws);

    let mut ada_ws = n2.ws(&ada).await;
    let last_seen = confirmed.len() as i64;
    ada_ws
        .send(json!({ "type": "sync", "since": { conv.clone(): last_seen } }))
        .await;
    loop {
        let frame = ada_ws.next().await;
        match frame["type"].as_str().unwrap() {
            "message" => {
                confirmed.insert(
                    frame["message"]["client_msg_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            "synced" => break,
            _ => {}
        }
    }
    for i in 0..N {
        let key = format!("k{i}");
        if !confirmed.contains(&key) {
            send_until_stored(&mut ada_ws, &conv, &key, &format!("m{i}")).await;
        }
    }
    let stored = api2.history(&bob, &conv).await;
    assert_eq!(seqs(&stored), (1..=N as i64).collect::<Vec<_>>(), "gapless");
    let mut keys: Vec<String> = stored
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), N, "each message stored once");
    let live = bob_ws.messages(N).await;
    assert_eq!(
        live, stored,
        "bob, on the surviving node, saw every message once, in order"
    );
}

#[tokio::test]
async fn a_killed_stage_instance_hands_over_with_seq_gapless() {
    let Some(backends) = Backends::from_env() else {
        return;
    };
    let cluster = Cluster::new(backends).await;
    let gateway = cluster.start("gw", "gateway").await;
    let stages = "automate-out,store,automate-in,route";
    let mut s1 = Some(cluster.start("s1", stages).await);
    let _s2 = cluster.start("s2", stages).await;
    let api = gateway.api();
    let ada = api.register("ada").await;
    let mut peers: Vec<TestUser> = Vec::new();
    let mut convs = Vec::new();
    for i in 0..4 {
        let peer = api.register(&format!("peer{i}")).await;
        convs.push(api.direct(&ada, &peer).await);
        peers.push(peer);
    }
    let mut ws = gateway.ws(&ada).await;
    const EACH: usize = 30;
    for i in 0..EACH {
        for (c, conv) in convs.iter().enumerate() {
            ws.send(json!({ "type": "send", "client_msg_id": format!("c{c}-{i}"), "conversation_id": conv, "body": format!("{i}") })).await;
        }
        if i == EACH / 3 {
            ws.messages(4).await;
            s1.take().expect("killed once").kill().await;
        }
    }
    let got = ws.messages(4 * EACH - 4).await;
    assert_eq!(got.len(), 4 * EACH - 4);
    for (conv, peer) in convs.iter().zip(&peers) {
        let stored = api.history(peer, conv).await;
        assert_eq!(
            seqs(&stored),
            (1..=EACH as i64).collect::<Vec<_>>(),
            "gapless after the handover"
        );
        assert_eq!(
            bodies(&stored),
            (0..EACH).map(|i| i.to_string()).collect::<Vec<_>>(),
            "each once, in order"
        );
    }
}

#[tokio::test]
async fn a_broker_outage_loses_and_duplicates_nothing_for_retrying_clients() {
    let Some(backends) = Backends::from_env() else {
        return;
    };
    let Some(broker) = Broker::start().await else {
        return;
    };
    let cluster = Cluster::new(backends).await;
    let n1 = cluster.start_with_log("n1", "", &broker.url).await;
    let n2 = cluster.start_with_log("n2", "", &broker.url).await;
    let api = n1.api();
    let ada = api.register("ada").await;
    let bob = api.register("bob").await;
    let conv = api.direct(&ada, &bob).await;
    let mut ada_ws = n1.ws(&ada).await;
    const N: usize = 20;
    for i in 0..N {
        send_until_stored(&mut ada_ws, &conv, &format!("k{i}"), &format!("m{i}")).await;
    }
    // The outage: sends go out while the broker does not answer; some are accepted
    // (queued by the producer), some fail, none is confirmed as stored.
    broker.freeze();
    for i in N..N + 5 {
        ada_ws.send(json!({ "type": "send", "client_msg_id": format!("k{i}"), "conversation_id": conv, "body": format!("m{i}") })).await;
    }
    // The outage's length is the scenario, not a synchronisation: long enough for
    // consumer sessions to time out (6 s) and groups to rebalance afterwards.
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker.thaw();
    for i in N..2 * N {
        send_until_stored(&mut ada_ws, &conv, &format!("k{i}"), &format!("m{i}")).await;
    }
    let stored = Api::new(n2.addr).history(&bob, &conv).await;
    assert_eq!(seqs(&stored), (1..=2 * N as i64).collect::<Vec<_>>());
    assert_eq!(
        bodies(&stored),
        (0..2 * N).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let mut bob_ws = n2.ws(&bob).await;
    bob_ws
        .send(json!({ "type": "sync", "since": { conv.clone(): 0 } }))
        .await;
    assert_eq!(bob_ws.messages(2 * N).await, stored);
}

#[tokio::test]
async fn an_attachment_uploaded_on_one_node_is_downloaded_from_another() {
    let Some(backends) = Backends::from_env() else {
        return;
    };
    if backends.s3.is_none() {
        // Nodes with a directory each cannot read each other's files: nothing to test.
        eprintln!("CHORUS_TEST_S3 unset: skipped");
        return;
    }
    let cluster = Cluster::new(backends).await;
    let (n1, n2) = (cluster.start("n1", "").await, cluster.start("n2", "").await);
    let (api1, api2) = (n1.api(), n2.api());
    let ada = api1.register("ada").await;
    let bob = api2.register("bob").await;
    let direct = api1.direct(&ada, &bob).await;
    let mut bob_ws = n2.ws(&bob).await;
    let mut ada_ws = n1.ws(&ada).await;

    // More than one 5 MiB part: written to the bucket as a multipart upload.
    let data: Vec<u8> = (0..6 * 1024 * 1024 + 1234)
        .map(|i: usize| (i * 7 % 251) as u8)
        .collect();
    let mut picture = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(1000, 500, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    })
    .write_to(&mut picture, image::ImageFormat::Png)
    .unwrap();
    let picture = picture.into_inner();
    let blob = api1
        .uploaded_as(&ada, "data.bin", "application/octet-stream", data.clone())
        .await;
    assert_eq!(blob["sha256"], hex_sha256(&data));
    let photo = api1
        .uploaded_as(&ada, "photo.png", "image/png", picture.clone())
        .await;

    ada_ws
        .send(json!({
            "type": "send", "client_msg_id": "files", "conversation_id": direct, "body": "",
            "attachments": [blob["attachment_id"], photo["attachment_id"]],
        }))
        .await;
    ada_ws.expect("accepted").await;
    let got = bob_ws.expect("message").await;
    assert_eq!(got["message"]["client_msg_id"], "files");
    assert_eq!(got["message"]["attachments"], json!([blob, photo]));

    // Bob reads through n2 what ada wrote through n1: the bytes are in the bucket.
    let path = format!(
        "/api/v1/attachments/{}",
        blob["attachment_id"].as_str().unwrap()
    );
    let whole = api2.fetch(&bob, &path, &[]).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.headers()["etag"],
        format!("\"{}\"", hex_sha256(&data)).as_str()
    );
    assert_eq!(
        whole.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert!(whole.bytes().await.unwrap() == data, "the same bytes");
    // A range across the boundary of the first part.
    let (start, end) = (5 * 1024 * 1024 - 10, 5 * 1024 * 1024 + 9);
    let part = api2
        .fetch(&bob, &path, &[("range", &format!("bytes={start}-{end}"))])
        .await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes {start}-{end}/{}", data.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), data[start..=end]);

    // The thumbnail n2 made is kept in the bucket, beside the picture: n1 serves the
    // same one.
    let thumb_path = format!(
        "/api/v1/attachments/{}/thumbnail",
        photo["attachment_id"].as_str().unwrap()
    );
    let thumb = api2.fetch(&bob, &thumb_path, &[]).await;
    assert_eq!(thumb.status(), 200);
    let thumb = thumb.bytes().await.unwrap();
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 160));
    let from_n1 = api1.fetch(&ada, &thumb_path, &[]).await;
    assert_eq!(from_n1.status(), 200);
    assert_eq!(from_n1.bytes().await.unwrap(), thumb, "the same thumbnail");
}
