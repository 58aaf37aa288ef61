//! `POST /v1/internal/lookups`: several lookups in one request, each answered as the single GET
//! answers it.

use super::{admin, Api, INTERNAL};
use crate::support::RedisServer;
use crate::{policy, store_at};
use multitokens::api::MAX_BODY_BYTES;
use multitokens_core::contract::{LookupBatch, LookupQuery, LOOKUPS_PATH, MAX_LOOKUP_BATCH};
use multitokens_core::keyring::MAX_PREVIOUS_HASH_KEYS;
use serde_json::{json, Value};

#[test]
fn a_batch_answers_each_lookup_as_the_single_lookup_does() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let store = api.runtime.block_on(async { store_at(&redis.url(), policy(), None) });
    let internal = format!("Bearer {INTERNAL}");
    let mut queries = Vec::new();
    let mut tokens = Vec::new();
    for (user, device) in [("ann", "phone"), ("ben", "laptop"), ("ann", "tablet")] {
        let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": user, "device": device})));
        let token = issued["token"].as_str().unwrap().to_string();
        let (tag, digest) = store.digest_of(&token).unwrap();
        queries.push(json!({"tag": tag.to_hex(), "digest": digest.to_hex()}));
        tokens.push(token);
    }
    // revoked, and never issued: inactive in their places
    let revoked = api.call("DELETE", "/v1/tokens/current", Some(&format!("Bearer {}", tokens[1])), None).0;
    assert!(revoked == 200 || revoked == 204, "{revoked}");
    queries.insert(1, json!({"tag": "00000000", "digest": "0".repeat(64)}));
    let (status, v, _) = api.call("POST", LOOKUPS_PATH, Some(&internal), Some(json!({"lookups": queries})));
    assert_eq!(status, 200, "{v}");
    let answers = v["answers"].as_array().unwrap();
    let summary: Vec<(Value, Value, Value)> =
        answers.iter().map(|a| (a["active"].clone(), a["user"].clone(), a["device"].clone())).collect();
    assert_eq!(
        summary,
        [
            (json!(true), json!("ann"), json!("phone")),
            (json!(false), Value::Null, Value::Null),
            (json!(false), Value::Null, Value::Null),
            (json!(true), json!("ann"), json!("tablet")),
        ]
    );
    // each answer is the single lookup's
    for (query, answer) in queries.iter().zip(answers) {
        let path = format!(
            "/v1/internal/lookup?tag={}&digest={}",
            query["tag"].as_str().unwrap(),
            query["digest"].as_str().unwrap()
        );
        let (_, single, _) = api.call("GET", &path, Some(&internal), None);
        let without_clock = |mut v: Value| {
            v.as_object_mut().map(|o| (o.remove("expires_in"), o.remove("expires_in_ms")));
            v
        };
        assert_eq!(without_clock(single), without_clock(answer.clone()));
    }
    // an empty batch has no answers
    let (status, v, _) = api.call("POST", LOOKUPS_PATH, Some(&internal), Some(json!({"lookups": []})));
    assert_eq!((status, v["answers"].clone()), (200, json!([])));
}

#[test]
fn a_batch_is_refused_whole_for_one_bad_lookup_too_many_or_the_wrong_key() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let internal = format!("Bearer {INTERNAL}");
    let good = json!({"tag": "00000000", "digest": "0".repeat(64)});
    let many: Vec<Value> = (0..=MAX_LOOKUP_BATCH).map(|_| good.clone()).collect();
    for (bad, what) in [
        (json!({"lookups": many}), "one lookup too many"),
        (json!({"lookups": [good, {"tag": "zz", "digest": "0".repeat(64)}]}), "a tag not hex"),
        (json!({"lookups": [{"tag": "00000000", "digest": "0".repeat(64), "user": "x"}]}), "an unknown field"),
        (json!({"lookups": [good], "extra": 1}), "an unknown field of the batch"),
    ] {
        let (status, v, _) = api.call("POST", LOOKUPS_PATH, Some(&internal), Some(bad));
        assert_eq!(status, 400, "{what}: {v}");
        assert!(v["detail"].is_string(), "{what}: {v}");
    }
    for key in [None, admin()] {
        let (status, _, _) = api.call("POST", LOOKUPS_PATH, key, Some(json!({"lookups": [good]})));
        assert!(status == 401 || status == 403, "{key:?}: {status}");
    }
}

#[test]
fn the_largest_batch_a_filter_sends_fits_the_body_limit() {
    let largest = LookupQuery {
        tag: "f".repeat(8),
        digest: "f".repeat(64),
        previous: Some(vec!["f".repeat(64); MAX_PREVIOUS_HASH_KEYS].join(",")),
        key_id: Some("f".repeat(64)),
        refresh_ttl: Some(u64::MAX),
    };
    let batch = LookupBatch { lookups: vec![largest; MAX_LOOKUP_BATCH] };
    let size = serde_json::to_vec(&batch).unwrap().len();
    assert!(size <= MAX_BODY_BYTES, "{size} bytes");
}
