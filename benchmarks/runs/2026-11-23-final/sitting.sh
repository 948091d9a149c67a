#!/bin/bash
# Second sitting: BEFORE (97a2821) and AFTER (bea0ffc) interleaved.
B=/tmp/stride-before; A=/tmp/stride-after; S=/tmp/sit2
stamp() { echo "[$(date -u +%FT%TZ)] $*; $(uptime)" >> $S/timeline.txt; }
full() { # dir name
  local dir=$1 name=$2
  stamp "start run_all $name (cd $dir && .venv/bin/python benchmarks/run_all.py --out $S/$name.log)"
  (cd $dir && .venv/bin/python benchmarks/run_all.py --out $S/$name.log > /dev/null 2>&1)
  stamp "end run_all $name rc=$?"
}
logrun() { # dir name args...
  local dir=$1 name=$2; shift 2
  stamp "start bench_log $name (cd $dir && .venv/bin/python benchmarks/bench_log.py $*)"
  (cd $dir && .venv/bin/python benchmarks/bench_log.py "$@" > $S/$name.log 2>&1)
  stamp "end bench_log $name rc=$?"
}
full $B before-1
full $A after-1
full $B before-2
full $A after-2
for n in 1 2; do
  logrun $B log400k-offline-before-$n --calls 400000 --mode offline
  logrun $A log400k-offline-after-$n --calls 400000 --mode offline
  logrun $B log400k-pin-before-$n --calls 400000 --pin
  logrun $A log400k-pin-after-$n --calls 400000 --pin
  logrun $B log400k-online-before-$n --calls 400000
  logrun $A log400k-online-after-$n --calls 400000
done
stamp "done"
