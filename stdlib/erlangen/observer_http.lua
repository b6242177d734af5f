-- erlangen.observer_http — HTTP/1.1 requests and responses over a luasocket client, for the web observer.
--
-- Security invariant: every byte read from the client is bounded and every
-- wait has a deadline, so a client can hold at most one short-lived process
-- (the caller) for at most LIMITS.head_seconds (+ body_seconds). A request
-- that breaks a bound is answered with its status and never parsed further.
--
-- Conventions: read_request returns a request table, or nil, status, message
-- (status 0: the client went away or said nothing in time, answer nothing).
-- One request per connection: every response says "Connection: close".
--
-- Interface:
--   http.LIMITS                   the bounds (below)
--   http.adopt(fd) -> client      a luasocket client for a connected socket's fd
--   http.read_request(sock) -> {method, target, path, query, headers, body} | nil, status, message
--   http.respond(sock, status, headers, body) -> true | nil, err
--   http.start_stream(sock, headers) / http.write(sock, data) -> true | nil, err
--   http.parse_query(s) -> {key = value}
--   http.REASONS[status]          reason phrases
local socket = require "socket"

local http = {}

http.LIMITS = {
  line = 8192,         -- bytes of the request line
  head = 16384,        -- bytes of the request line and headers together
  headers = 64,        -- header fields
  body = 4096,         -- bytes of a body (only POST /api/kill has one)
  head_seconds = 10,   -- from accept to the end of the headers
  body_seconds = 5,    -- for the body
  write_seconds = 10,  -- for each response or stream write
}
local LIMITS = http.LIMITS

http.REASONS = {
  [200] = "OK", [204] = "No Content", [400] = "Bad Request", [401] = "Unauthorized",
  [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [411] = "Length Required", [413] = "Content Too Large",
  [414] = "URI Too Long", [415] = "Unsupported Media Type", [421] = "Misdirected Request",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

-- A luasocket client object for `fd`, a connected TCP socket that the
-- calling process now owns (its state closes it). A luasocket object
-- cannot be sent to another process, but its fd can: the acceptor gives up
-- the fd (setfd(-1)) and the connection's process wraps it here. luasocket
-- has no constructor from an fd, so a fresh object takes it and the client
-- class (registered by luasocket under "tcp{client}").
function http.adopt(fd)
  local s = assert(socket.tcp())
  s:close()
  s:setfd(fd)
  debug.setmetatable(s, debug.getregistry()["tcp{client}"])
  return s
end

-- Reads what the client has sent, waiting until `deadline` (erlangen.now()
-- seconds) at most; returns the bytes, or nil, "timeout" | "closed".
local function read_some(sock, deadline)
  local erlangen = require "erlangen"
  local wait = deadline - erlangen.now()
  if wait <= 0 then return nil, "timeout" end
  local ready = socket.select({sock}, nil, wait)
  if not ready[sock] and not ready[1] then return nil, "timeout" end
  sock:settimeout(0)
  local data, err, partial = sock:receive(8192)
  data = data or partial
  if data and data ~= "" then return data end
  return nil, err == "timeout" and "timeout" or "closed"
end

-- "%41b" -> "Ab"; "+" is a space (form and query encoding).
local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function http.parse_query(s)
  local q = {}
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    q[unescape(k)] = unescape(v)
  end
  return q
end

-- The request line and headers in `head` (without the final blank line):
-- a request table, or nil, status, message.
local function parse_head(head)
  local lines = {}
  for line in (head .. "\r\n"):gmatch("(.-)\r?\n") do lines[#lines + 1] = line end
  local method, target, version = lines[1]:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return nil, 400, "malformed request line" end
  if version ~= "1.1" and version ~= "1.0" then return nil, 505, "HTTP/" .. version .. " is not served" end
  if #lines - 1 > LIMITS.headers then return nil, 431, "more than " .. LIMITS.headers .. " header fields" end
  local headers = {}
  for i = 2, #lines do
    local k, v = lines[i]:match("^([%w!#$%%&'*+.^_`|~-]+):[ \t]*(.-)[ \t]*$")
    if not k then return nil, 400, "malformed header field" end
    k = k:lower()
    headers[k] = headers[k] and headers[k] .. ", " .. v or v
  end
  local path, query = target:match("^([^?#]*)%??([^#]*)")
  if path:sub(1, 1) ~= "/" then return nil, 400, "the target must be a path" end
  return {method = method, target = target, path = path, query = http.parse_query(query),
          headers = headers}
end

function http.read_request(sock)
  local erlangen = require "erlangen"
  local deadline = erlangen.now() + LIMITS.head_seconds
  local buf, head, rest = "", nil, nil
  while true do
    local at, e = buf:find("\r?\n\r?\n")
    if at then
      head, rest = buf:sub(1, at - 1), buf:sub(e + 1)
      break
    end
    if not buf:find("\n", 1, true) and #buf > LIMITS.line then
      return nil, 414, "request line longer than " .. LIMITS.line .. " bytes"
    end
    if #buf > LIMITS.head then return nil, 431, "headers longer than " .. LIMITS.head .. " bytes" end
    local data, why = read_some(sock, deadline)
    if not data then
      if buf == "" then return nil, 0, why end
      return nil, why == "timeout" and 408 or 0, "the request did not end in time"
    end
    buf = buf .. data
  end
  if #head > LIMITS.head then return nil, 431, "headers longer than " .. LIMITS.head .. " bytes" end
  local req, status, message = parse_head(head)
  if not req then return nil, status, message end
  if req.headers["transfer-encoding"] then return nil, 411, "a body needs Content-Length" end
  local len = req.headers["content-length"]
  if len and not len:match("^%d+$") then return nil, 400, "bad Content-Length" end
  len = tonumber(len) or 0
  if len > LIMITS.body then return nil, 413, "bodies are limited to " .. LIMITS.body .. " bytes" end
  local body_deadline = erlangen.now() + LIMITS.body_seconds
  while #rest < len do
    local data = read_some(sock, body_deadline)
    if not data then return nil, 408, "the body did not arrive in time" end
    rest = rest .. data
  end
  req.body = rest:sub(1, len)
  return req
end

-- Sends all of `data` within LIMITS.write_seconds.
function http.write(sock, data)
  sock:settimeout(LIMITS.write_seconds, "t")
  local ok, err = sock:send(data)
  if not ok then return nil, err end
  return true
end

local function head_of(status, headers)
  local out = {string.format("HTTP/1.1 %d %s", status, http.REASONS[status] or "Unknown")}
  for k, v in pairs(headers) do out[#out + 1] = k .. ": " .. v end
  out[#out + 1] = "Connection: close"
  out[#out + 1] = "Cache-Control: no-store"
  out[#out + 1] = "X-Content-Type-Options: nosniff"
  out[#out + 1] = "\r\n"
  return table.concat(out, "\r\n")
end

-- Writes a whole response; headers is {name = value} (Content-Length is added).
function http.respond(sock, status, headers, body)
  body = body or ""
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  h["Content-Length"] = tostring(#body)
  return http.write(sock, head_of(status, h) .. body)
end

-- Writes the head of a 200 response whose body follows in http.write calls
-- until the connection closes (Server-Sent Events).
function http.start_stream(sock, headers)
  return http.write(sock, head_of(200, headers or {}))
end

return http
