//! Bounded, seeded fuzzing of what the crate reads from other processes: [`Entry::decode`] on
//! values read from Redis, and the bus message parser on invalidation messages. Whatever the
//! bytes, an error (a miss, a message ignored), never a panic.
//!
//! Each property runs a fixed number of cases from a fixed seed, so that a run in CI is the same
//! every time; `PROPTEST_RNG_SEED` and `PROPTEST_CASES` change them for a longer local run. A
//! failing test prints the seed and proptest's minimal failing input.

use crate::entry::{Entry, MAX_TTL};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{RngAlgorithm, RngSeed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The seed of every property here, unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x7374_6173_6816;

/// `cases` cases from [`SEED`], without failure files (a failure is reproduced by the seed).
fn config(cases: u32) -> ProptestConfig {
    let env = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let seed = env("PROPTEST_RNG_SEED").unwrap_or(SEED);
    let cases = env("PROPTEST_CASES").map_or(cases, |n| u32::try_from(n).unwrap_or(u32::MAX));
    // The harness shows this only for a failing test.
    eprintln!("proptest: seed {seed}, {cases} cases (PROPTEST_RNG_SEED, PROPTEST_CASES)");
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `us` after the epoch, or the epoch where the platform's `SystemTime` does not go that far.
fn at_us(us: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(us))
        .unwrap_or(UNIX_EPOCH)
}

/// Microseconds since the epoch (a date in a store): any `u64`, or plausible ones.
fn micros() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), 0..4_000_000_000_000_000u64]
}

/// Milliseconds: any `u64` (most far past what `SystemTime` holds on some platforms), or
/// plausible ones.
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), 0..4_000_000_000_000u64]
}

/// A string of up to `max` chars, any but surrogates (cheaper than a regex in debug builds).
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

fn header_map(max: usize) -> impl Strategy<Value = HeaderMap> {
    const TOKEN: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
    let name = vec(prop::sample::select(TOKEN), 1..8);
    let value = vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..12);
    vec((name, value), 0..max).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(&name).unwrap(),
                HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        map
    })
}

/// Any entry [`Entry::encode`] can be given.
fn entry() -> impl Strategy<Value = Entry> {
    (
        (
            text(16),
            100u16..1000,
            header_map(6),
            vec(any::<u8>(), 0..64),
        ),
        (
            prop::option::of(header_map(3)),
            vec(text(8), 0..4),
            any::<bool>(),
        ),
        (
            micros(),
            millis(),
            millis(),
            millis(),
            prop::option::of(millis()),
        ),
    )
        .prop_map(
            |(
                (key, status, headers, body),
                (trailers, tags, tombstone),
                (stored, ttl, grace, recompute, sliding),
            )| {
                if tombstone {
                    return Entry::tombstone(key, at_us(stored)).with_tags(tags);
                }
                let status = StatusCode::from_u16(status).unwrap();
                Entry::new(key, status, headers, body.into())
                    .with_times(at_us(stored), Duration::from_millis(ttl))
                    .with_grace(Duration::from_millis(grace))
                    .with_recompute_time(Duration::from_millis(recompute))
                    .with_sliding(sliding.map(Duration::from_millis))
                    .with_trailers(trailers)
                    .with_tags(tags)
            },
        )
}

/// A change to an encoding: a corrupt or truncated value, a value of another writer.
#[derive(Debug, Clone)]
enum Mutation {
    /// The byte at the index, XORed with a non-zero byte.
    Flip(Index, u8),
    /// Cut to fewer bytes (nothing happens to an empty value).
    Truncate(Index),
    /// A byte inserted before the index (or at the end).
    Insert(Index, u8),
    /// The byte at the index removed.
    Remove(Index),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            Self::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            Self::Flip(i, x) => bytes[i.index(len)] ^= x,
            Self::Truncate(i) => bytes.truncate(i.index(len)),
            Self::Remove(i) => drop(bytes.remove(i.index(len))),
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
    ]
}

