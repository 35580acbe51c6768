//! Encoding and decoding entries: round trips, limits, and bytes that must never panic.

use super::*;

fn sample() -> Entry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    Entry::new(
        "ns:v1:k",
        StatusCode::NOT_FOUND,
        headers,
        Bytes::from_static(b"hello"),
    )
    .with_times(
        // To the microsecond: stores order invalidations and fills by it.
        UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        Duration::from_secs(30),
    )
    .with_grace(Duration::from_secs(10))
    .with_recompute_time(Duration::from_millis(250))
    .with_trailers(Some(trailers))
    .with_tags(vec!["a".into(), "b:c".into()])
}

#[test]
fn round_trips_everything() {
    let e = sample();
    assert_eq!(Entry::decode(e.encode()).unwrap(), e);
    let plain = Entry::new("k", StatusCode::OK, HeaderMap::new(), Bytes::new());
    let back = Entry::decode(plain.encode()).unwrap();
    assert_eq!(back.trailers(), None);
    assert!(back.body().is_empty());
}

#[test]
fn body_is_a_slice_of_the_buffer() {
    let bytes = sample().encode();
    let range = bytes.as_ptr_range();
    let back = Entry::decode(bytes.clone()).unwrap();
    assert!(range.contains(&back.body().as_ptr()));
}

#[test]
fn every_truncation_and_garbage_is_an_error() {
    let bytes = sample().encode();
    for n in 0..bytes.len() {
        assert!(
            Entry::decode(bytes.slice(..n)).is_err(),
            "prefix of {n} bytes"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Entry::decode(longer.into()).is_err());
    // Every single-byte corruption either fails or decodes to something: never a panic.
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0xff;
        let _ = Entry::decode(b.into());
    }
    let mut v1 = bytes.to_vec();
    v1[2] = 1;
    assert_eq!(Entry::decode(v1.into()), Err(EntryError::Version(1)));
    // Version 2 (dated in milliseconds) is not read as microseconds: a miss.
    let mut v2 = bytes.to_vec();
    v2[2] = 2;
    assert_eq!(Entry::decode(v2.into()), Err(EntryError::Version(2)));
}

/// An envelope written field by field, as a hostile or broken writer could: `stored_us`
/// as the stored time, `headers` as they are (any count, any names), no trailers, tags or
/// body.
fn envelope(stored_us: u64, headers: &[(Vec<u8>, Vec<u8>)]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(0);
    out.put_u16(200);
    out.put_u64(stored_us);
    out.put_u64(30_000);
    out.put_u64(0);
    out.put_u64(0);
    put_bytes(&mut out, b"k");
    out.put_u32(len32(headers.len()));
    for (name, value) in headers {
        put_bytes(&mut out, name);
        put_bytes(&mut out, value);
    }
    out.put_u32(0);
    out.put_u64(0);
    out.freeze()
}

#[test]
fn an_envelope_written_by_hand_decodes() {
    let headers = [(b"x-a".to_vec(), b"1".to_vec())];
    let e = Entry::decode(envelope(1_700_000_000_000_000, &headers)).unwrap();
    assert_eq!(e.headers()["x-a"], "1");
    assert_eq!(
        e.stored_at(),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
}

#[test]
fn more_header_names_than_a_header_map_holds_is_an_error() {
    // `HeaderMap` holds at most 24 576 distinct names; `append` panics past that.
    let headers: Vec<_> = (0..40_000)
        .map(|i| (format!("x{i}").into_bytes(), Vec::new()))
        .collect();
    assert_eq!(
        Entry::decode(envelope(0, &headers)),
        Err(EntryError::Corrupt("too many headers"))
    );
    // Values of one name are not bounded by the map (only by the bytes read).
    let headers = vec![(b"x-a".to_vec(), b"1".to_vec()); 40_000];
    let e = Entry::decode(envelope(0, &headers)).unwrap();
    assert_eq!(e.headers().get_all("x-a").iter().count(), 40_000);
}

#[test]
fn any_stored_time_decodes_or_is_an_error() {
    for us in [u64::MAX, u64::MAX - 1, i64::MAX as u64, 1 << 62] {
        let decoded = Entry::decode(envelope(us, &[]));
        // `SystemTime`'s range depends on the platform: past it, an error, never a panic.
        match UNIX_EPOCH.checked_add(Duration::from_micros(us)) {
            Some(at) => {
                let e = decoded.unwrap();
                assert_eq!(e.stored_at(), at, "{us}");
                assert!(e.expires_at() >= e.stored_at(), "{us}");
                assert!(e.stale_until() >= e.expires_at(), "{us}");
                assert_eq!(Entry::decode(e.encode()).unwrap(), e, "{us}");
            }
            None => assert_eq!(decoded, Err(EntryError::Corrupt("stored time")), "{us}"),
        }
    }
}

#[test]
fn touch_and_fresh_until_take_any_time() {
    // Past what this platform's `SystemTime` holds, the furthest time it does hold.
    let far = [u64::MAX / 1000 * 4, u64::MAX / 1000, 1 << 50, 1 << 40]
        .into_iter()
        .find_map(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .unwrap();
    let e = sample().with_sliding(Some(MAX_TTL));
    assert_eq!(
        e.touch(far),
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    );
    // Times past what milliseconds since the epoch hold in a u64 are cut to it.
    let last = e.touch(UNIX_EPOCH);
    assert!(last <= far);
    assert_eq!(millis(last), millis(far));
    assert_eq!(e.fresh_until(), e.expires_at());
}

#[test]
fn header_value_with_crlf_is_corrupt() {
    let mut bytes = sample().encode().to_vec();
    let pos = bytes.windows(10).position(|w| w == b"text/plain").unwrap();
    bytes[pos + 4] = b'\n';
    assert_eq!(
        Entry::decode(bytes.into()),
        Err(EntryError::Corrupt("header value"))
    );
}

#[cfg(feature = "redis")]
#[test]
fn a_tombstone_is_its_parts_around_the_key() {
    let at = UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
    let (before, after) = Entry::tombstone_parts(at);
    for key in ["", "ns:v1:user:1", "ns:v1:GET /é?q=1", &"k".repeat(70_000)] {
        let mut built = before.to_vec();
        built.extend_from_slice(&u32::try_from(key.len()).unwrap().to_be_bytes());
        built.extend_from_slice(key.as_bytes());
        built.extend_from_slice(&after);
        assert_eq!(built, Entry::tombstone(key, at).encode(), "{key:.20}");
        let read = Entry::decode(built.into()).unwrap();
        assert!(read.is_tombstone());
        assert_eq!((read.key(), read.stored_at()), (key, at));
    }
}
