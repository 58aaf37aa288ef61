//! The Lua scripts behind every multi-key mutation. Each runs atomically in Redis; all keys it
//! touches share the user's hash tag, so they are safe in Redis Cluster. Index members are token
//! digests (hex), scored by creation time in microseconds, strictly increasing per user (so the
//! oldest token comes first).
//!
//! Invariants the scripts keep: a record listed in the index exists or is pruned on the next
//! script that walks the index; the index lives at least as long as its longest-lived record
//! (so "log out everywhere" always finds every live token).

/// Setting a record's TTL without ever passing its absolute expiry (`expires_at`, Unix seconds) or
/// the lifetime it was issued with (`lifetime_ms`).
macro_rules! ttl_helpers {
    () => {
        r#"
-- The record's limits: ms left under its absolute expiry (nil: none), its issued lifetime in ms
-- (nil: immortal or written before lifetimes were kept).
local function limits(key)
  local ok, rec = pcall(cjson.decode, redis.call('GET', key))
  if not ok or type(rec) ~= 'table' then return nil, nil end
  local left, lifetime = nil, nil
  if type(rec.expires_at) == 'number' then
    local t = redis.call('TIME')
    left = rec.expires_at * 1000 - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  if type(rec.lifetime_ms) == 'number' and rec.lifetime_ms > 0 then lifetime = rec.lifetime_ms end
  return left, lifetime
end

-- Sets a record's TTL in ms (0: immortal), capped by its issued lifetime and absolute expiry.
local function set_ttl(key, ms)
  local left, lifetime = limits(key)
  if lifetime and (ms == 0 or ms > lifetime) then ms = lifetime end
  if left then
    if left <= 0 then
      redis.call('DEL', key)
      return
    end
    if ms == 0 or ms > left then ms = left end
  end
  if ms == 0 then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ms) end
end
"#
    };
}