/// What decodes must be an entry like any other: it encodes and decodes to itself.
fn assert_sensible(decoded: &Entry) -> Result<(), TestCaseError> {
    prop_assert_eq!(&Entry::decode(decoded.encode()), &Ok(decoded.clone()));
    prop_assert!(decoded.ttl() <= MAX_TTL && decoded.grace() <= MAX_TTL);
    prop_assert!(decoded.stored_at() <= decoded.expires_at());
    prop_assert!(decoded.expires_at() <= decoded.stale_until());
    Ok(())
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn decode_takes_any_bytes(bytes in vec(any::<u8>(), 0..256)) {
        if let Ok(entry) = Entry::decode(bytes.into()) {
            assert_sensible(&entry)?;
        }
    }

    /// Past the magic and the version, where random bytes seldom get.
    #[test]
    fn decode_takes_any_bytes_after_the_version(
        flags in 0u8..8,
        rest in vec(any::<u8>(), 0..256),
    ) {
        let bytes: Vec<u8> = [&b"TS\x03"[..], &[flags], &rest].concat();
        if let Ok(entry) = Entry::decode(bytes.into()) {
            assert_sensible(&entry)?;
        }
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn decode_takes_any_change_to_a_valid_encoding(
        entry in entry(),
        mutations in vec(mutation(), 0..4),
    ) {
        let encoded = entry.encode();
        prop_assert_eq!(Entry::decode(encoded.clone()), Ok(entry.clone()));
        let mut bytes = encoded.to_vec();
        for m in &mutations {
            m.apply(&mut bytes);
        }
        let shorter = bytes.len() < encoded.len()
            && mutations.iter().all(|m| matches!(m, Mutation::Truncate(_)));
        match Entry::decode(Bytes::from(bytes.clone())) {
            Ok(decoded) => {
                prop_assert!(!shorter, "a prefix of an encoding decoded");
                if bytes == encoded {
                    prop_assert_eq!(&decoded, &entry);
                }
                assert_sensible(&decoded)?;
            }
            Err(_) => prop_assert_ne!(&bytes[..], &encoded[..]),
        }
    }
}

#[cfg(feature = "redis")]
mod bus {
    use super::*;
    use crate::store::bus::{bus_message, parse_bus_message, BusMessage, BusWhat};

    /// A part of a message: a kind, a number (some past `u64`), or anything else.
    fn part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[kt]",
            any::<u64>().prop_map(|n| n.to_string()),
            (u128::from(u64::MAX)..).prop_map(|n| n.to_string()),
            (0..1000i32).prop_map(|n| n.to_string()),
            text(8),
        ]
    }

    /// A key, tag or namespace: anything, tabs, `%` and controls included.
    fn field() -> impl Strategy<Value = String> {
        let special = vec(prop::sample::select(&b"\t\n%0a"[..]), 0..6);
        prop_oneof![
            text(12),
            special.prop_map(|b| String::from_utf8(b).unwrap())
        ]
    }

    proptest! {
        #![proptest_config(config(4000))]

        #[test]
        fn parse_takes_any_bytes(bytes in vec(any::<u8>(), 0..128)) {
            let parsed = parse_bus_message(&bytes);
            prop_assert!(parsed.is_none() || std::str::from_utf8(&bytes).is_ok());
        }

        /// Tab-separated parts: read when its times are numbers, whatever the rest holds.
        #[test]
        fn parse_takes_any_parts(parts in vec(part(), 0..9)) {
            let text = parts.join("\t");
            let parsed = parse_bus_message(text.as_bytes());
            let split: Vec<&str> = text.splitn(7, '\t').collect();
            let readable = split.len() >= 4
                && split[1].parse::<u64>().is_ok()
                && split[2].parse::<u64>().is_ok();
            prop_assert_eq!(parsed.is_some(), readable, "{:?}", text);
            if let Some(m) = parsed {
                prop_assert!(m.keep <= Duration::from_secs(60));
                prop_assert_eq!(m.id, split[3]);
            }
        }

        /// What [`bus_message`] writes reads back, whatever its fields hold (tabs, `%`,
        /// controls, any Unicode).
        #[test]
        fn parse_reads_what_bus_message_writes(
            kind in prop_oneof![Just(b'k'), Just(b't'), Just(b'x')],
            at in micros(),
            keep_ms in millis(),
            id in any::<u64>().prop_map(|n| format!("{n:016x}")),
            fields in vec(field(), 0..=3),
        ) {
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            let message = bus_message(kind, at_us(at), Duration::from_millis(keep_ms), &id, &refs);
            let what = match (kind, fields.as_slice()) {
                (b'k', [key, ns, family]) => BusWhat::Key {
                    key: key.clone(),
                    ns: ns.clone(),
                    family: family.clone(),
                },
                (b't', [ns, tag]) => BusWhat::Tag { ns: ns.clone(), tag: tag.clone() },
                _ => BusWhat::Unknown,
            };
            let expected = BusMessage {
                at: at_us(at),
                keep: Duration::from_millis(keep_ms).min(Duration::from_secs(60)),
                id,
                what,
            };
            prop_assert_eq!(parse_bus_message(&message), Some(expected));
        }
    }

    #[test]
    fn a_time_past_what_system_time_holds_is_not_a_message() {
        for us in [u64::MAX, u64::MAX - 1, 1 << 62] {
            let text = format!("t\t{us}\t1000\tid\tns\ttag");
            let parsed = parse_bus_message(text.as_bytes());
            match UNIX_EPOCH.checked_add(Duration::from_micros(us)) {
                Some(at) => assert_eq!(parsed.map(|m| m.at), Some(at), "{us}"),
                None => assert_eq!(parsed, None, "{us}"),
            }
        }
        // Past `u64`: not a number this parser reads.
        assert_eq!(
            parse_bus_message(b"t\t18446744073709551616\t0\tid\tns\ttag"),
            None
        );
    }
}
