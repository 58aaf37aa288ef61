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

-- The activity key beside a record: `:t:` becomes `:a:` (as KeyLayout::activity_key builds it).
local function activity_of(record_key)
  return (string.gsub(record_key, ':t:(%x+)$', ':a:%1'))
end

-- Deletes a record and the activity beside it (same hash tag, same slot).
local function drop_record(record_key)
  redis.call('DEL', record_key, activity_of(record_key))
end

-- The public id in a record (for the audit trail), '' if it has none.
local function id_of(raw)
  local ok, rec = pcall(cjson.decode, raw or '')
  if ok and type(rec) == 'table' and type(rec.id) == 'string' then return rec.id end
  return ''
end

-- Creation order: server time in microseconds, strictly after the user's newest token.
local function next_score(index)
  local t = redis.call('TIME')
  local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
  return score
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When a record expires, as an expiry-index score: Unix ms, 'inf' if immortal, nil if gone.
local function expiry_of(key)
  local pttl = redis.call('PTTL', key)
  if pttl == -1 then return 'inf' end
  if pttl < 0 then return nil end
  return now_ms() + pttl
end

-- Scores a member by its record's expiry, or drops it from both indexes if the record is gone.
local function track(index, expiry, record_prefix, member)
  local at = expiry_of(record_prefix .. member)
  if at then
    redis.call('ZADD', expiry, at, member)
  else
    redis.call('ZREM', index, member)
    redis.call('ZREM', expiry, member)
  end
end

-- Prunes expired members by score (each once, however many tokens the user ever had; a record
-- re-armed meanwhile is re-scored) and returns how many are live. An index written before the
-- expiry index existed is scored once, record by record.
local function prune(index, expiry, record_prefix)
  if redis.call('ZCARD', expiry) ~= redis.call('ZCARD', index) then
    redis.call('DEL', expiry)
    for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do track(index, expiry, record_prefix, m) end
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now_ms())) do
    track(index, expiry, record_prefix, m)
  end
  return redis.call('ZCARD', index)
end

-- Keeps both indexes alive exactly as long as the longest-lived record (forever if one is
-- immortal), from the expiry index alone.
local function fit_index_ttl(index, expiry)
  if redis.call('ZCARD', index) == 0 then
    redis.call('DEL', index, expiry)
    return
  end
  local last = redis.call('ZRANGE', expiry, -1, -1, 'WITHSCORES')
  if last[2] == nil or last[2] == 'inf' then
    redis.call('PERSIST', index)
    redis.call('PERSIST', expiry)
    return
  end
  local at = math.floor(tonumber(last[2])) + 1000
  redis.call('PEXPIREAT', index, at)
  redis.call('PEXPIREAT', expiry, at)
end
"#
    };
}

mod calls;
mod feed;
mod revoke;

pub use calls::{
    activity_call, feed_call, feed_page, lookup_call, refresh_call, LookupReply, ScriptCall, SharedScript,
};
pub use feed::{FEED, FEED_PAGE_SIZE};
pub use revoke::{OUTBOX_DONE, OUTBOX_FORGET, REVOKE, REVOKE_ALL, REVOKE_BY_ID};

