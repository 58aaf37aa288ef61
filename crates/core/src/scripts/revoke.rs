//! The scripts that revoke tokens and publish what they revoked (the outbox).

/// Revokes one token (log out one device), under whichever digest it is stored.
///
/// KEYS: outbox, then the candidate record keys. ARGV: index key prefix, expiry index key
/// prefix, then each candidate's member. Returns `{revoked (0 or 1), user, public id}`.
pub const REVOKE: &str = concat!(
    prelude!(),
    r#"
local revoked, user, id = 0, '', ''
for i = 2, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if raw then
    local member = ARGV[i + 1]
    drop_record(KEYS[i])
    to_outbox(KEYS[1], {member})
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' and type(rec.user) == 'string' then
      redis.call('ZREM', ARGV[1] .. rec.user, member)
      redis.call('ZREM', ARGV[2] .. rec.user, member)
      user = rec.user
    end
    id = id_of(raw)
    revoked = revoked + 1
  end
end
return {revoked, user, id}
"#
);

/// Revokes all of a user's tokens, or all but one (log out everywhere / everywhere else).
///
/// KEYS: index, outbox, expiry index. ARGV: record key prefix, member to keep (empty for none),
/// or (ARGV[3]) the public id of the token to keep. Returns the public ids of the tokens revoked
/// (only those whose record was still live); with a public id that is no live token of the user,
/// the error `NOKEEP` and nothing revoked.
pub const REVOKE_ALL: &str = concat!(
    prelude!(),
    r#"
local index, expiry, record_prefix, keep, keep_id = KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3] or ''
prune(index, expiry, record_prefix)
local members = redis.call('ZRANGE', index, 0, -1)
if keep_id ~= '' then
  for _, m in ipairs(members) do
    if id_of(redis.call('GET', record_prefix .. m)) == keep_id then keep = m end
  end
  if keep == '' then return redis.error_reply('NOKEEP no live token with that id') end
end
local revoked, ids, kept = {}, {}, nil
for _, m in ipairs(members) do
  if m == keep and redis.call('EXISTS', record_prefix .. m) == 1 then
    kept = {redis.call('ZSCORE', index, m), redis.call('ZSCORE', expiry, m)}
  else
    local raw = redis.call('GET', record_prefix .. m)
    if raw then
      drop_record(record_prefix .. m)
      revoked[#revoked + 1] = m
      ids[#ids + 1] = id_of(raw)
    end
  end
end
-- both indexes go at once, and the kept token comes back with its scores
redis.call('DEL', index, expiry)
if kept then
  redis.call('ZADD', index, kept[1], keep)
  if kept[2] then redis.call('ZADD', expiry, kept[2], keep) end
end
fit_index_ttl(index, expiry)
to_outbox(KEYS[2], revoked)
return ids
"#
);

/// Revokes one of a user's tokens by its public id.
///
/// KEYS: index, outbox, expiry index. ARGV: record key prefix, public id. Returns the revoked
/// member, or nil.
pub const REVOKE_BY_ID: &str = concat!(
    prelude!(),
    r#"
local index, expiry, record_prefix, id = KEYS[1], KEYS[3], ARGV[1], ARGV[2]
prune(index, expiry, record_prefix)
local found = false
for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local raw = redis.call('GET', record_prefix .. m)
  local ok, rec = false, nil
  if raw then ok, rec = pcall(cjson.decode, raw) end
  if ok and type(rec) == 'table' and rec.id == id then
    drop_record(record_prefix .. m)
    redis.call('ZREM', index, m)
    redis.call('ZREM', expiry, m)
    found = m
    break
  end
end
fit_index_ttl(index, expiry)
if found then to_outbox(KEYS[2], {found}) end
return found
"#
);

/// Removes from an outbox the digests a companion has copied to the feed: in one LTRIM when they
/// are still its head (the usual case, O(k)), else one occurrence each, so digests revoked again
/// meanwhile stay for the next drain (another companion drained concurrently).
///
/// KEYS: outbox. ARGV: the digests copied, in outbox order. Returns how many were removed.
pub const OUTBOX_DONE: &str = r#"
local head = redis.call('LRANGE', KEYS[1], 0, #ARGV - 1)
local same = #head == #ARGV
for i = 1, #head do
  if head[i] ~= ARGV[i] then same = false break end
end
if same then
  redis.call('LTRIM', KEYS[1], #ARGV, -1)
  return #ARGV
end
local removed = 0
for _, m in ipairs(ARGV) do removed = removed + redis.call('LREM', KEYS[1], 1, m) end
return removed
"#;

/// Drops an outbox from the index of pending outboxes if no revocation was announced into it
/// since the sweep read its score (a revocation under way re-announces it first).
///
/// KEYS: the pending-outbox index. ARGV: outbox key, the score the sweep read. Returns 1 if removed.
pub const OUTBOX_FORGET: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#;
