use super::*;
use ed25519_dalek::Signer as _;
use serde_json::{json, Value};

const TOKEN: &str = "mt_3.token";
const URI: &str = "https://api.example.com/v1/things";

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A key pair of either kind, and its public JWK.
enum TestKey {
    Ec(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

impl TestKey {
    fn ec(seed: u8) -> TestKey {
        TestKey::Ec(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
    }
    fn ed(seed: u8) -> TestKey {
        TestKey::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    fn alg(&self) -> &'static str {
        match self {
            TestKey::Ec(_) => "ES256",
            TestKey::Ed(_) => "EdDSA",
        }
    }
    fn jwk(&self) -> Value {
        match self {
            TestKey::Ec(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                       "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())})
            }
            TestKey::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes())})
            }
        }
    }
    fn sign(&self, signed: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Ec(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(signed);
                s.to_bytes().to_vec()
            }
            TestKey::Ed(k) => k.sign(signed).to_bytes().to_vec(),
        }
    }
    fn proof_with(&self, header: Value, claims: Value) -> String {
        let signed = format!("{}.{}", b64(&header), b64(&claims));
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(self.sign(signed.as_bytes())))
    }
    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }
    fn proof(&self) -> String {
        self.proof_with(self.header(), claims())
    }
}

fn claims() -> Value {
    json!({"jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": URI, "iat": 1_700_000_000u64, "ath": token_hash(TOKEN)})
}

fn request() -> Request<'static> {
    Request { method: "GET", uri: URI, token: Some(TOKEN), now_s: 1_700_000_010, window_s: 60 }
}