/// Issues a token: prune, enforce the per-user limit, reset other tokens' TTL, store, index.
/// Its cost is bounded by the user's live tokens (at most `max_tokens_per_user`), never by how
/// many the user ever had: expired ones are pruned by score.
///
/// KEYS: index, new record, outbox, expiry index. ARGV: member (digest hex), record JSON, new
/// token TTL ms (0 = never), reset TTL ms (0 = never), reset on login (1/0), overwrite immortal
/// TTL (1/0), max tokens (0 = unlimited), policy (`reject` | `evict_oldest`), record key prefix.
/// Returns `{status, first, ttl_reset, evicted...}`: status 0 ok, 1 limit reached, 2 duplicate
/// digest; `ttl_reset` counts the user's other tokens whose lifetime this login reset; `evicted`
/// are the public ids of the tokens evicted to make room.
pub const ISSUE: &str = concat!(
    prelude!(),
    ttl_helpers!(),
    r#"
local index, record, outbox, expiry, member = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local record_prefix = ARGV[9]
if redis.call('EXISTS', record) == 1 then return {2, 0, 0} end
local count = prune(index, expiry, record_prefix)
local first = 0
if count == 0 then first = 1 end
local result = {0, first, 0}
local max = tonumber(ARGV[7])
if max > 0 and count >= max then
  if ARGV[8] ~= 'evict_oldest' then return {1, first, 0} end
  local evicted = redis.call('ZRANGE', index, 0, count - max)
  for _, m in ipairs(evicted) do
    result[#result + 1] = id_of(redis.call('GET', record_prefix .. m))
    drop_record(record_prefix .. m)
    redis.call('ZREM', index, m)
    redis.call('ZREM', expiry, m)
  end
  to_outbox(outbox, evicted)
end
local reset = tonumber(ARGV[4])
local already = false
if ARGV[5] == '1' and reset > 0 then
  -- every token was re-armed within the last 1 % of the TTL (at most a minute): a user logging
  -- in again and again; the expiry index says so in O(log n), and nothing is walked
  local soonest = redis.call('ZRANGE', expiry, 0, 0, 'WITHSCORES')
  local latest = redis.call('ZRANGE', expiry, -1, -1, 'WITHSCORES')
  local immortal_to_reset = ARGV[6] == '1' and latest[2] == 'inf'
  local slack = math.min(60000, math.floor(reset / 100))
  if soonest[2] and soonest[2] ~= 'inf' and not immortal_to_reset and tonumber(soonest[2]) >= now_ms() + reset - slack then
    already = true
    result[3] = redis.call('ZCOUNT', expiry, '-inf', '(inf') -- the mortal ones: what a reset re-arms
  end
end
if ARGV[5] == '1' and not already then
  for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local key = record_prefix .. m
    local pttl = redis.call('PTTL', key)
    if reset == 0 then
      if pttl >= 0 then set_ttl(key, 0); result[3] = result[3] + 1 end
      track(index, expiry, record_prefix, m)
    elseif pttl >= 0 or ARGV[6] == '1' then
      set_ttl(key, reset)
      result[3] = result[3] + 1
      track(index, expiry, record_prefix, m)
    end
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', record, ARGV[2], 'PX', ttl)
else
  redis.call('SET', record, ARGV[2])
end
redis.call('ZADD', index, string.format('%.0f', next_score(index)), member)
track(index, expiry, record_prefix, member)
fit_index_ttl(index, expiry)
return result
"#
);

/// Reads a token's record with its remaining TTL in one round trip, trying each digest it may be
/// stored under (the current hash key's first, then previous keys' during a rotation).
///
/// KEYS: the candidate record keys. Returns `{i, value, pttl}` for the first that exists (`i`
/// counts from 1), `{0}` if none does.
pub const LOOKUP: &str = r#"
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then return {i, value, redis.call('PTTL', key)} end
end
return {0}
"#;

/// Moves a record to the digest under the current hash key, resealed (re-keying), or reseals it
/// in place; only if it still holds what the companion read (a revoke meanwhile wins). Its TTL
/// and both index scores are kept. A move puts the old digest in the outbox, as a revocation
/// does: verdicts cached under it are dropped, and the next lookup finds the new digest.
///
/// KEYS: old record, new record, index, expiry index, outbox. ARGV: old member, new member,
/// value read, new value. Returns 1 if moved, else 0.
pub const REKEY: &str = concat!(
    prelude!(),
    r#"
local old, new = KEYS[1], KEYS[2]
if redis.call('GET', old) ~= ARGV[3] then return 0 end
if old == new then
  redis.call('SET', new, ARGV[4], 'KEEPTTL')
  return 1
end
if redis.call('EXISTS', new) == 1 then return 0 end
local pttl = redis.call('PTTL', old)
if pttl == -1 then
  redis.call('SET', new, ARGV[4])
elseif pttl > 0 then
  redis.call('SET', new, ARGV[4], 'PX', pttl)
else
  return 0
end
redis.call('DEL', old)
if redis.call('EXISTS', activity_of(old)) == 1 then redis.call('RENAME', activity_of(old), activity_of(new)) end
for _, index in ipairs({KEYS[3], KEYS[4]}) do
  local score = redis.call('ZSCORE', index, ARGV[1])
  if score then
    redis.call('ZREM', index, ARGV[1])
    redis.call('ZADD', index, score, ARGV[2])
  end
end
to_outbox(KEYS[5], {ARGV[1]})
return 1
"#
);

/// Rewrites records of one hash tag in place, in one step (suspend, resume: the companion resealed
/// the new values), each only if it still holds what the companion read (a revoke or another
/// rewrite meanwhile wins); TTLs are kept. Their digests go to the outbox as a revocation's do:
/// every edge drops what it cached.
///
/// KEYS: outbox, then the records. ARGV: for each record its value read, new value and member.
/// Returns, per record, 1 if rewritten, else 0.
pub const REWRITE: &str = concat!(
    prelude!(),
    r#"
local done, members = {}, {}
for i = 2, #KEYS do
  local at = (i - 2) * 3
  if redis.call('GET', KEYS[i]) == ARGV[at + 1] then
    redis.call('SET', KEYS[i], ARGV[at + 2], 'KEEPTTL')
    members[#members + 1] = ARGV[at + 3]
    done[i - 1] = 1
  else
    done[i - 1] = 0
  end
end
to_outbox(KEYS[1], members)
return done
"#
);

/// Lists a user's live tokens, oldest first, pruning dead index members.
///
/// KEYS: index, expiry index. ARGV: record key prefix. Returns `{member, json, pttl, activity
/// (nil if none), ...}`.
pub const LIST: &str = r#"
local index, expiry, record_prefix = KEYS[1], KEYS[2], ARGV[1]
local out = {}
for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local key = record_prefix .. m
  local raw = redis.call('GET', key)
  if raw then
    out[#out + 1] = m
    out[#out + 1] = raw
    out[#out + 1] = redis.call('PTTL', key)
    out[#out + 1] = redis.call('GET', (string.gsub(key, ':t:(%x+)$', ':a:%1')))
  else
    redis.call('ZREM', index, m)
    redis.call('ZREM', expiry, m)
  end
end
return out
"#;

/// Records a token's last activity beside its record, as long as the record lives; a report
/// older than what is stored (another edge's, delayed) changes nothing, nor one for a token no
/// longer live.
///
/// KEYS: activity (only: `EVAL` needs write access to every key it declares, and the gateway's
/// Redis user may write activity keys alone; the record beside it, `:a:` back to `:t:`, has the
/// same hash tag, so the same slot, and is only read). ARGV: seen at (Unix ms), the activity
/// JSON. Returns 1 if written.
pub const ACTIVITY: &str = r#"
local record, found = string.gsub(KEYS[1], ':a:(%x+)$', ':t:%1')
if found ~= 1 then return 0 end
local pttl = redis.call('PTTL', record)
if pttl == -2 then return 0 end
local old = redis.call('GET', KEYS[1])
if old then
  local ok, a = pcall(cjson.decode, old)
  if ok and type(a) == 'table' and type(a.seen_at_ms) == 'number' and a.seen_at_ms >= tonumber(ARGV[1]) then
    return 0
  end
end
if pttl == -1 then redis.call('SET', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', pttl) end
return 1
"#;

/// Sliding expiry: pushes a mortal token's TTL out to the given value (never shortens it, never
/// touches immortal tokens, never passes the issued lifetime or the absolute expiry; only
/// extensions of a second or more)
/// and keeps the user's index alive at least as long.
///
/// KEYS: record. ARGV: TTL ms, index key prefix, expiry index key prefix. Returns 1 if
/// refreshed, else 0.
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
-- the activity beside the record lives as long
local activity = string.gsub(KEYS[1], ':t:(%x+)$', ':a:%1')
if redis.call('PTTL', activity) >= 0 then redis.call('PEXPIRE', activity, ttl) end
local ok, rec = pcall(cjson.decode, redis.call('GET', KEYS[1]))
if ok and type(rec) == 'table' and type(rec.user) == 'string' then
  local index, expiry = ARGV[2] .. rec.user, (ARGV[3] or '') .. rec.user
  local ittl = redis.call('PTTL', index)
  if ittl >= 0 and ittl < ttl + 1000 then
    redis.call('PEXPIRE', index, ttl + 1000)
    if ARGV[3] then redis.call('PEXPIRE', expiry, ttl + 1000) end
  end
  local member = string.match(KEYS[1], ':t:(%x+)$')
  if ARGV[3] and member and redis.call('ZSCORE', expiry, member) then
    local t = redis.call('TIME')
    redis.call('ZADD', expiry, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl, member)
  end
end
return 1
"#
);
