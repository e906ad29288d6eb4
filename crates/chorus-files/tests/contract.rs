//! The object store contract, run against each backend: a directory always, and an
//! S3-compatible server when `CHORUS_TEST_S3` names one (its endpoint, e.g.
//! `http://127.0.0.1:9000`, with a bucket `chorus-test`; `scripts/test.sh` starts one).

use bytes::Bytes;
use chorus_files::{Files, PART_BYTES, UploadError};
use futures::{StreamExt, stream};
use std::collections::BTreeMap;

/// Each backend, fresh and empty; the directory is kept alive beside it.
fn backends() -> Vec<(&'static str, Files, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("local", Files::local(dir.path()).unwrap(), Some(dir))];
    match std::env::var("CHORUS_TEST_S3") {
        Ok(endpoint) => {
            let options: BTreeMap<String, String> = [
                ("aws_endpoint", endpoint.as_str()),
                ("aws_region", "us-east-1"),
                ("aws_access_key_id", "chorus"),
                ("aws_secret_access_key", "chorus-secret"),
                ("aws_allow_http", "true"),
                ("aws_virtual_hosted_style_request", "false"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let prefix = uuid::Uuid::now_v7();
            let s3 = Files::open(&format!("s3://chorus-test/{prefix}"), &options).unwrap();
            all.push(("s3", s3, None));
        }
        Err(_) => eprintln!("CHORUS_TEST_S3 is not set: S3 object store test skipped"),
    }
    all
}

fn chunks(
    data: &[u8],
    size: usize,
) -> impl futures::Stream<Item = Result<Bytes, String>> + Send + use<> {
    let parts: Vec<Result<Bytes, String>> = data
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(parts)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn read_all(
    files: &Files,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Option<Vec<u8>> {
    let mut stream = files.read(key, range).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some(out)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_small_file_is_written_whole_and_read_back_with_its_digest() {
    for (name, files, _dir) in backends() {
        let data = pattern(10_000);
        let written = files
            .upload("a/small", chunks(&data, 999), 1 << 20)
            .await
            .unwrap();
        assert_eq!(written.size, 10_000, "{name}");
        assert_eq!(written.sha256, sha256_hex(&data), "{name}");
        assert_eq!(
            read_all(&files, "a/small", None).await.unwrap(),
            data,
            "{name}"
        );
        assert_eq!(
            read_all(&files, "a/small", Some(10..20)).await.unwrap(),
            data[10..20].to_vec(),
            "{name}: a range"
        );
    }
}

#[tokio::test]
async fn a_file_of_several_parts_is_streamed_in_parts_and_read_back() {
    for (name, files, _dir) in backends() {
        let data = pattern(2 * PART_BYTES + 12_345);
        let written = files
            .upload("big", chunks(&data, 64 * 1024), 1 << 30)
            .await
            .unwrap();
        assert_eq!(written.size, data.len() as u64, "{name}");
        assert_eq!(written.sha256, sha256_hex(&data), "{name}");
        assert_eq!(read_all(&files, "big", None).await.unwrap(), data, "{name}");
        let end = data.len() as u64;
        assert_eq!(
            read_all(&files, "big", Some(end - 5..end)).await.unwrap(),
            data[data.len() - 5..].to_vec(),
            "{name}: the last bytes"
        );
    }
}

#[tokio::test]
async fn a_file_over_the_limit_is_refused_and_nothing_is_kept() {
    for (name, files, dir) in backends() {
        for len in [1001, 2 * PART_BYTES] {
            let limit = if len == 1001 {
                1000
            } else {
                PART_BYTES as u64 + 1
            };
            let err = files
                .upload("over", chunks(&pattern(len), 4096), limit)
                .await
                .unwrap_err();
            assert!(
                matches!(err, UploadError::TooLarge { .. }),
                "{name}: {err:?}"
            );
            assert!(
                read_all(&files, "over", None).await.is_none(),
                "{name}: {len} bytes"
            );
        }
        if let Some(dir) = dir {
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{name}: {left:?}");
        }
    }
}

#[tokio::test]
async fn an_upload_cut_short_keeps_nothing() {
    for (name, files, dir) in backends() {
        for before in [100, PART_BYTES + 100] {
            let mut parts: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from(pattern(before)))];
            parts.push(Err("connection reset".into()));
            let err = files
                .upload("cut", stream::iter(parts), 1 << 30)
                .await
                .unwrap_err();
            assert!(matches!(err, UploadError::Body(_)), "{name}: {err:?}");
            assert!(read_all(&files, "cut", None).await.is_none(), "{name}");
        }
        // The client going away drops the upload's future part way.
        let pending = stream::iter(vec![Ok::<_, String>(Bytes::from(pattern(PART_BYTES + 1)))])
            .chain(stream::pending());
        let upload = files.upload("dropped", pending, 1 << 30);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), upload)
                .await
                .is_err(),
            "the body never ends"
        );
        assert!(read_all(&files, "dropped", None).await.is_none(), "{name}");
        if let Some(dir) = dir {
            // The abort runs in the background: wait for the staging file to go.
            for _ in 0..100 {
                if std::fs::read_dir(dir.path()).unwrap().next().is_none() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{name}: {left:?}");
        }
    }
}

#[tokio::test]
async fn what_is_missing_reads_as_none_and_deletes_quietly() {
    for (name, files, _dir) in backends() {
        assert!(read_all(&files, "nothing", None).await.is_none(), "{name}");
        files.delete("nothing").await.unwrap();
        files.put("x", Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(
            files.read_all("x", 10).await.unwrap().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(
            files.read_all("x", 2).await.unwrap().is_none(),
            "{name}: longer than max"
        );
        files.delete("x").await.unwrap();
        assert!(read_all(&files, "x", None).await.is_none(), "{name}");
        files.health().await.unwrap();
    }
}
