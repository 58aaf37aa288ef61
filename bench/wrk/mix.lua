-- wrk script for the realistic mix: of every 100 requests, 98 carry one of the hot tokens in
-- $HOT_FILE (cached after their first use), 1 a token from $NEW_FILE never used before (a login
-- that just happened: a cache miss), 1 a forged token from $BAD_FILE (unknown). Each thread starts
-- its new-token walk at its own offset so no new token is used twice. Prints one JSON line.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local report = require("report")
local hot, new, bad = {}, {}, {}
local n, next_new = 0, 0
local path = os.getenv("BENCH_PATH") or "/api/bench"

local function load(var, into)
  local file = os.getenv(var)
  if file then
    for line in io.lines(file) do into[#into + 1] = line end
  end
end

local thread_index = 0
function setup(thread)
  thread:set("thread_index", thread_index)
  thread_index = thread_index + 1
end

function init(args)
  load("HOT_FILE", hot)
  load("NEW_FILE", new)
  load("BAD_FILE", bad)
  math.randomseed(os.time() + (thread_index or 0) * 7919)
  next_new = (thread_index or 0) * 100000
end

function request()
  n = n + 1
  local token
  if n % 100 == 0 and #new > 0 then
    next_new = next_new + 1
    token = new[(next_new - 1) % #new + 1]
  elseif n % 100 == 50 and #bad > 0 then
    token = bad[math.random(#bad)]
  else
    token = hot[math.random(#hot)]
  end
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end

done = report
