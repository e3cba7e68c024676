-- Drains of bench/bench_scale.sh (parts 4 to 6): does nothing.
return function() end
