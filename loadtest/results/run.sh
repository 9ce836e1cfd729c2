#!/bin/sh
# The measurements in docs/benchmarks.md: roomcast against the speed-of-light baseline, same
# scenarios, server pinned to CPU 0 and harness to CPU 1. Run from the repository root after
# `cargo build --release --workspace`.
set -x
LT=target/release/roomcast-loadtest
RC=target/release/roomcast
R=loadtest/results
run() { name=$1; shift; $LT compare --roomcast $RC "$@" --server-cpu 0 --quiet --json-out $R/$name.json --plot $R/$name.svg > $R/$name.txt 2>&1; echo "exit $?" >> $R/$name.txt; }
run idle idle --connections 10000 --rooms 100 --duration 10s --source-ips 127.0.0.2-127.0.0.9
run fanout fanout --rooms 1 --members 1000 --publishers 1 --rate 100 --duration 20s
run chat chat --rooms 1000 --members 10 --room-rate 1 --duration 20s --source-ips 127.0.0.2-127.0.0.9
run ramp ramp --rooms 1 --members 1000 --rates 50,100,200,400,800 --step 10s --max-p99 100ms
run ramp-small ramp --rooms 1 --members 10 --rates 1000,2000,4000,8000,16000,32000 --step 5s --max-p99 100ms
run churn churn --rate 200 --rooms 10 --duration 10s
echo ALLDONE > $R/done
