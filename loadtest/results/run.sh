#!/bin/sh
# The measurements recorded in RESULTS.md. Server pinned to CPU 0, harness on CPU 1.
set -x
LT=/work/scratch/loadtest/target/release/roomcast-loadtest
RC=/work/target-lt/release/roomcast
R=/work/scratch/results
cd $R
$LT compare --roomcast $RC idle --connections 10000 --rooms 100 --duration 10s --server-cpu 0 --source-ips 127.0.0.2-127.0.0.9 --quiet --json-out $R/idle.json --plot $R/idle.svg > $R/idle.txt 2>&1; echo "exit $?" >> $R/idle.txt
$LT compare --roomcast $RC fanout --rooms 1 --members 1000 --publishers 1 --rate 100 --duration 20s --server-cpu 0 --quiet --json-out $R/fanout.json --plot $R/fanout.svg > $R/fanout.txt 2>&1; echo "exit $?" >> $R/fanout.txt
$LT compare --roomcast $RC chat --rooms 1000 --members 10 --room-rate 1 --duration 20s --server-cpu 0 --source-ips 127.0.0.2-127.0.0.9 --quiet --json-out $R/chat.json --plot $R/chat.svg > $R/chat.txt 2>&1; echo "exit $?" >> $R/chat.txt
$LT compare --roomcast $RC ramp --rooms 1 --members 1000 --rates 50,100,200,400,800 --step 10s --max-p99 100ms --server-cpu 0 --quiet --json-out $R/ramp.json --plot $R/ramp.svg > $R/ramp.txt 2>&1; echo "exit $?" >> $R/ramp.txt
echo ALLDONE > $R/done
# Added: a small room at high message rates (per-message cost, not per-delivery).
$LT compare --roomcast $RC ramp --rooms 1 --members 10 --rates 1000,2000,4000,8000,16000,32000 --step 5s --max-p99 100ms --server-cpu 0 --quiet --json-out $R/ramp-small.json --plot $R/ramp-small.svg > $R/ramp-small.txt 2>&1; echo "exit $?" >> $R/ramp-small.txt
