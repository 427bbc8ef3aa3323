-- wrk script: cycle through a mix of operations (bodies prepared by bench/soak.py in $SOAK_DIR).
local dir = os.getenv("SOAK_DIR")
local function read(name)
  local f = assert(io.open(dir .. "/" .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local requests = {}
local i = 0
-- SOAK_REQUESTS, when set: after that many replies this thread stops and leaves a file
-- done-<id> in $SOAK_DIR; bench/soak.py interrupts wrk once every thread has (wrk itself
-- always sleeps its whole -d, which is then only the upper bound)
local limit = tonumber(os.getenv("SOAK_REQUESTS") or "")
local replies = 0
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
init = function(args)
  for line in io.lines(dir .. "/plan.txt") do
    local path, ctype, file = line:match("^(%S+) (%S+) (%S+)$")
    requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = ctype, ["Accept"] = "application/json"}, read(file))
  end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
if limit then
  response = function(status, headers, body)
    replies = replies + 1
    if replies == limit then
      local f = assert(io.open(dir .. "/done-" .. id, "w"))
      f:close()
      wrk.thread:stop()
    end
  end
end
done = function(summary, latency, reqs)
  local e = summary.errors
  io.write(string.format('SOAK {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
