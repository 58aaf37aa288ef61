//! A small, bounded RESP2 codec for the filter's Redis callouts: one command out, one reply in.
//!
//! Decoding never trusts a length prefix: a bulk string or array must fit in the bytes actually
//! received before anything is allocated, nesting is limited, and every error is a value.

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...` (also `-NOAUTH`, `-NOSCRIPT`, ...)
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bytes, or `$-1` (nil)
    Bulk(Option<Vec<u8>>),
    /// `*n` values, or `*-1` (nil)
    Array(Option<Vec<Reply>>),
}

/// Why bytes are not one RESP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespError {
    /// The bytes end before the reply does.
    Incomplete,
    /// Not RESP2.
    Malformed,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left over after the reply.
    Trailing,
}

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// Encodes one command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Decodes exactly one reply spanning all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Reply, RespError> {
    let (reply, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(RespError::Trailing);
    }
    Ok(reply)
}

/// Decodes one reply from the start of `bytes`; returns it and the bytes it used.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Reply, usize), RespError> {
    let mut pos = 0;
    let reply = value(bytes, &mut pos, 0)?;
    Ok((reply, pos))
}

fn line<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], RespError> {
    let rest = bytes.get(*pos..).ok_or(RespError::Incomplete)?;
    let end = rest.windows(2).position(|w| w == b"\r\n").ok_or(RespError::Incomplete)?;
    *pos += end + 2;
    Ok(&rest[..end])
}

fn int(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text).ok().and_then(|s| s.parse::<i64>().ok()).ok_or(RespError::Malformed)
}

fn value(bytes: &[u8], pos: &mut usize, depth: usize) -> Result<Reply, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let kind = *bytes.get(*pos).ok_or(RespError::Incomplete)?;
    *pos += 1;
    let head = line(bytes, pos)?;
    match kind {
        b'+' => Ok(Reply::Status(String::from_utf8_lossy(head).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(head).into_owned())),
        b':' => Ok(Reply::Int(int(head)?)),
        b'$' => {
            let n = int(head)?;
            if n == -1 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Malformed)?;
            let end = pos.checked_add(n).ok_or(RespError::Malformed)?;
            if end.checked_add(2).is_none_or(|e| e > bytes.len()) {
                return Err(RespError::Incomplete);
            }
            if &bytes[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed);
            }
            let data = bytes[*pos..end].to_vec();
            *pos = end + 2;
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let n = int(head)?;
            if n == -1 {
                return Ok(Reply::Array(None));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Malformed)?;
            // every element takes at least 3 bytes ("+\r\n"): refuse counts the input cannot hold
            if n > bytes.len().saturating_sub(*pos) / 3 {
                return Err(RespError::Incomplete);
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(bytes, pos, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(RespError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        assert_eq!(encode_command(&["GET", "key"]), b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
        assert_eq!(encode_command::<&str>(&[]), b"*0\r\n");
    }

    #[test]
    fn decodes_every_kind() {
        assert_eq!(decode(b"+OK\r\n"), Ok(Reply::Status("OK".into())));
        assert_eq!(
            decode(b"-NOAUTH Authentication required.\r\n"),
            Ok(Reply::Error("NOAUTH Authentication required.".into()))
        );
        assert_eq!(decode(b":-3\r\n"), Ok(Reply::Int(-3)));
        assert_eq!(decode(b"$-1\r\n"), Ok(Reply::Bulk(None)));
        assert_eq!(decode(b"$5\r\na\r\nb!\r\n"), Ok(Reply::Bulk(Some(b"a\r\nb!".to_vec()))));
        assert_eq!(decode(b"*2\r\n$-1\r\n:-2\r\n"), Ok(Reply::Array(Some(vec![Reply::Bulk(None), Reply::Int(-2)]))));
        assert_eq!(decode(b"*-1\r\n"), Ok(Reply::Array(None)));
    }

    #[test]
    fn refuses_garbage_without_allocating_from_length_prefixes() {
        assert_eq!(decode(b"$999999999999\r\nab\r\n"), Err(RespError::Incomplete));
        assert_eq!(decode(b"*999999999999\r\n"), Err(RespError::Incomplete));
        assert_eq!(decode(b"$-5\r\n"), Err(RespError::Malformed));
        assert_eq!(decode(b"$2\r\nabcd\r\n"), Err(RespError::Malformed));
        assert_eq!(decode(b"?\r\n"), Err(RespError::Malformed));
        assert_eq!(decode(b"+OK\r\nextra"), Err(RespError::Trailing));
        assert_eq!(decode(b"+OK"), Err(RespError::Incomplete));
        assert_eq!(decode(b""), Err(RespError::Incomplete));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(decode(deep.as_bytes()), Err(RespError::TooDeep));
    }
}
