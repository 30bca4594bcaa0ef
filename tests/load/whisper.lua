-- wrk script: supervision actions under load. Each request whispers to one of the
-- conversations the supervisor monitors (ids in $SWITCHBOARD_BENCH_IDS, one per line), round
-- robin; every whisper is a durable engine command (record, timeline entry, outbox entry).
local ids = {}
for line in io.lines(os.getenv("SWITCHBOARD_BENCH_IDS")) do
  ids[#ids + 1] = line
end
local token = os.getenv("SWITCHBOARD_BENCH_TOKEN")
local counter = 0

function setup(thread)
  thread:set("offset", math.random(#ids))
end

request = function()
  counter = counter + 1
  local id = ids[((counter + (offset or 0)) % #ids) + 1]
  return wrk.format("POST", "/v1/conversations/" .. id .. "/whisper", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, '{"text":"Offer the refund, then close politely"}')
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format(
    "{\"requests\": %d, \"seconds\": %.2f, \"requests_per_second\": %.0f, \"non_2xx\": %d, \"latency_ms\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}}\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
