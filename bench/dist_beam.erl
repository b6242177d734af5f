%% BEAM reference for the distribution bench: the shapes of bench/dist.lua
%% on two BEAM nodes over loopback, in the same run.
%%
%% Usage: escript bench/dist_beam.erl SHAPE COUNT REPS
%%   SHAPE: pingpong | oneway
%% This node becomes bench_a@127.0.0.1; it starts bench_b@127.0.0.1 as a
%% separate OS process with OTP's `peer` (OTP 25 or later; same cookie, distribution over
%% TCP, plain and unencrypted as BEAM's default), loads this module there,
%% and spawns the echo or the sink on it. epmd is started if it is not
%% running (`epmd -daemon`). Prints one tab-separated line per shape:
%%   shape <TAB> median <TAB> unit <TAB> samples...
%% A Lua table {seq = i, tag = "x"} is the map #{seq => I, tag => <<"x">>}.
-module(dist_beam).
-mode(compile).
-export([main/1, echo/1, sink/2]).

main([Shape, Count0, Reps0]) when Shape =:= "pingpong"; Shape =:= "oneway" ->
    Count = list_to_integer(Count0),
    Reps = list_to_integer(Reps0),
    os:cmd("epmd -daemon"),
    Cookie = list_to_atom("bench_" ++ integer_to_list(erlang:unique_integer([positive]))
                          ++ "_" ++ os:getpid()),
    Suffix = os:getpid(),
    {ok, _} = net_kernel:start([list_to_atom("bench_a" ++ Suffix ++ "@127.0.0.1"), longnames]),
    erlang:set_cookie(node(), Cookie),
    {ok, Peer, B} = peer:start_link(#{name => list_to_atom("bench_b" ++ Suffix),
                                      host => "127.0.0.1", longnames => true,
                                      args => ["-setcookie", atom_to_list(Cookie)]}),
    {ok, ?MODULE, Bin} = compile:file(escript:script_name(), [binary]),
    {module, ?MODULE} = rpc:call(B, code, load_binary, [?MODULE, "dist_beam.erl", Bin]),
    case Shape of
        "pingpong" -> rep("dist_pingpong", "us/rt", Reps, fun() -> pingpong(B, Count) end);
        "oneway" -> rep("dist_oneway", "msg/s", Reps, fun() -> oneway(B, Count) end)
    end,
    peer:stop(Peer);
main(_) ->
    io:format(standard_error, "usage: escript bench/dist_beam.erl pingpong|oneway COUNT REPS~n", []),
    halt(2).

now_s() -> erlang:monotonic_time(nanosecond) / 1.0e9.

rep(Shape, Unit, Reps, F) ->
    Vs = [F() || _ <- lists:seq(1, Reps)],
    S = lists:sort(Vs),
    N = length(S),
    Med = case N rem 2 of
              1 -> lists:nth(N div 2 + 1, S);
              0 -> (lists:nth(N div 2, S) + lists:nth(N div 2 + 1, S)) / 2
          end,
    io:format("~s\t~s\t~s\t~s~n",
              [Shape, g(Med), Unit, lists:join(",", [g(V) || V <- Vs])]).

g(V) -> io_lib:format("~.4g", [float(V)]).

%% ping-pong: N round trips between this process and an echo on node B
pingpong(B, N) ->
    Echo = spawn(B, ?MODULE, echo, [self()]),
    pp_loop(Echo, 100),   % warm-up, not timed
    T0 = now_s(),
    pp_loop(Echo, N),
    Dt = now_s() - T0,
    Echo ! stop,
    Dt / N * 1.0e6.

echo(Parent) ->
    receive stop -> ok; M -> Parent ! M, echo(Parent) end.

pp_loop(_, 0) -> ok;
pp_loop(Echo, N) ->
    Echo ! N,
    receive N -> pp_loop(Echo, N - 1) after 10000 -> exit(no_reply) end.

%% one-way: N maps streamed to a sink on node B, which reports when the last
%% one came; a sender is suspended while the distribution buffer is busy
oneway(B, N) ->
    Sink = spawn(B, ?MODULE, sink, [self(), N]),
    T0 = now_s(),
    ow_send(Sink, 1, N),
    receive
        {done, N, 0} -> N / (now_s() - T0);
        {done, Got, Bad} -> exit({oneway, N, Got, Bad})
    after 60000 -> exit(no_report)
    end.

ow_send(_, I, N) when I > N -> ok;
ow_send(Sink, I, N) ->
    Sink ! #{seq => I, tag => <<"x">>},
    ow_send(Sink, I + 1, N).

sink(Parent, N) -> sink(Parent, N, 1, 0, 0).

sink(Parent, 0, _, Got, Bad) -> Parent ! {done, Got, Bad};
sink(Parent, Left, Expect, Got, Bad) ->
    receive
        #{seq := S, tag := <<"x">>} ->
            sink(Parent, Left - 1, S + 1, Got + 1, Bad + if S =:= Expect -> 0; true -> 1 end)
    after 10000 -> Parent ! {done, Got, Bad}
    end.
