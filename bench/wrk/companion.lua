-- wrk script against the companion alone: BENCH_MODE=issue posts /v1/tokens for rotating users;
-- BENCH_MODE=introspect posts /v1/introspect for the tokens in $TOKENS_FILE. Needs $ADMIN_KEY.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local report = require("report")
local mode = os.getenv("BENCH_MODE") or "issue"
local auth = "Bearer " .. (os.getenv("ADMIN_KEY") or "")
local tokens = {}
local n = 0

function init(args)
  local file = os.getenv("TOKENS_FILE")
  if file then
    for line in io.lines(file) do tokens[#tokens + 1] = line end
  end
  n = math.random(100000)
end

function request()
  n = n + 1
  if mode == "introspect" and #tokens > 0 then
    local t = tokens[n % #tokens + 1]
    return wrk.format("POST", "/v1/introspect",
      { ["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded" }, "token=" .. t)
  end
  return wrk.format("POST", "/v1/tokens",
    { ["Authorization"] = auth, ["Content-Type"] = "application/json" },
    '{"user":"bench-' .. (n % 20000) .. '","device":"wrk"}')
end

done = report
