-- Ping-pong: the README's example. Run: build/erlangen examples/pingpong.lua
local erlangen = require "erlangen"
local pong = erlangen.spawn(function()
  while true do
    local msg = erlangen.receive()
    erlangen.send(msg.from, {from = erlangen.self(), n = msg.n + 1})
  end
end)
erlangen.send(pong, {from = erlangen.self(), n = 1})
print(erlangen.receive(5).n)  --> 2