/// Helpers shared by the scripts that walk a user's index.
macro_rules! prelude {
    () => {
        r#"
-- Puts revoked digests in the hash tag's outbox, in the same script as the revocation: whatever
-- Redis revokes is published (a companion copies the outbox to the feed). Kept a day at most:
-- no cached verdict outlives that.
local function to_outbox(outbox, members)
  if #members == 0 then return end
  for first = 1, #members, 500 do
    redis.call('RPUSH', outbox, unpack(members, first, math.min(first + 499, #members)))
  end
  redis.call('PEXPIRE', outbox, 86400000)
end

-- Creation order: server time in microseconds, strictly after the user's newest token.
local function next_score(index)
  local t = redis.call('TIME')
  local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
  return score
end

-- Members of the index whose record still exists, oldest first; prunes the rest.
local function live_members(index, record_prefix)
  local live = {}
  for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('EXISTS', record_prefix .. member) == 1 then
      live[#live + 1] = member
    else
      redis.call('ZREM', index, member)
    end
  end
  return live
end

-- Keeps the index alive exactly as long as its longest-lived record (forever if one is immortal).
local function fit_index_ttl(index, record_prefix, live)
  if #live == 0 then
    redis.call('DEL', index)
    return
  end
  local longest = 0
  for _, member in ipairs(live) do
    local pttl = redis.call('PTTL', record_prefix .. member)
    if pttl == -1 then
      redis.call('PERSIST', index)
      return
    end
    if pttl > longest then longest = pttl end
  end
  redis.call('PEXPIRE', index, longest + 1000)
end
"#
    };
}

/// Issues a token: prune, enforce the per-user limit, reset other tokens' TTL, store, index.
///
/// KEYS: index, new record, outbox. ARGV: member (digest hex), record JSON, new token TTL ms (0 = never),
/// reset TTL ms (0 = never), reset on login (1/0), overwrite immortal TTL (1/0), max tokens
/// (0 = unlimited), policy (`reject` | `evict_oldest`), record key prefix.
/// Returns `{status, first, ttl_reset, evicted...}`: status 0 ok, 1 limit reached, 2 duplicate
/// digest; `ttl_reset` counts the user's other tokens whose lifetime this login reset.
pub const ISSUE: &str = concat!(
    prelude!(),
    ttl_helpers!(),
    r#"
local index, record, member = KEYS[1], KEYS[2], ARGV[1]
local record_prefix = ARGV[9]
if redis.call('EXISTS', record) == 1 then return {2, 0, 0} end
local live = live_members(index, record_prefix)
local first = 0
if #live == 0 then first = 1 end
local result = {0, first, 0}
local max = tonumber(ARGV[7])
if max > 0 and #live >= max then
  if ARGV[8] ~= 'evict_oldest' then return {1, first, 0} end
  local excess = #live - max + 1
  local kept = {}
  for i, m in ipairs(live) do
    if i <= excess then
      redis.call('DEL', record_prefix .. m)
      redis.call('ZREM', index, m)
      result[#result + 1] = m
    else
      kept[#kept + 1] = m
    end
  end
  live = kept
  local evicted = {}
  for i = 4, #result do evicted[#evicted + 1] = result[i] end
  to_outbox(KEYS[3], evicted)
end
if ARGV[5] == '1' then
  local reset = tonumber(ARGV[4])
  for _, m in ipairs(live) do
    local key = record_prefix .. m
    local pttl = redis.call('PTTL', key)
    if reset == 0 then
      if pttl >= 0 then set_ttl(key, 0); result[3] = result[3] + 1 end
    elseif pttl >= 0 or ARGV[6] == '1' then
      set_ttl(key, reset)
      result[3] = result[3] + 1
    end
  end
  live = live_members(index, record_prefix)
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', record, ARGV[2], 'PX', ttl)
else
  redis.call('SET', record, ARGV[2])
end
redis.call('ZADD', index, string.format('%.0f', next_score(index)), member)
live[#live + 1] = member
fit_index_ttl(index, record_prefix, live)
return result
"#
);

/// Reads one record with its remaining TTL in one round trip.
///
/// KEYS: record. Returns `{value or nil, pttl}`.
pub const LOOKUP: &str = r#"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"#;

/// Revokes one token (log out one device).
///
/// KEYS: record, outbox. ARGV: member, index key prefix. Returns 1 if a live token was revoked, else 0.
pub const REVOKE: &str = concat!(
    prelude!(),
    r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])
to_outbox(KEYS[2], {ARGV[1]})
local ok, rec = pcall(cjson.decode, raw)
if ok and type(rec) == 'table' and type(rec.user) == 'string' then
  redis.call('ZREM', ARGV[2] .. rec.user, ARGV[1])
end
return 1
"#
);

/// Revokes all of a user's tokens, or all but one (log out everywhere / everywhere else).
///
/// KEYS: index, outbox. ARGV: record key prefix, member to keep (empty for none).
/// Returns the revoked members (only those whose record was still live).
pub const REVOKE_ALL: &str = concat!(
    prelude!(),
    r#"
local index, record_prefix, keep = KEYS[1], ARGV[1], ARGV[2]
local revoked, kept = {}, {}
for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if m == keep and redis.call('EXISTS', record_prefix .. m) == 1 then
    kept[#kept + 1] = m
  else
    if redis.call('DEL', record_prefix .. m) == 1 then revoked[#revoked + 1] = m end
    redis.call('ZREM', index, m)
  end
end
fit_index_ttl(index, record_prefix, kept)
to_outbox(KEYS[2], revoked)
return revoked
"#
);

/// Revokes one of a user's tokens by its public id.
///
/// KEYS: index, outbox. ARGV: record key prefix, public id. Returns the revoked member, or nil.
pub const REVOKE_BY_ID: &str = concat!(
    prelude!(),
    r#"
local index, record_prefix, id = KEYS[1], ARGV[1], ARGV[2]
local found, kept = false, {}
for _, m in ipairs(live_members(index, record_prefix)) do
  local ok, rec = false, nil
  if not found then ok, rec = pcall(cjson.decode, redis.call('GET', record_prefix .. m)) end
  if ok and type(rec) == 'table' and rec.id == id then
    redis.call('DEL', record_prefix .. m)
    redis.call('ZREM', index, m)
    found = m
  else
    kept[#kept + 1] = m
  end
end
fit_index_ttl(index, record_prefix, kept)
if found then to_outbox(KEYS[2], {found}) end
return found
"#
);

/// Lists a user's live tokens, oldest first, pruning dead index members.
///
/// KEYS: index. ARGV: record key prefix. Returns `{json, pttl, json, pttl, ...}`.
pub const LIST: &str = r#"
local index, record_prefix = KEYS[1], ARGV[1]
local out = {}
for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local key = record_prefix .. m
  local raw = redis.call('GET', key)
  if raw then
    out[#out + 1] = raw
    out[#out + 1] = redis.call('PTTL', key)
  else
    redis.call('ZREM', index, m)
  end
end
return out
"#;

/// Sliding expiry: pushes a mortal token's TTL out to the given value (never shortens it, never
/// touches immortal tokens, never passes the issued lifetime or the absolute expiry; only
/// extensions of a second or more)
/// and keeps the user's index alive at least as long.
///
/// KEYS: record. ARGV: TTL ms, index key prefix. Returns 1 if refreshed, else 0.
pub const REFRESH: &str = concat!(
    ttl_helpers!(),
    r#"
local ttl = tonumber(ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then return 0 end
local left, lifetime = limits(KEYS[1])
if lifetime and lifetime < ttl then ttl = lifetime end
if left and left < ttl then ttl = left end
-- refresh only what it extends by a second or more (clamped TTLs differ by clock noise)
if ttl - pttl < 1000 then return 0 end
redis.call('PEXPIRE', KEYS[1], ttl)
local ok, rec = pcall(cjson.decode, redis.call('GET', KEYS[1]))
if ok and type(rec) == 'table' and type(rec.user) == 'string' then
  local index = ARGV[2] .. rec.user
  local ittl = redis.call('PTTL', index)
  if ittl >= 0 and ittl < ttl + 1000 then redis.call('PEXPIRE', index, ttl + 1000) end
end
return 1
"#
);

/// Removes from an outbox the digests a companion has copied to the feed (one occurrence each,
/// so digests revoked again meanwhile stay for the next drain).
///
/// KEYS: outbox. ARGV: the digests copied. Returns how many were removed.
pub const OUTBOX_DONE: &str = r#"
local removed = 0
for _, m in ipairs(ARGV) do removed = removed + redis.call('LREM', KEYS[1], 1, m) end
return removed
"#;

/// Revocation feed entries read per page; a full page means more are waiting.
pub const FEED_PAGE_SIZE: usize = 1000;

/// Reads the revocation feed after a cursor, in one round trip (the companion's feed endpoint and
/// the Redis-callout filter both use it). Without a cursor it returns the current tail, so a new
/// poller starts from now. It reports `reset` when entries after the cursor were lost (trimmed or
/// deleted, or the feed restarted below the cursor): the poller must drop every cached verdict.
///
/// KEYS: feed. ARGV: cursor (`` for the tail), page size. Returns `{cursor, reset (0/1), digests...}`.
pub const FEED: &str = r#"
local feed, cursor, count = KEYS[1], ARGV[1], tonumber(ARGV[2])
local function tail()
  local last = redis.call('XREVRANGE', feed, '+', '-', 'COUNT', 1)
  if last[1] then return last[1][1] end
  return '0-0'
end
local function id(s)
  local ms, seq = string.match(s or '0-0', '^(%d+)-(%d+)$')
  return tonumber(ms or 0), tonumber(seq or 0)
end
local function before(a, b)
  local am, as = id(a)
  local bm, bs = id(b)
  return am < bm or (am == bm and as < bs)
end
if cursor == '' then return {tail(), 0} end
if not string.match(cursor, '^%d+-%d+$') then return redis.error_reply('ERR bad cursor') end
if redis.call('EXISTS', feed) == 0 then
  if cursor == '0-0' then return {'0-0', 0} end
  return {'0-0', 1}
end
local info = redis.call('XINFO', 'STREAM', feed)
local field = {}
for i = 1, #info, 2 do field[info[i]] = info[i + 1] end
local lost
if cursor == '0-0' then
  -- from an empty start: lost iff anything was ever trimmed
  lost = (field['entries-added'] or 0) > (field['length'] or 0)
else
  -- trimming removes the oldest entries: nothing after the cursor is lost while it is still there
  lost = #redis.call('XRANGE', feed, cursor, cursor) == 0
end
if before(cursor, field['max-deleted-entry-id']) or before(field['last-generated-id'], cursor) then lost = true end
if lost then return {tail(), 1} end
local out = {cursor, 0}
for _, entry in ipairs(redis.call('XRANGE', feed, '(' .. cursor, '+', 'COUNT', count)) do
  out[1] = entry[1]
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then out[#out + 1] = fields[i + 1] end
  end
end
return out
"#;
