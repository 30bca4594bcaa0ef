-- wrk script: the ongoing conversations report with a filter, as a supervisor.
local token = os.getenv("SWITCHBOARD_BENCH_TOKEN")
local path = os.getenv("SWITCHBOARD_BENCH_PATH") or "/v1/conversations?state=active&queue=support-chat"

request = function()
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end

done = function(summary, latency, requests)
  io.write(string.format(
    "{\"requests\": %d, \"seconds\": %.2f, \"requests_per_second\": %.0f, \"non_2xx\": %d, \"latency_ms\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}}\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
