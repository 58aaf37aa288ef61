//! Property tests of the RESP codec over random bytes (bounded: they run in CI every time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use multitokens_core::resp::{decode, decode_prefix, encode_command, Reply};
use proptest::prelude::*;

fn reply_strategy() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z ]{0,20}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|i| format!(":{i}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut v = format!("${}\r\n", b.len()).into_bytes();
            v.extend(b);
            v.extend(b"\r\n");
            v
        }),
        Just(b"$-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(|items| {
            let mut v = format!("*{}\r\n", items.len()).into_bytes();
            for i in items {
                v.extend(i);
            }
            v
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn valid_replies_decode_whole_and_mutations_never_panic(reply in reply_strategy(), at in any::<usize>(), byte in any::<u8>()) {
        let (_, used) = decode_prefix(&reply).unwrap();
        prop_assert_eq!(used, reply.len());
        prop_assert!(decode(&reply).is_ok());
        // any truncation is incomplete, never a wrong value
        if !reply.is_empty() {
            prop_assert!(decode(&reply[..at % reply.len()]).is_err());
        }
        let mut mutated = reply.clone();
        if !mutated.is_empty() {
            let i = at % mutated.len();
            mutated[i] = byte;
        }
        let _ = decode(&mutated);
    }

    #[test]
    fn commands_round_trip(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let encoded = encode_command(&args);
        let expected = Reply::Array(Some(args.iter().map(|a| Reply::Bulk(Some(a.clone()))).collect()));
        prop_assert_eq!(decode(&encoded).unwrap(), expected);
    }
}
