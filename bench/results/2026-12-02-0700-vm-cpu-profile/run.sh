#!/bin/bash
# usage: run.sh BIN TAG [perf]   -- one 2 GiB loopback transfer; CPU per end via /usr/bin/time -v
set -u
BIN=$1; TAG=$2; PERF=${3:-}
D=/var/tmp/cpu13/runs/$TAG; rm -rf $D; mkdir -p $D/out $D/rs $D/ss
PORT=$((20000 + RANDOM % 20000))
SECRET=cpu13-secret
if [ "$PERF" = perf ]; then
  RPRE="/usr/bin/perf record -e cpu-clock -F 999 -g --call-graph dwarf,16384 -o $D/recv.perf.data --"
  SPRE="/usr/bin/perf record -e cpu-clock -F 999 -g --call-graph dwarf,16384 -o $D/send.perf.data --"
elif [ "$PERF" = stat ]; then
  EV=syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_ppoll,syscalls:sys_enter_futex,syscalls:sys_enter_pread64,syscalls:sys_enter_read,syscalls:sys_enter_pwrite64,syscalls:sys_enter_write,syscalls:sys_enter_pwritev,syscalls:sys_enter_preadv,context-switches
  RPRE="/usr/bin/perf stat -e $EV -o $D/recv.stat --"; SPRE="/usr/bin/perf stat -e $EV -o $D/send.stat --"
else RPRE=""; SPRE=""; fi
/usr/bin/time -v -o $D/recv.time $RPRE $BIN receive --listen 127.0.0.1:$PORT --output-dir $D/out --state-dir $D/rs --secret $SECRET --once --quiet > $D/recv.log 2>&1 &
RP=$!
sleep 0.5
START=$(date +%s.%N)
/usr/bin/time -v -o $D/send.time $SPRE $BIN send /var/tmp/cpu13/big.bin --to 127.0.0.1:$PORT --secret $SECRET --state-dir $D/ss --json ${SENDARGS:-} > $D/send.json 2> $D/send.err
SRC=$?
wait $RP; RRC=$?
END=$(date +%s.%N)
cpu() { awk -F': ' '/User time/{u=$2}/System time/{s=$2}END{printf "%.2f %.2f", u, s}' $1; }
read SU SS <<<"$(cpu $D/send.time)"; read RU RS <<<"$(cpu $D/recv.time)"
GB=2.147483648
WALL=$(echo "$END - $START" | bc)
GOOD=$(grep '"summary"' $D/send.json | sed 's/.*"goodput_mbps":\([0-9.]*\).*/\1/')
printf "%s rc=%s/%s wall=%.2fs goodput=%sMbit send u=%s s=%s (%.2f s/GB) recv u=%s s=%s (%.2f s/GB) total %.2f s/GB\n" \
  $TAG $SRC $RRC $WALL "$GOOD" $SU $SS $(echo "($SU+$SS)/$GB" | bc -l) $RU $RS $(echo "($RU+$RS)/$GB" | bc -l) $(echo "($SU+$SS+$RU+$RS)/$GB" | bc -l) | tee -a /var/tmp/cpu13/results.txt
cmp -s /var/tmp/cpu13/big.bin $D/out/big.bin || echo "$TAG: OUTPUT DIFFERS" | tee -a /var/tmp/cpu13/results.txt
rm -f $D/out/big.bin
