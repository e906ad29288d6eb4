//! Attachments (protocol v1.1 §3): upload, send, download whole and ranged, thumbnails,
//! who may read what, every limit, and what is left behind (nothing) when an upload
//! fails or is never sent.

use crate::helpers::{TestApp, TestUser, hex_sha256, poll_until};
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// The objects the embedded store holds under `prefix` (`attachments`, `thumbnails`).
fn objects(app: &TestApp, prefix: &str) -> Vec<PathBuf> {
    let dir = app.data_dir.path().join("files").join(prefix);
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([30, 120, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn an_upload_is_stored_whole_and_read_back_whole_or_in_ranges() {
    let app = TestApp::spawn().await;
    let a = app.register("a").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (status, att) = app.upload(&a, "Grüße \"1\".bin", None, data.clone()).await;
    assert_eq!(status, 201, "{att}");
    assert_eq!(att["name"], "Grüße \"1\".bin");
    assert_eq!(
        att["content_type"], "application/octet-stream",
        "none declared"
    );
    assert_eq!(att["size"], 100_000);
    assert_eq!(att["sha256"], hex_sha256(&data));
    let path = format!(
        "/api/v1/attachments/{}",
        att["attachment_id"].as_str().unwrap()
    );

    let whole = app.fetch(&a, &path, &[]).await;
    assert_eq!(whole.status(), 200);
    let h = whole.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-length"], "100000");
    assert_eq!(h["etag"], format!("\"{}\"", hex_sha256(&data)));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"Gr__e _1_.bin\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%221%22.bin"
    );
    assert_eq!(whole.bytes().await.unwrap().to_vec(), data);

    let part = app.fetch(&a, &path, &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.headers()["content-length"], "10");
    assert_eq!(part.bytes().await.unwrap().to_vec(), data[10..20].to_vec());
    let tail = app.fetch(&a, &path, &[("range", "bytes=-5")]).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.bytes().await.unwrap().to_vec(),
        data[99_995..].to_vec()
    );
    let outside = app.fetch(&a, &path, &[("range", "bytes=100000-")]).await;
    assert_eq!(outside.status(), 416);
    assert_eq!(outside.headers()["content-range"], "bytes */100000");

    let etag = h["etag"].to_str().unwrap();
    let cached = app.fetch(&a, &path, &[("if-none-match", etag)]).await;
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());
    let changed = app
        .fetch(&a, &path, &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(changed.status(), 200);
}

#[tokio::test]
async fn active_content_is_never_served_to_run_in_the_page() {
    let app = TestApp::spawn().await;
    let a = app.register("a").await;
    for (name, ty, body) in [
        ("x.html", "text/html", "<script>alert(1)</script>"),
        (
            "x.svg",
            "image/svg+xml",
            "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        ),
    ] {
        let (status, att) = app.upload(&a, name, Some(ty), body.into()).await;
        assert_eq!(status, 201, "{att}");
        let path = format!(
            "/api/v1/attachments/{}",
            att["attachment_id"].as_str().unwrap()
        );
        let r = app.fetch(&a, &path, &[]).await;
        let h = r.headers();
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment;"),
            "{name}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox"),
            "{name}"
        );
        let thumb = app.fetch(&a, &format!("{path}/thumbnail"), &[]).await;
        assert_eq!(thumb.status(), 404, "{name} has no thumbnail");
    }
}

#[tokio::test]
async fn a_message_carries_its_attachments_to_every_member_and_no_one_else() {
    let app = TestApp::spawn().await;
    let (a, b, c) = (
        app.register("a").await,
        app.register("b").await,
        app.register("c").await,
    );
    let group = app.group(&a, &[&b]).await;
    let photo = app.uploaded(&a, "photo.png", png(4, 4)).await;
    let notes = app.uploaded(&a, "notes.txt", b"hello".to_vec()).await;
    let photo_path = format!(
        "/api/v1/attachments/{}",
        photo["attachment_id"].as_str().unwrap()
    );

    // Nobody but the uploader may read an upload no message carries.
    assert_eq!(app.fetch(&b, &photo_path, &[]).await.status(), 404);
    let mut bws = app.ws(&b).await;
    let mut aws = app.ws(&a).await;
    aws.send(json!({
        "type": "send", "client_msg_id": "m1", "conversation_id": group, "body": "",
        "attachments": [notes["attachment_id"], photo["attachment_id"]],
    }))
    .await;
    aws.expect("accepted").await;
    let live = bws.expect("message").await;
    assert_eq!(live["message"]["body"], "");
    assert_eq!(
        live["message"]["attachments"],
        json!([notes, photo]),
        "in the order sent"
    );
    let history = app.history(&b, &group).await;
    assert_eq!(history[0]["attachments"], json!([notes, photo]));

    let got = app.fetch(&b, &photo_path, &[]).await;
    assert_eq!(got.status(), 200, "a member reads it");
    assert_eq!(got.bytes().await.unwrap().to_vec(), png(4, 4));
    let outsider = app.fetch(&c, &photo_path, &[]).await;
    assert_eq!(
        outsider.status(),
        404,
        "not a member: as if it did not exist"
    );
    let body: Value = outsider.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        app.fetch(&c, &format!("{photo_path}/thumbnail"), &[])
            .await
            .status(),
        404
    );

    // A removed member loses access.
    let (status, _) = app
        .delete(
            &a.token,
            &format!("/api/v1/conversations/{group}/members/{}", b.id),
        )
        .await;
    assert_eq!(status, 204);
    poll_until("b keeps access after removal", || async {
        app.fetch(&b, &photo_path, &[]).await.status() == 404
    })
    .await;
}

