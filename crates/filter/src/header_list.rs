//! A request's headers (or trailers) as the proxy handed them over, in one buffer: raw bytes (a
//! client may send any byte), in order, duplicates kept. Reading a request's headers costs two
//! allocations however many there are, where a pair of vectors per header cost two each (on a
//! cache hit, most of what the filter allocated).

use super::header_map::RawHeaders;

/// A header name's length as one bit of a set of lengths (bit 63: 63 bytes or more): a set of a
/// few names rules out most of a request's headers by length before a byte is compared.
pub fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// Where one pair's name and value lie in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The name's start and end.
    pub name: (usize, usize),
    /// The value's start and end.
    pub value: (usize, usize),
}

/// Header pairs over one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

impl HeaderList {
    /// An empty list with room for `headers` pairs of `bytes` bytes in all.
    fn with_capacity(headers: usize, bytes: usize) -> HeaderList {
        HeaderList { bytes: Vec::with_capacity(bytes), spans: Vec::with_capacity(headers) }
    }

    /// The pairs of `pairs`, copied.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderList {
        HeaderList::copied(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
    }

    /// The pairs `pairs` yields, copied into a buffer sized for them first (one pass to size it,
    /// one to copy).
    pub fn copied<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> HeaderList {
        let (count, bytes) = pairs.clone().fold((0, 0), |(n, size), (k, v)| (n + 1, size + k.len() + v.len()));
        let mut list = HeaderList::with_capacity(count, bytes);
        for (k, v) in pairs {
            list.push(k, v);
        }
        list
    }

    /// The pairs at `spans` of `bytes`, kept where they are; `None` when a span lies outside the
    /// bytes or ends before it starts.
    pub fn from_spans(bytes: Vec<u8>, spans: Vec<Span>) -> Option<HeaderList> {
        let fits = |(start, end): (usize, usize)| start <= end && end <= bytes.len();
        spans.iter().all(|s| fits(s.name) && fits(s.value)).then_some(HeaderList { bytes, spans })
    }

    /// Appends a pair.
    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let middle = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.spans.push(Span { name: (start, middle), value: (middle, self.bytes.len()) });
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        // the spans were checked against the buffer when they were made: `get` only keeps that
        // promise without a panic path
        let part = |(start, end): (usize, usize)| self.bytes.get(start..end).unwrap_or_default();
        self.spans.iter().map(move |s| (part(s.name), part(s.value)))
    }

    /// The values of every pair named exactly `name`, in order.
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The pairs as vectors.
    pub fn to_pairs(&self) -> RawHeaders {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_duplicates_and_any_byte() {
        let pairs = [(&b"a"[..], &b"1"[..]), (b"\xff", b""), (b"a", b"\x00\xfe"), (b"", b"x")];
        let list = HeaderList::from_pairs(&pairs);
        assert_eq!(list.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(list.values(b"a").collect::<Vec<_>>(), [&b"1"[..], b"\x00\xfe"]);
        assert_eq!(list.values(b"A").count(), 0, "names are compared as given");
        assert_eq!(HeaderList::default().iter().count(), 0);
    }

    #[test]
    fn spans_outside_the_buffer_are_refused() {
        let span = |name, value| Span { name, value };
        assert!(HeaderList::from_spans(b"abcd".to_vec(), vec![span((0, 1), (2, 4))]).is_some());
        assert!(HeaderList::from_spans(b"abcd".to_vec(), vec![span((0, 1), (2, 5))]).is_none());
        assert!(HeaderList::from_spans(b"abcd".to_vec(), vec![span((2, 1), (2, 4))]).is_none());
    }
}