#[test]
fn the_rfcs_examples_thumbprint_and_token_hash() {
    // RFC 9449 §4.1's proof key and §6.1's thumbprint of it; §7.1's access token and its ath
    let jwk: Jwk = serde_json::from_value(json!({"kty": "EC", "crv": "P-256",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}))
    .unwrap();
    let (_, jkt) = jwk.key("ES256").ok().unwrap();
    assert_eq!(jkt.to_b64(), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    assert_eq!(Thumbprint::from_b64(&jkt.to_b64()), Some(jkt));
    assert_eq!(
        token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[test]
fn a_proof_of_either_algorithm_verifies_and_names_its_key() {
    for key in [TestKey::ec(7), TestKey::ed(7)] {
        let proof = verify(key.proof().as_bytes(), &request()).unwrap();
        let (_, expected) = serde_json::from_value::<Jwk>(key.jwk()).unwrap().key(key.alg()).ok().unwrap();
        assert_eq!((proof.jkt, proof.jti.as_str(), proof.iat), (expected, "e1j3V_bKic8-LAEB", 1_700_000_000));
    }
}

#[test]
fn every_rule_of_section_4_3_refuses() {
    for key in [TestKey::ec(3), TestKey::ed(3)] {
        let other = if key.alg() == "ES256" { TestKey::ec(4) } else { TestKey::ed(4) };
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            key.proof_with(key.header(), c)
        };
        let header = |f: &dyn Fn(&mut Value)| {
            let mut h = key.header();
            f(&mut h);
            key.proof_with(h, claims())
        };
        let good = key.proof();
        let mut parts: Vec<&str> = good.split('.').collect();
        let other_sig = other.proof();
        parts[2] = other_sig.split('.').nth(2).unwrap();
        let cases: Vec<(String, ProofError)> = vec![
            (header(&|h| h["typ"] = json!("JWT")), ProofError::Type),
            (header(&|h| h["alg"] = json!("none")), ProofError::Algorithm),
            (header(&|h| h["alg"] = json!("HS256")), ProofError::Algorithm),
            // RS256 where RSA keys are taken (ring): not with this key
            (
                header(&|h| h["alg"] = json!("RS256")),
                if cfg!(feature = "ring") { ProofError::Key } else { ProofError::Algorithm },
            ),
            (header(&|h| h["alg"] = json!("RS512")), ProofError::Algorithm),
            (header(&|h| h["jwk"] = other.jwk()), ProofError::Signature),
            (header(&|h| h["jwk"]["d"] = json!("AAAA")), ProofError::Key),
            (header(&|h| h.as_object_mut().unwrap().remove("jwk").map(drop).unwrap()), ProofError::Malformed),
            (header(&|h| h["jwk"]["x"] = json!("AAAA")), ProofError::Key),
            (parts.join("."), ProofError::Signature),
            (with(&|c| c["htm"] = json!("POST")), ProofError::Method),
            (with(&|c| c["htm"] = json!("get")), ProofError::Method),
            (with(&|c| c["htu"] = json!("https://api.example.com/v1/other")), ProofError::Uri),
            (with(&|c| c["htu"] = json!("https://evil.example/v1/things")), ProofError::Uri),
            (with(&|c| c["htu"] = json!("http://api.example.com/v1/things")), ProofError::Uri),
            (with(&|c| c["htu"] = json!("/v1/things")), ProofError::Uri),
            (with(&|c| c["iat"] = json!(1_700_000_100u64)), ProofError::Stale),
            (with(&|c| c["iat"] = json!(1_699_999_900u64)), ProofError::Stale),
            (with(&|c| c.as_object_mut().unwrap().remove("ath").map(drop).unwrap()), ProofError::TokenHash),
            (with(&|c| c["ath"] = json!(token_hash("another"))), ProofError::TokenHash),
            (with(&|c| c["jti"] = json!("")), ProofError::Jti),
            (with(&|c| c["iat"] = json!("1700000000")), ProofError::Malformed),
            (with(&|c| c.as_object_mut().unwrap().remove("jti").map(drop).unwrap()), ProofError::Malformed),
            (format!("{good}.x"), ProofError::Malformed),
            ("a.b".into(), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_LEN + 1), ProofError::Malformed),
        ];
        for (proof, expected) in cases {
            assert_eq!(verify(proof.as_bytes(), &request()), Err(expected), "{proof}");
        }
        assert_eq!(verify(b"\xff\xfe.\x00.\x80", &request()), Err(ProofError::Malformed));
        // an EC key under EdDSA, an OKP key under ES256
        let swapped = json!({"typ": "dpop+jwt", "alg": if key.alg() == "ES256" { "EdDSA" } else { "ES256" },
                             "jwk": key.jwk()});
        assert_eq!(verify(key.proof_with(swapped, claims()).as_bytes(), &request()), Err(ProofError::Key));
        // two `alg` members: refused rather than read one way here and another elsewhere
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"typ":"dpop+jwt","alg":"{}","alg":"none","jwk":{}}}"#,
                key.alg(),
                key.jwk()
            )),
            b64(&claims())
        );
        let doubled = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes())));
        assert_eq!(verify(doubled.as_bytes(), &request()), Err(ProofError::Malformed));
    }
}

#[test]
fn htu_ignores_query_fragment_case_and_default_ports() {
    let key = TestKey::ec(9);
    for htu in ["https://API.example.com:443/v1/things?x=1", "HTTPS://api.example.com/v1/things#f"] {
        let mut c = claims();
        c["htu"] = json!(htu);
        assert!(verify(key.proof_with(key.header(), c).as_bytes(), &request()).is_ok(), "{htu}");
    }
    assert_eq!(normalized_uri("http://h:8080"), Some("http://h:8080/".into()));
    assert_eq!(normalized_uri("https://user@h/"), None);
    assert_eq!(normalized_uri("ftp://h/"), None);
    // the path is compared as sent: a proof for /v1/Things is not one for /v1/things
    assert_ne!(normalized_uri("https://h/v1/Things"), normalized_uri("https://h/v1/things"));
    // at a login there is no token: no ath needed
    let mut c = claims();
    c.as_object_mut().unwrap().remove("ath");
    let login = Request { token: None, ..request() };
    assert!(verify(key.proof_with(key.header(), c).as_bytes(), &login).is_ok());
}
