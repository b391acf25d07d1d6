-- wrk cross-check (copied from ../shared/bench): sends WRK_PATH (absolute URI when pointed at a proxy) and prints
-- one line. usage: WRK_PATH=http://127.0.0.1:ORIGIN/1k WRK_HOST=127.0.0.1:ORIGIN wrk -t1 -c50 -d5s -s bench/wrk-abs.lua http://PROXY
local path = os.getenv("WRK_PATH") or "/1k"
wrk.headers["Host"] = os.getenv("WRK_HOST") or "127.0.0.1:19080"
request = function() return wrk.format("GET", path) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON{"req_per_s":%d,"requests":%d,"secs":%.2f,"p50_ms":%.2f,"p99_ms":%.2f,"errors":%d,"non2xx":%d}\n',
    math.floor(summary.requests / (summary.duration / 1e6)), summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
