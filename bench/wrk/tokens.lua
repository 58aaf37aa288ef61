-- wrk script: GET with "Authorization: Bearer <token>", rotating over the tokens in $TOKENS_FILE
-- (one per line), starting at a random offset per thread; with $BENCH_REPEAT = n each token is sent
-- n times in a row (a burst: the requests of a page load). Prints one JSON line when done.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local report = require("report")
local tokens = {}
local i = 0
local sent = 0
local repeat_each = tonumber(os.getenv("BENCH_REPEAT") or "1")
local path = os.getenv("BENCH_PATH") or "/api/bench"

function init(args)
  local file = os.getenv("TOKENS_FILE")
  if file then
    for line in io.lines(file) do tokens[#tokens + 1] = line end
  end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 1000)
  if #tokens > 0 then i = math.random(#tokens) end
end

function request()
  if #tokens == 0 then
    return wrk.format("GET", path)
  end
  if sent % repeat_each == 0 then i = i % #tokens + 1 end
  sent = sent + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[i] })
end

done = report