#[tokio::test]
async fn sends_are_refused_for_attachments_that_are_not_the_senders() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let direct = app.direct(&a, &b).await;
    let bs = app.uploaded(&b, "b.txt", b"b".to_vec()).await;
    let mine = app.uploaded(&a, "a.txt", b"a".to_vec()).await;
    let mut ws = app.ws(&a).await;
    let send = |id: &str, body: &str, attachments: Value| json!({"type": "send", "client_msg_id": id, "conversation_id": direct, "body": body, "attachments": attachments});
    let cases = [
        (
            send("1", "x", json!([bs["attachment_id"]])),
            "not_found",
            "another user's upload",
        ),
        (
            send("2", "x", json!([uuid::Uuid::now_v7()])),
            "not_found",
            "an upload that does not exist",
        ),
        (
            send("3", "x", json!(vec![mine["attachment_id"].clone(); 11])),
            "bad_request",
            "more than ten",
        ),
        (
            send("4", "", json!([])),
            "bad_request",
            "an empty body without attachments",
        ),
    ];
    for (frame, code, why) in cases {
        ws.send(frame).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], code, "{why}: {error}");
    }
    // Over HTTP, the same rules and a send that is fine.
    let (status, body) = app
        .post(
            Some(&a.token),
            &format!("/api/v1/conversations/{direct}/messages"),
            json!({"client_msg_id": "h1", "body": "", "attachments": [bs["attachment_id"]]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app
        .post(
            Some(&a.token),
            &format!("/api/v1/conversations/{direct}/messages"),
            json!({"client_msg_id": "h2", "body": "", "attachments": [mine["attachment_id"]]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_for_seq(&a, &direct, 1).await;
    assert_eq!(
        app.history(&b, &direct).await[0]["attachments"],
        json!([mine])
    );
}

#[tokio::test]
async fn names_sizes_and_quotas_are_enforced_and_nothing_is_left_behind() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_attachment_bytes = 1000;
        c.limits.attachment_quota_bytes = 2500;
    })
    .await;
    let a = app.register("a").await;
    for bad in ["", "a/b", "a\\b", "a\u{1}b"] {
        let (status, body) = app.upload(&a, bad, None, b"x".to_vec()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad:?}"
        );
    }
    let (status, body) = app.upload(&a, &"n".repeat(256), None, b"x".to_vec()).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = app.upload(&a, "big", None, vec![0; 1001]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    assert!(objects(&app, "attachments").is_empty(), "nothing kept");

    app.uploaded(&a, "1", vec![1; 1000]).await;
    app.uploaded(&a, "2", vec![2; 1000]).await;
    let (status, body) = app.upload(&a, "3", None, vec![3; 501]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("quota"),
        "{body}"
    );
    app.uploaded(&a, "4", vec![4; 500]).await;
    let (status, body) = app.upload(&a, "5", None, vec![5; 1]).await;
    assert_eq!(status, 413, "the quota is full: {body}");
    assert_eq!(
        objects(&app, "attachments").len(),
        3,
        "only the stored ones"
    );
    let other = app.register("b").await;
    app.uploaded(&other, "b", vec![0; 1000]).await;
}

/// Sends the head of an upload declaring `declared` bytes, then `sent` bytes, then
/// goes away.
async fn cut_upload(app: &TestApp, user: &TestUser, declared: usize, sent: usize) {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/attachments?name=cut HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-length: {declared}\r\n\r\n",
        user.token
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![7; sent]).await.unwrap();
    tcp.flush().await.unwrap();
    drop(tcp);
}

#[tokio::test]
async fn an_upload_cut_short_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    let a = app.register("a").await;
    cut_upload(&app, &a, 1_000_000, 1_000).await;
    cut_upload(&app, &a, 12 * 1024 * 1024, 6 * 1024 * 1024).await;
    app.wait_for_counter("chorus_attachment_uploads_total", 1.0)
        .await;
    // Both rows go too: the quota counts nothing of them, and a full-size upload fits.
    poll_until("a cut-short upload left its bytes", || async {
        let files = app.data_dir.path().join("files");
        walk(&files).is_empty()
    })
    .await;
    let stored = app.uploaded(&a, "after", b"ok".to_vec()).await;
    assert_eq!(stored["size"], 2);
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test]
async fn pictures_get_thumbnails_made_once_and_bad_pictures_get_none() {
    let app = TestApp::spawn().await;
    let a = app.register("a").await;
    let big = app.uploaded(&a, "wide.png", png(1000, 500)).await;
    let path = format!(
        "/api/v1/attachments/{}/thumbnail",
        big["attachment_id"].as_str().unwrap()
    );
    let thumb = app.fetch(&a, &path, &[]).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    assert_eq!(thumb.headers()["x-content-type-options"], "nosniff");
    let etag = thumb.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = thumb.bytes().await.unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 160));
    assert_eq!(objects(&app, "thumbnails").len(), 1, "kept in the store");
    let again = app.fetch(&a, &path, &[]).await;
    assert_eq!(again.bytes().await.unwrap(), bytes, "the same thumbnail");
    assert_eq!(
        app.fetch(&a, &path, &[("if-none-match", &etag)])
            .await
            .status(),
        304
    );

    let mut broken = png(64, 64);
    broken.truncate(broken.len() / 2);
    let (_, bad) = app
        .upload(&a, "broken.png", Some("image/png"), broken)
        .await;
    let bad_path = format!(
        "/api/v1/attachments/{}/thumbnail",
        bad["attachment_id"].as_str().unwrap()
    );
    for _ in 0..2 {
        let r = app.fetch(&a, &bad_path, &[]).await;
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    let text = app.uploaded(&a, "t.txt", b"just text".to_vec()).await;
    let text_path = format!(
        "/api/v1/attachments/{}/thumbnail",
        text["attachment_id"].as_str().unwrap()
    );
    assert_eq!(app.fetch(&a, &text_path, &[]).await.status(), 404);
    assert_eq!(
        app.fetch(&a, &path, &[]).await.status(),
        200,
        "the server is still up"
    );
}

