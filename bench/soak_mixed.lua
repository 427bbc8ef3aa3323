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
done = function(summary, latency, reqs)
  local e = summary.errors
  io.write(string.format('SOAK {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
