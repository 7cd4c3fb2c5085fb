#!/usr/bin/env bash
# Benchmarks e2image-rs against e2image and qemu-img on the same inputs, in the same run,
# and prints the ratios the project targets (docs: docs/performance.md).
#
#   benches/run.sh [--reps N] [--cold] [--usr IMG] [--big IMG] [--work DIR] [--only usr|big|snap|rollback|append|delta|apply|journal|stream|compress]
#
# Inputs are built in --work (default target/bench) unless given:
#   usr.img  8 GiB ext4 made with `mke2fs -t ext4 -d /usr usr.img 8G`   (takes minutes)
#   big.img  empty 15 TiB ext4 on a sparse file, `-E lazy_itable_init=1` (about 1.3 GB on disk)
#   snap/    a 2 GiB ext4 made from /usr/share and three older states of it (debugfs changes),
#            for the snapshot export: 3 snapshots against the current state alone; the
#   rb/      a 1G ext4 holding a 256 MiB file, and a newer state where it was rewritten: the
#            rollback of a copy of the newer state to the older one (-d image) is timed
#            against dd writing as many bytes (both flushed: fsync included)
#   usr2.img a copy of usr.img with about 5% of its data rewritten (files overwritten, added and
#            removed through a loop mount), for the archive append: appending usr2 to an archive
#            of usr is timed against a full export of usr2, -Q and -d; and for the deltas:
#            a delta usr..usr2 from the two image files against qemu-img compare and
#            qemu-img convert -B, and between two archive states (L2 entries compared); the
#            apply of that delta onto a copy of usr.img is timed against dd writing as many bytes
#   tib/     a sparse 1 TiB ext4 and a copy where a 1 GiB file was written (debugfs): the apply
#            of their delta must take time proportional to the 1 GiB, not to the 1 TiB
#   stream   usr.img again: -Q, -Q -d and -Q -c to standard output through a pipe (`| cat > FILE`,
#            `| wc -c`) against the same export to a file; the peak RSS is the stream's
#   jfs.img  a 4 GiB ext4 made from /usr/share with a 128 MiB journal filled by debugfs (30
#            committed transactions of 1000 blocks of random bytes each, for the blocks of a
#            120 MiB file): -Q --replay is timed against -Q (the faithful export)
# and, for -c (compress), usr.img again: -Q -c (zlib) against `qemu-img convert -c` of the plain
# -Q export (the way to compress without -c), and -Q -c --compression-type zstd against zlib:
# output sizes and wall times, on the machine's cores (2 here).
# Each command runs --reps times (default 5) after one warm-up; the median wall time and the
# peak RSS are reported. Page cache is warm, as in the reference timings; with --cold, the page
# cache is dropped (root: /proc/sys/vm/drop_caches) before every timed run, so each reads its
# input from the disk.
set -euo pipefail

reps=5 usr="" big="" work="" only="" cold=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --usr) usr="$2"; shift 2 ;;
    --big) big="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --cold) cold=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
work=${work:-$top/target/bench}
mkdir -p "$work"
bin=$top/target/release/e2image-rs
(cd "$top" && cargo build --release --quiet)
# A second build with the test hooks (fault injection) for the measurements that need them;
# the timed release binary has none.
binf=$top/target/bench-hooks/release/e2image-rs
(cd "$top" && cargo build --release --quiet --features fault-injection --target-dir target/bench-hooks)
for t in e2image qemu-img mke2fs /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

usr=${usr:-$work/usr.img}
big=${big:-$work/big.img}
if { [ -z "$only" ] || [ "$only" = usr ] || [ "$only" = append ] || [ "$only" = delta ] || [ "$only" = apply ] || [ "$only" = stream ] || [ "$only" = compress ]; } && [ ! -s "$usr" ]; then
  echo "building $usr from /usr (8G, this takes a few minutes)" >&2
  rm -f "$usr.tmp"; mke2fs -q -F -t ext4 -d /usr "$usr.tmp" 8G && mv "$usr.tmp" "$usr"
fi
if { [ -z "$only" ] || [ "$only" = big ]; } && [ ! -s "$big" ]; then
  echo "building $big (empty 15T ext4, sparse)" >&2
  rm -f "$big.tmp"; truncate -s 15T "$big.tmp"
  mke2fs -q -F -t ext4 -E lazy_itable_init=1 "$big.tmp" 15T && mv "$big.tmp" "$big"
