//! The proxy-wasm header map wire form, both ways, over raw bytes: a count, then a key and value
//! length per pair, then each key and value followed by a NUL. Names and values stay bytes (a
//! client may send any byte), and a map the host got wrong yields `None`, never a panic.

use super::header_list::{HeaderList, Span};

/// Header pairs as raw bytes.
pub type RawHeaders = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a serialized header map; `None` when the bytes do not describe one.
pub fn decode(bytes: &[u8]) -> Option<RawHeaders> {
    decode_list(bytes.to_vec()).map(|list| list.to_pairs())
}

/// Decodes a serialized header map into a [`HeaderList`] over the same bytes (nothing copied);
/// `None` when the bytes do not describe one.
pub fn decode_list(bytes: Vec<u8>) -> Option<HeaderList> {
    let spans = spans(&bytes)?;
    HeaderList::from_spans(bytes, spans)
}

/// Where each pair of a serialized header map lies in it.
fn spans(bytes: &[u8]) -> Option<Vec<Span>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    // each pair needs 8 bytes of lengths and two NULs: a count beyond that is a lie
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut spans = Vec::with_capacity(count);
    for n in 0..count {
        let key_len = word(4 + n * 8)?;
        let value_len = word(8 + n * 8)?;
        let name = (data, data.checked_add(key_len)?);
        data = name.1.checked_add(1)?;
        let value = (data, data.checked_add(value_len)?);
        data = value.1.checked_add(1)?;
        spans.push(Span { name, value });
    }
    (data <= bytes.len()).then_some(spans)
}

/// Serializes header pairs (for local replies and callouts).
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(k, v)| 10 + k.as_ref().len() + v.as_ref().len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        let pairs: RawHeaders = vec![
            (b":path".to_vec(), b"/".to_vec()),
            (b"user-agent".to_vec(), b"\xff\xfe".to_vec()),
            (b"\xc3".to_vec(), Vec::new()),
        ];
        assert_eq!(decode(&encode(&pairs)), Some(pairs));
        assert_eq!(decode(&[]), Some(Vec::new()));
    }

    #[test]
    fn broken_maps_are_refused() {
        let good = encode(&[("a", "b"), ("cc", "dd")]);
        for cut in 1..good.len() {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[0] = 0xff; // a huge count
        assert_eq!(decode(&lying), None);
        let mut long = good;
        long[4] = 0xff; // a key longer than the map
        assert_eq!(decode(&long), None);
    }
}
