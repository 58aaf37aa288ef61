-- wrk script: GET with "Authorization: DPoP <token>" and "DPoP: <proof>", each line of $PROOFS_FILE
-- ("<token> <proof>", every proof fresh and for this URL) sent once, in order (a proof is accepted
-- once: the file holds more than the run sends). Prints one JSON line when done.
package.path = (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua;" .. package.path
local report = require("report")
local lines = {}
local i = 0
local path = os.getenv("BENCH_PATH") or "/api/bench"

function init(args)
  for line in io.lines(os.getenv("PROOFS_FILE")) do
    local token, proof = line:match("^(%S+) (%S+)$")
    if token then lines[#lines + 1] = { token, proof } end
  end
end

function request()
  i = i % #lines + 1
  local line = lines[i]
  return wrk.format("GET", path, { ["Authorization"] = "DPoP " .. line[1], ["DPoP"] = line[2] })
end

done = report