fi

# Commands are registered with `cmd NAME OUTFILE ARGS...` and run by `run_round`: each of
# --reps rounds runs every registered command once, in a rotating order, each after a sync and
# a pause with the previous output deleted, so that drift in the machine's speed (page cache,
# writeback, discards, neighbours) affects all of them alike. Results land in
# T[NAME] (median wall seconds) and R[NAME] (peak RSS in KiB).
declare -A T R CMDS OUTS
names=()
cmd() { local n="$1" o="$2"; shift 2; names+=("$n"); OUTS[$n]="$o"; CMDS[$n]="$(printf '%q ' "$@")"; }
run_round() {
  local stat="$work/.time" n t m
  declare -A times=()
  for n in "${names[@]}"; do rm -f "${OUTS[$n]}"; eval "${CMDS[$n]}" >/dev/null 2>&1 || true; rm -f "${OUTS[$n]}"; R[$n]=0; done
  local k=${#names[@]} r i
  for r in $(seq 0 $((reps - 1))); do
    # Rotate the order each round, so that no command always follows the same one.
    for i in $(seq 0 $((k - 1))); do
      n=${names[$(( (r + i) % k ))]}
      rm -f "${OUTS[$n]}"; sync
      if [ "$cold" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
      sleep 1
      eval "/usr/bin/time -o $stat -f '%e %M' ${CMDS[$n]}" >/dev/null 2>&1 || true
      read -r t m < <(tail -n1 "$stat")   # time prefixes a line when the command exits non-zero
      rm -f "${OUTS[$n]}"   # free its page cache before the next command runs
      times[$n]="${times[$n]:-} $t"
      if [ "$m" -gt "${R[$n]}" ]; then R[$n]=$m; fi
    done
  done
  for n in "${names[@]}"; do
    T[$n]=$(printf '%s\n' ${times[$n]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%-30s median %6s s   peak RSS %8s KiB   (runs:%s)\n' "$n" "${T[$n]}" "${R[$n]}" "${times[$n]}"
  done
  names=()
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

if [ -z "$only" ] || [ "$only" = usr ]; then
  echo "== $usr (metadata)"
  cmd "e2image -Q" "$work/e2i.qcow2" e2image -Q "$usr" "$work/e2i.qcow2"
  cmd "e2image-rs -Q" "$work/ours.qcow2" "$bin" -Q "$usr" "$work/ours.qcow2"
  # Durable variants: e2image never syncs its output; e2image-rs does with --sync.
  cmd "e2image -Q; sync OUT" "$work/e2is.qcow2" bash -c 'e2image -Q "$1" "$2" && sync "$2"' _ "$usr" "$work/e2is.qcow2"
  cmd "e2image-rs -Q --sync" "$work/ours-s.qcow2" "$bin" -Q --sync "$usr" "$work/ours-s.qcow2"
  run_round
  echo "  ratio e2image-rs -Q / e2image -Q: $(ratio "${T[e2image-rs -Q]}" "${T[e2image -Q]}")   (target <= 0.5)"
  echo "  ratio e2image-rs -Q --sync / (e2image -Q; sync): $(ratio "${T[e2image-rs -Q --sync]}" "${T[e2image -Q; sync OUT]}")"
  echo "== $usr (data)"
  cmd "qemu-img convert -O qcow2" "$work/qemu.qcow2" qemu-img convert -O qcow2 "$usr" "$work/qemu.qcow2"
  cmd "e2image-rs -Q -d" "$work/ours-d.qcow2" "$bin" -Q -d "$usr" "$work/ours-d.qcow2"
  cmd "e2image -Qa" "$work/e2ia.qcow2" e2image -Qa "$usr" "$work/e2ia.qcow2"
  # qemu-img flushes its output (fdatasync); e2image never does; e2image-rs does with --sync.
  cmd "e2image-rs -Q -d --sync" "$work/ours-ds.qcow2" "$bin" -Q -d --sync "$usr" "$work/ours-ds.qcow2"
  cmd "e2image -Qa; sync OUT" "$work/e2ias.qcow2" bash -c 'e2image -Qa "$1" "$2" && sync "$2"' _ "$usr" "$work/e2ias.qcow2"
  run_round
  echo "  ratio e2image-rs -d / qemu-img convert: $(ratio "${T[e2image-rs -Q -d]}" "${T[qemu-img convert -O qcow2]}")   (target <= 1.0)"
  echo "  ratio e2image-rs -d --sync / qemu-img convert: $(ratio "${T[e2image-rs -Q -d --sync]}" "${T[qemu-img convert -O qcow2]}")   (both durable)"
  echo "  ratio e2image-rs -d / e2image -Qa:      $(ratio "${T[e2image-rs -Q -d]}" "${T[e2image -Qa]}")   (target <= 0.5)"
  echo "  ratio e2image-rs -d --sync / (e2image -Qa; sync): $(ratio "${T[e2image-rs -Q -d --sync]}" "${T[e2image -Qa; sync OUT]}")"
  rm -f "$work/qemu.qcow2" "$work/e2ia.qcow2" "$work/e2ias.qcow2" "$work/ours-d.qcow2" "$work/e2i.qcow2" "$work/e2is.qcow2" "$work/ours.qcow2" "$work/ours-s.qcow2" "$work/ours-ds.qcow2"
fi

build_snap() {
if [ ! -s "$sd/s0.img" ]; then
  echo "building $sd (2G ext4 from /usr/share and three older states)" >&2
  mkdir -p "$sd"; rm -f "$sd"/*.img
  mke2fs -q -F -t ext4 -d /usr/share "$sd/s3.img" 2G
  # s3 is the oldest; each newer state deletes a directory and adds files.
  prev=s3
  for st in s2 s1 s0; do
    cp --sparse=always "$sd/$prev.img" "$sd/$st.img"
    victim=$(debugfs -R "ls -p /" "$sd/$st.img" 2>/dev/null | awk -F/ '$6 != "." && $6 != ".." && $6 != "lost+found" && $6 != "" {print $6}' | sed -n "$(( ${#st} + ${st#s} + 2 ))p")
    head -c 3000000 /dev/urandom > "$sd/new.bin"
    debugfs -w -f - "$sd/$st.img" >/dev/null 2>&1 <<DBG || true
rmdir /$victim
mkdir /added-$st
write $sd/new.bin /added-$st/new.bin
DBG
    prev=$st
  done
fi
}
sd=$work/snap

if [ -z "$only" ] || [ "$only" = snap ]; then
  build_snap
  echo "== $sd/s0.img with 3 older states"
  cmd "e2image-rs -Q (current only)" "$work/s-one.qcow2" "$bin" -Q "$sd/s0.img" "$work/s-one.qcow2"
  cmd "e2image-rs -Q, 3 snapshots" "$work/s-three.qcow2" "$bin" -Q --snapshot "$sd/s3.img" --snapshot "$sd/s2.img" --snapshot "$sd/s1.img" "$sd/s0.img" "$work/s-three.qcow2"
  cmd "e2image-rs -Q -d (current only)" "$work/s-one-d.qcow2" "$bin" -Q -d "$sd/s0.img" "$work/s-one-d.qcow2"
  cmd "e2image-rs -Q -d, 3 snapshots" "$work/s-three-d.qcow2" "$bin" -Q -d --snapshot "$sd/s3.img" --snapshot "$sd/s2.img" --snapshot "$sd/s1.img" "$sd/s0.img" "$work/s-three-d.qcow2"
  run_round
  for pair in "e2image-rs -Q (current only)|e2image-rs -Q, 3 snapshots|" "e2image-rs -Q -d (current only)|e2image-rs -Q -d, 3 snapshots|-d"; do
    IFS='|' read -r one three flag <<<"$pair"
    "$bin" -Q $flag "$sd/s0.img" "$work/s1.qcow2"
    "$bin" -Q $flag --snapshot "$sd/s3.img" --snapshot "$sd/s2.img" --snapshot "$sd/s1.img" "$sd/s0.img" "$work/s3.qcow2"
    z1=$(stat -c %s "$work/s1.qcow2"); z3=$(stat -c %s "$work/s3.qcow2")
    echo "  ${flag:-metadata}: time ratio 3 snapshots / current only: $(ratio "${T[$three]}" "${T[$one]}");" \
      "size $((z1 / 1024)) KiB -> $((z3 / 1024)) KiB (x$(ratio "$z3" "$z1"))"
    rm -f "$work/s1.qcow2" "$work/s3.qcow2"
  done
fi

if [ -z "$only" ] || [ "$only" = big ]; then
  echo "== $big (empty 15 TiB)"
  cmd "e2image -Q" "$work/e2i-big.qcow2" e2image -Q "$big" "$work/e2i-big.qcow2"
  cmd "e2image-rs -Q" "$work/ours-big.qcow2" "$bin" -Q "$big" "$work/ours-big.qcow2"
  run_round
  echo "  ratio e2image-rs -Q / e2image -Q: $(ratio "${T[e2image-rs -Q]}" "${T[e2image -Q]}")   (target <= 0.1)"
  echo "  e2image-rs peak RSS: $(( ${R[e2image-rs -Q]} / 1024 )) MiB   (target <= 64)"
  "$bin" -Q "$big" "$work/ours-big.qcow2"; e2image -Q "$big" "$work/e2i-big.qcow2" 2>/dev/null
  if qemu-img check "$work/ours-big.qcow2" >/dev/null 2>&1; then echo "  qemu-img check (ours): exit 0"; else echo "  qemu-img check (ours): exit $?"; fi
  if qemu-img info "$work/e2i-big.qcow2" >/dev/null 2>&1; then echo "  qemu-img info (e2image's): ok"; else echo "  qemu-img info (e2image's): refused"; fi
  rm -f "$work/e2i-big.qcow2" "$work/ours-big.qcow2"
fi

if [ -z "$only" ] || [ "$only" = rollback ]; then
  rd=$work/rb
  if [ ! -s "$rd/new.img" ]; then
    echo "building $rd (1G ext4 holding a 256 MiB file, and a newer state where it was rewritten)" >&2
    mkdir -p "$rd/src"; rm -f "$rd"/*.img
    head -c 268435456 /dev/urandom > "$rd/src/big.bin"
    mke2fs -q -F -t ext4 -d "$rd/src" "$rd/old.img" 1G
    cp --sparse=always "$rd/old.img" "$rd/new.img"
    head -c 268435456 /dev/urandom > "$rd/big2.bin"
    printf 'rm /big.bin\nwrite %s /big.bin\n' "$rd/big2.bin" | debugfs -w -f - "$rd/new.img" >/dev/null 2>&1
    rm -f "$rd/src/big.bin" "$rd/big2.bin"
  fi
  echo "== rollback: a copy of $rd/new.img back to its older state (-d image; a 256 MiB file rewritten)"
  q=$work/rb.qcow2 tgt=$work/rb-target.img patch=$work/rb.patch
  "$bin" -Q -d --snapshot "$rd/old.img" "$rd/new.img" "$q"
  fresh() { rm -f "$tgt" "$patch"; cp --sparse=always "$rd/new.img" "$tgt"; sync; sleep 1; }
  secs() { /usr/bin/time -o "$work/.time" -f '%e' "$@" >/dev/null 2>&1 || true; cat "$work/.time"; }
  fresh; "$bin" rollback "$q" "$tgt" --snapshot old.img --patch "$patch" > "$work/rb.out"
  bytes=$(sed -n 's/.*rolled back to .*: [0-9]* blocks (\([0-9]*\) bytes) written.*/\1/p' "$work/rb.out")
  psize=$(stat -c %s "$patch")
  head -c "$bytes" /dev/urandom > "$work/rb-bytes.bin"
  full="" apply="" ddt=""
  for r in $(seq 1 "$reps"); do
    fresh; full="$full $(secs "$bin" rollback "$q" "$tgt" --snapshot old.img --patch "$patch")"
    # Apply only: a prepared patch (stopped right after marking it applying), then --resume.
    fresh; E2IMAGE_RS_FAULT_AFTER_WRITES=1 "$binf" rollback "$q" "$tgt" --snapshot old.img --patch "$patch" >/dev/null 2>&1 || true
    sync; sleep 1; apply="$apply $(secs "$bin" rollback --resume "$patch" "$tgt")"
    fresh; ddt="$ddt $(secs dd if="$work/rb-bytes.bin" of="$tgt" bs=1M conv=notrunc,fsync)"
  done
  med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  mbs() { awk -v b="$bytes" -v t="$1" 'BEGIN { if (t > 0) printf "%.1f", b / t / 1e6; else print "n/a" }'; }
  tf=$(med "$full") ta=$(med "$apply") td=$(med "$ddt")
  echo "  blocks written: $bytes bytes; patch $psize bytes (old and new bytes)"
  printf '  %-40s median %6s s  %8s MB/s  (runs:%s)\n' "rollback (plan + patch + apply)" "$tf" "$(mbs "$tf")" "$full"
  printf '  %-40s median %6s s  %8s MB/s  (runs:%s)\n' "rollback --resume (apply only)" "$ta" "$(mbs "$ta")" "$apply"
  printf '  %-40s median %6s s  %8s MB/s  (runs:%s)\n' "dd bs=1M conv=fsync, same bytes" "$td" "$(mbs "$td")" "$ddt"
  echo "  ratio rollback / dd: $(ratio "$tf" "$td");  apply only / dd: $(ratio "$ta" "$td")"
  rm -f "$q" "$tgt" "$patch" "$work/rb-bytes.bin" "$work/rb.out"
fi

build_usr2() {
  usr2=$work/usr2.img
  if [ ! -s "$usr2" ]; then
    echo "building $usr2 (usr.img with about 5% of its data rewritten)" >&2
    cp --sparse=always "$usr" "$usr2.tmp"
    mnt=$(mktemp -d); mount -o loop "$usr2.tmp" "$mnt"
    used=$(df -B1 --output=used "$mnt" | tail -1); goal=$((used / 20)) done=0
    # Rewrite whole files in place (new bytes, same size) until 4% of the used bytes changed,
    # then add new files for 1% more.
    while read -r f; do
      sz=$(stat -c %s "$f"); head -c "$sz" /dev/urandom | dd of="$f" conv=notrunc status=none
      done=$((done + sz)); [ "$done" -ge $((goal * 4 / 5)) ] && break
    done < <(find "$mnt" -type f -size +64k | sort | awk 'NR % 7 == 0')
    mkdir -p "$mnt/added"; head -c $((goal / 5)) /dev/urandom > "$mnt/added/new.bin"
    umount "$mnt"; rmdir "$mnt"; mv "$usr2.tmp" "$usr2"
  fi
}

if [ -z "$only" ] || [ "$only" = append ]; then
  build_usr2
  for flag in "" -d; do
    echo "== append: usr2.img onto an archive of usr.img ${flag:-(metadata)}"
    base=$work/arch-base.qcow2 arch=$work/arch.qcow2 full=$work/full.qcow2
    rm -f "$base"; "$bin" -Q $flag --name usr "$usr" "$base"
    app="" fl=""
    for r in $(seq 1 "$reps"); do
      rm -f "$arch"; cp --sparse=always "$base" "$arch"; sync; sleep 1
      app="$app $(/usr/bin/time -o "$work/.time" -f '%e' "$bin" -Q $flag --append "$usr2" "$arch" >/dev/null 2>&1; cat "$work/.time")"
      rm -f "$full"; sync; sleep 1
      fl="$fl $(/usr/bin/time -o "$work/.time" -f '%e' "$bin" -Q $flag "$usr2" "$full" >/dev/null 2>&1; cat "$work/.time")"
    done
    med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    ta=$(med "$app") tf=$(med "$fl")
    grew=$(( $(stat -c %b "$arch") * 512 - $(stat -c %b "$base") * 512 ))
    printf '  %-40s median %6s s  (runs:%s)\n' "append usr2 to the archive" "$ta" "$app"
    printf '  %-40s median %6s s  (runs:%s)\n' "full export of usr2" "$tf" "$fl"
    echo "  ratio append / full export: $(ratio "$ta" "$tf")   (target <= 0.3)"
    echo "  archive grew by $grew bytes (allocated); full export $(( $(stat -c %b "$full") * 512 )) bytes"
    if qemu-img check "$arch" >/dev/null 2>&1; then echo "  qemu-img check: exit 0"; else echo "  qemu-img check: exit $?"; fi
    rm -f "$base" "$arch" "$full"
  done
fi

if [ -z "$only" ] || [ "$only" = delta ]; then
  build_usr2
  d=$work/delta.qcow2 qd=$work/qdelta.qcow2 arch=$work/darch.qcow2
  echo "== delta usr.img..usr2.img with data (image files: both are read)"
  # qemu-img compare stops at the first difference (here the superblock, at offset 1024), so the
  # baseline is qemu-img compare of usr2.img against a copy of itself: both read in full, what
  # comparing two images costs when they differ late. qemu-img convert -B is shown for the size:
  # it does not compare contents with a raw source, it writes every allocated cluster.
  [ -s "$work/usr2-copy.img" ] || cp --sparse=always "$usr2" "$work/usr2-copy.img"
  cmd "qemu-img compare (full)" "$work/none" qemu-img compare -f raw -F raw "$usr2" "$work/usr2-copy.img"
  cmd "qemu-img convert -B" "$qd" qemu-img convert -f raw -O qcow2 -B "$usr" -F raw "$usr2" "$qd"
  cmd "e2image-rs -Q -d --base" "$d" "$bin" -Q -d --base "$usr" "$usr2" "$d"
  run_round
  echo "  ratio e2image-rs --base / qemu-img compare (full): $(ratio "${T[e2image-rs -Q -d --base]}" "${T[qemu-img compare (full)]}")"
  echo "  ratio e2image-rs --base / qemu-img convert -B: $(ratio "${T[e2image-rs -Q -d --base]}" "${T[qemu-img convert -B]}")"
  "$bin" -Q -d --base "$usr" "$usr2" "$d" --json 2>/dev/null | grep -o '"delta":{[^}]*}' | sed 's/^/  /' || true
  qemu-img convert -f raw -O qcow2 -B "$usr" -F raw "$usr2" "$qd"
  echo "  delta file: $(stat -c %s "$d") bytes; qemu-img convert -B overlay: $(stat -c %s "$qd") bytes"
  echo "== delta between two archive states with data (L2 entries compared, differing clusters read)"
  rm -f "$arch"; "$bin" -Q -d --name usr "$usr" "$arch" && "$bin" -Q -d --append --name usr2 "$usr2" "$arch"
  cmd "e2image-rs -Q -d -x usr..usr2" "$d" "$bin" -Q -d -x usr..usr2 "$arch" "$d"
  cmd "e2image-rs -Q -x usr..usr2" "$d.m" "$bin" -Q -x usr..usr2 "$arch" "$d.m"
  run_round
  rm -f "$d" "$d.m" "$qd" "$arch"
fi

# apply DELTA onto a fresh sparse copy of FROM (the copy is not timed), against dd writing as
# many bytes as the apply wrote and discarded, both durable (apply syncs; dd conv=fdatasync).
time_apply() {
  local label="$1" delta="$2" from="$3" t="$work/apply-target.img" p="$work/apply.patch"
  local ap="" dd="" bytes=0 r
  for r in $(seq 1 "$reps"); do
    rm -f "$t" "$p" "$p.undo"; cp --sparse=always "$from" "$t"; sync; sleep 1
    ap="$ap $(/usr/bin/time -o "$work/.time" -f '%e' "$bin" apply "$delta" "$t" --patch "$p" >/dev/null 2>&1; tail -n1 "$work/.time")"
  done
  rm -f "$t" "$p" "$p.undo"; cp --sparse=always "$from" "$t"
  bytes=$("$bin" apply "$delta" "$t" --patch "$p" --dry-run --json 2>/dev/null \
    | awk -F'[:,]' '/"bytes_written"|"bytes_discarded"/ {s += $2} END {print s + 0}')
  for r in $(seq 1 "$reps"); do
    rm -f "$work/dd.out"; sync; sleep 1
    dd="$dd $(/usr/bin/time -o "$work/.time" -f '%e' dd if=/dev/zero of="$work/dd.out" bs=1M count=$(( (bytes + 1048575) / 1048576 )) conv=fdatasync >/dev/null 2>&1; tail -n1 "$work/.time")"
  done
  med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  local ta td; ta=$(med "$ap"); td=$(med "$dd")
  printf '  %-40s median %6s s  (runs:%s)\n' "apply $label" "$ta" "$ap"
  printf '  %-40s median %6s s  (runs:%s)\n' "dd of $bytes bytes" "$td" "$dd"
  echo "  ratio apply / dd: $(ratio "$ta" "$td")   (crash-safe: the patch takes the old and the new bytes, flushed, before TARGET is written)"
  rm -f "$t" "$p" "$p.undo" "$work/dd.out"
}

if [ -z "$only" ] || [ "$only" = apply ]; then
  build_usr2
  d=$work/apply-delta.qcow2
  echo "== apply usr.img..usr2.img (-d delta) onto a copy of usr.img"
  rm -f "$d"; "$bin" -Q -d --base "$usr" "$usr2" "$d" >/dev/null
  time_apply "usr..usr2" "$d" "$usr"
  echo "== apply onto a sparse 1 TiB filesystem: 1 GiB written"
  tib=$work/tib; mkdir -p "$tib"
  if [ ! -s "$tib/to.img" ]; then
    rm -f "$tib/from.img" "$tib/to.tmp"; truncate -s 1T "$tib/from.img"
    mke2fs -q -F -t ext4 -E lazy_itable_init=1,nodiscard "$tib/from.img"
    head -c 1G /dev/urandom > "$tib/payload"
    cp --sparse=always "$tib/from.img" "$tib/to.tmp"
    debugfs -w -R "write $tib/payload payload" "$tib/to.tmp" >/dev/null 2>&1
    rm -f "$tib/payload"; mv "$tib/to.tmp" "$tib/to.img"
  fi
  rm -f "$d"; "$bin" -Q -d --base "$tib/from.img" "$tib/to.img" "$d" >/dev/null
  echo "  delta: $(stat -c %s "$d") bytes for a $(stat -c %s "$tib/from.img")-byte filesystem"
  time_apply "1 TiB + 1 GiB" "$d" "$tib/from.img"
  rm -f "$d"
fi

if [ -z "$only" ] || [ "$only" = journal ]; then
  jfs=$work/jfs.img
  if [ ! -s "$jfs" ]; then
    echo "building $jfs (4G from /usr/share, 128 MiB journal filled with 30 transactions)" >&2
    rm -f "$jfs.tmp"; mke2fs -q -F -t ext4 -J size=128 -d /usr/share "$jfs.tmp" 4G
    head -c 120M /dev/urandom > "$work/jbig"
    debugfs -w -R "write $work/jbig /big.bin" "$jfs.tmp" >/dev/null 2>&1
    mapfile -t fb < <(debugfs -R "blocks /big.bin" "$jfs.tmp" 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+$' | head -n 30000)
    { echo "jo"
      for t in $(seq 0 29); do
        head -c 4096000 /dev/urandom > "$work/jpay$t"
        echo "jw -b $(printf '%s\n' "${fb[@]:$((t * 1000)):1000}" | paste -sd,) $work/jpay$t"
      done
      echo "jc"; } > "$work/jcmds"
    debugfs -w -f "$work/jcmds" "$jfs.tmp" >/dev/null 2>&1
    rm -f "$work"/jpay* "$work/jcmds" "$work/jbig"
    dumpe2fs -h "$jfs.tmp" 2>/dev/null | grep -q needs_recovery || { echo "the journal fixture does not need recovery" >&2; exit 1; }
    mv "$jfs.tmp" "$jfs"
  fi
  echo "== $jfs: a full 128 MiB journal (-Q as on disk, replay-complete; -Q --replay)"
  cmd "e2image-rs -Q" "$work/j.qcow2" "$bin" -Q "$jfs" "$work/j.qcow2"
  cmd "e2image-rs -Q --replay" "$work/jr.qcow2" "$bin" -Q --replay "$jfs" "$work/jr.qcow2"
  cmd "e2image -Q" "$work/je.qcow2" e2image -Q "$jfs" "$work/je.qcow2"
  run_round
  echo "  ratio -Q --replay / -Q: $(ratio "${T[e2image-rs -Q --replay]}" "${T[e2image-rs -Q]}")   (target <= 1.10)"
  echo "  ratio -Q --replay / e2image -Q: $(ratio "${T[e2image-rs -Q --replay]}" "${T[e2image -Q]}")"
fi

if [ -z "$only" ] || [ "$only" = stream ]; then
  echo "== $usr: QCOW2 to standard output through a pipe (two passes over SOURCE) vs to a file"
  pipe='set -o pipefail; out="$1"; shift; "$@" - | cat > "$out"'
  count='set -o pipefail; "$@" - | wc -c > /dev/null'
  for mode in -Q -d -c; do
    args=(-Q); [ "$mode" = -d ] && args=(-Q -d); [ "$mode" = -c ] && args=(-Q -c)
    cmd "e2image-rs ${args[*]} FILE" "$work/s-file.qcow2" "$bin" "${args[@]}" "$usr" "$work/s-file.qcow2"
    cmd "e2image-rs ${args[*]} - | cat > FILE" "$work/s-pipe.qcow2" bash -c "$pipe" _ "$work/s-pipe.qcow2" "$bin" "${args[@]}" "$usr"
    cmd "e2image-rs ${args[*]} - | wc -c" "$work/s-none" bash -c "$count" _ "$bin" "${args[@]}" "$usr"
    run_round
    echo "  ratio ${args[*]} | cat > FILE / ${args[*]} FILE: $(ratio "${T[e2image-rs ${args[*]} - | cat > FILE]}" "${T[e2image-rs ${args[*]} FILE]}")   (target <= 1.10)"
    echo "  ratio ${args[*]} | wc -c / ${args[*]} FILE: $(ratio "${T[e2image-rs ${args[*]} - | wc -c]}" "${T[e2image-rs ${args[*]} FILE]}")"
    echo "  peak RSS of the stream: ${R[e2image-rs ${args[*]} - | wc -c]} KiB (file: ${R[e2image-rs ${args[*]} FILE]} KiB)"
  done
fi

if [ -z "$only" ] || [ "$only" = compress ]; then
  echo "== $usr (metadata, -c) on $(nproc) cores"
  plain=$work/c-plain.qcow2
  rm -f "$plain"; "$bin" -Q "$usr" "$plain"
  cs=$(qemu-img info --output=json "$plain" | awk -F': ' '/"cluster-size"/ {gsub(/[^0-9]/, "", $2); print $2; exit}')
  cmd "qemu-img convert -c of -Q" "$work/c-qemu.qcow2" qemu-img convert -c -O qcow2 "$plain" "$work/c-qemu.qcow2"
  cmd "qemu-img convert -c, same clusters" "$work/c-qemu-cs.qcow2" qemu-img convert -c -O qcow2 -o cluster_size="$cs" "$plain" "$work/c-qemu-cs.qcow2"
  cmd "e2image-rs -Q -c" "$work/c-zlib.qcow2" "$bin" -Q -c "$usr" "$work/c-zlib.qcow2"
  cmd "e2image-rs -Q -c zstd" "$work/c-zstd.qcow2" "$bin" -Q -c --compression-type zstd "$usr" "$work/c-zstd.qcow2"
  cmd "e2image-rs -Q" "$work/c-q.qcow2" "$bin" -Q "$usr" "$work/c-q.qcow2"
  run_round
  # The outputs once more, untimed, for their sizes.
  qemu-img convert -c -O qcow2 "$plain" "$work/c-qemu.qcow2"
  qemu-img convert -c -O qcow2 -o cluster_size="$cs" "$plain" "$work/c-qemu-cs.qcow2"
  "$bin" -Q -c "$usr" "$work/c-zlib.qcow2" 2>/dev/null
  "$bin" -Q -c --compression-type zstd "$usr" "$work/c-zstd.qcow2" 2>/dev/null
  sz() { stat -c %s "$1"; }
  echo "  (cluster size of -Q: $cs bytes; qemu-img convert's default: 65536)"
  for f in c-plain c-qemu c-qemu-cs c-zlib c-zstd; do printf '  %-12s %12s bytes\n' "$f" "$(sz "$work/$f.qcow2")"; done
  echo "  ratio size -Q -c / qemu-img convert -c: $(ratio "$(sz "$work/c-zlib.qcow2")" "$(sz "$work/c-qemu.qcow2")");  same cluster size: $(ratio "$(sz "$work/c-zlib.qcow2")" "$(sz "$work/c-qemu-cs.qcow2")")"
  echo "  ratio time -Q -c / qemu-img convert -c: $(ratio "${T[e2image-rs -Q -c]}" "${T[qemu-img convert -c of -Q]}")   (target <= 0.15);  same cluster size: $(ratio "${T[e2image-rs -Q -c]}" "${T[qemu-img convert -c, same clusters]}")"
  echo "  ratio size zstd / zlib: $(ratio "$(sz "$work/c-zstd.qcow2")" "$(sz "$work/c-zlib.qcow2")")   (target <= 1.02)"
  echo "  ratio time zstd / zlib: $(ratio "${T[e2image-rs -Q -c zstd]}" "${T[e2image-rs -Q -c]}")   (target <= 1.0)"
  echo "  ratio time -Q -c / -Q: $(ratio "${T[e2image-rs -Q -c]}" "${T[e2image-rs -Q]}")"
  rm -f "$plain" "$work/c-qemu.qcow2" "$work/c-qemu-cs.qcow2" "$work/c-zlib.qcow2" "$work/c-zstd.qcow2" "$work/c-q.qcow2"
fi
