#!/usr/bin/env escript
%% BEAM reference: the bench shapes of bench/erlangen.lua, written in Erlang.
%%
%% Usage: escript bench/beam.escript SHAPE COUNT REPS [RING_SIZE]
%%   SHAPE: pingpong | oneway | ring | spawn | procs | codec
%% Prints one tab-separated line per shape:
%%   shape <TAB> median <TAB> unit <TAB> samples...
%% The shapes mirror the Lua ones: the same counts, the same message shapes
%% (Lua tables become maps with atom keys, Lua strings become binaries).
-mode(compile).

main([Shape, Count0, Reps0 | Rest]) ->
    Count = list_to_integer(Count0),
    Reps = list_to_integer(Reps0),
    case Shape of
        "pingpong" -> rep("pingpong", "us/rt", Reps, fun() -> pingpong(Count) end);
        "oneway" -> rep("oneway", "msg/s", Reps, fun() -> oneway(Count) end);
        "ring" ->
            Size = case Rest of [S] -> list_to_integer(S); [] -> 1000 end,
            rep("ring", "us/hop", Reps, fun() -> ring(Size, Count) end);
        "spawn" -> rep("spawn", "us/spawn", Reps, fun() -> spawn_exit(Count) end);
        "procs" -> procs(Count);
        "codec" ->
            rep("codec_small", "us/op", Reps, fun() -> codec(small(), Count) end),
            rep("codec_1k", "us/op", Reps, fun() -> codec(nested(), Count div 10) end),
            io:format("codec_1k_bytes\t~b\tbytes\t~n", [byte_size(term_to_binary(nested()))])
    end;
main(_) ->
    io:format(standard_error, "usage: escript bench/beam.escript "
              "pingpong|oneway|ring|spawn|procs|codec COUNT REPS [RING_SIZE]~n", []),
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

%% ping-pong: round trips between the caller and an echo process
pingpong(N) ->
    Self = self(),
    Echo = spawn(fun() -> echo(Self) end),
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
    receive N -> pp_loop(Echo, N - 1) end.

%% one-way: the caller streams small maps to a counting receiver
oneway(N) ->
    Self = self(),
    Rx = spawn(fun() -> ow_count(Self, N) end),
    T0 = now_s(),
    ow_send(Rx, 1, N),
    receive {done, Rx} -> ok end,
    N / (now_s() - T0).

ow_send(_, I, N) when I > N -> ok;
ow_send(Rx, I, N) ->
    Rx ! #{seq => I, tag => <<"x">>},
    ow_send(Rx, I + 1, N).

ow_count(Parent, 0) -> Parent ! {done, self()};
ow_count(Parent, N) -> receive #{seq := _} -> ow_count(Parent, N - 1) end.

%% ring: N processes, a token passed Hops times; start-up is not timed
ring(N, Hops0) ->
    Hops = (Hops0 + N - 1) div N * N,
    Self = self(),
    First = lists:foldl(fun(_, Next) -> spawn(fun() -> ring_member(Next) end) end,
                        Self, lists:seq(1, N - 1)),
    T0 = now_s(),
    First ! Hops - 1,
    ring_main(First),
    Dt = now_s() - T0,
    First ! stop,
    receive stop -> ok end,   % the stop has gone round: the ring is gone
    Dt / Hops * 1.0e6.

ring_main(First) ->
    receive
        T when T =< 0 -> ok;
        T -> First ! T - 1, ring_main(First)
    end.

ring_member(Next) ->
    receive
        stop -> Next ! stop;
        T -> Next ! T - 1, ring_member(Next)
    end.

%% spawn + exit: spawn a process that returns at once, wait for its DOWN
spawn_exit(N) ->
    T0 = now_s(),
    se_loop(N),
    (now_s() - T0) / N * 1.0e6.

se_loop(0) -> ok;
se_loop(N) ->
    {Pid, Ref} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Ref, process, Pid, _} -> se_loop(N - 1) end.

%% live processes: spawn up to N idle processes blocked in receive
procs(N) ->
    erlang:garbage_collect(),
    R0 = rss_kib(),
    T0 = now_s(),
    Pids = [spawn(fun() -> receive stop -> ok end end) || _ <- lists:seq(1, N)],
    Dt = now_s() - T0,
    R1 = rss_kib(),
    Count = length([P || P <- Pids, is_process_alive(P)]),
    io:format("procs\t~b\tprocs\t~n", [Count]),
    io:format("procs_rss\t~s\tKiB/proc\t~n", [g((R1 - R0) / Count)]),
    io:format("procs_spawn\t~s\tus/spawn\t~n", [g(Dt / N * 1.0e6)]),
    [begin Ref = monitor(process, P), P ! stop, Ref end || P <- Pids],
    [receive {'DOWN', _, process, _, _} -> ok end || _ <- Pids],
    ok.

rss_kib() ->
    {ok, B} = file:read_file("/proc/self/status"),
    [L] = [L || L <- binary:split(B, <<"\n">>, [global]),
               binary:match(L, <<"VmRSS:">>) =/= nomatch],
    {match, [Kib]} = re:run(L, "([0-9]+)", [{capture, all_but_first, binary}]),
    binary_to_integer(Kib).

%% codec: term_to_binary + binary_to_term
small() -> #{id => 42, name => <<"alice">>, active => true, score => 3.5}.

nested() ->
    #{kind => <<"roster">>,
      version => 3,
      users => [#{id => I,
                  name => <<"user", (integer_to_binary(I))/binary>>,
                  email => <<"user", (integer_to_binary(I))/binary, "@example.org">>,
                  admin => I rem 3 == 0,
                  score => I * 1.5,
                  tags => [<<"a">>, <<"bb">>, <<"ccc">>]}
                || I <- lists:seq(1, 12)]}.

codec(T, N) ->
    T0 = now_s(),
    codec_loop(T, N),
    (now_s() - T0) / N * 1.0e6.

codec_loop(_, 0) -> ok;
codec_loop(T, N) ->
    T = binary_to_term(term_to_binary(T)),
    codec_loop(T, N - 1).
