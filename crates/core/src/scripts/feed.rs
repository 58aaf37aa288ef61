//! The revocation feed read: one script for the companion and the Redis-callout filter.

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