#[tokio::test]
async fn uploads_never_sent_are_removed_after_the_grace_period() {
    let app = TestApp::spawn_with(|c| {
        c.files.grace_secs = 1;
        c.files.sweep_secs = 1;
    })
    .await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let direct = app.direct(&a, &b).await;
    let unsent = app.uploaded(&a, "unsent", b"1".to_vec()).await;
    let sent = app.uploaded(&a, "sent", b"2".to_vec()).await;
    let mut ws = app.ws(&a).await;
    ws.send(json!({"type": "send", "client_msg_id": "m", "conversation_id": direct, "body": "here", "attachments": [sent["attachment_id"]]})).await;
    ws.expect("accepted").await;
    app.wait_for_seq(&a, &direct, 1).await;
    let unsent_path = format!(
        "/api/v1/attachments/{}",
        unsent["attachment_id"].as_str().unwrap()
    );
    // A sweep removes the row, then the bytes, then reports what is stored.
    poll_until("the unsent upload was never removed", || async {
        let metrics = app.metrics_text().await;
        app.fetch(&a, &unsent_path, &[]).await.status() == 404
            && metrics.contains("chorus_attachments_stored_objects 1")
    })
    .await;
    assert_eq!(objects(&app, "attachments").len(), 1, "the sent one stays");
    let sent_path = format!(
        "/api/v1/attachments/{}",
        sent["attachment_id"].as_str().unwrap()
    );
    assert_eq!(
        app.fetch(&b, &sent_path, &[])
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"2"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("chorus_attachments_stored_bytes 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn scripts_see_the_shapes_of_the_attachments_never_the_bytes() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let direct = app.direct(&a, &b).await;
    // b's incoming script answers with what it was given of the files.
    app.script(
        &b,
        &["incoming"],
        r#"
        export function onIncoming(msg) {
            const seen = msg.attachments.map(a => [a.name, a.content_type, a.size, a.sha256.length, "bytes" in a].join(":"));
            return { reply: "seen " + seen.join(",") };
        }
        "#,
    )
    .await;
    let file = app
        .uploaded(&a, "notes.txt", b"twelve bytes".to_vec())
        .await;
    let mut ws = app.ws(&a).await;
    ws.send(json!({"type": "send", "client_msg_id": "m", "conversation_id": direct, "body": "", "attachments": [file["attachment_id"]]})).await;
    ws.expect("accepted").await;
    let reply = ws.message_where(|m| m["sender_id"] == b.id.as_str()).await;
    assert_eq!(reply["body"], "seen notes.txt:text/plain:12:64:false");
    assert_eq!(
        reply["attachments"],
        json!([]),
        "a script's message carries no files"
    );
}
