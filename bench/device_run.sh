#!/usr/bin/env bash
# GPU runs for issue 5, each a part: `layers` (terms added in the GELU or q/k norm after the layer, per
# layer: layer_bench.py --fused), `main` (rows b, c, d, c', and c-unfused, d-unfused with every term in
# its layer; the extraction timed 3 times), `subjects` (4 subjects: b, c, d, c with resident terms),
# `hooks` (2 and 3 subjects: b, c, d and row e, ComfyUI's core hooks, one timed run each), `profile` (GPU
# kernel time of 8 steps: merged, masked, masked unfused), `pairs` (b, then c, c-unfused, d, d-unfused timed in
# turn, 3 rounds), `host` (8 steps of b, c, c-unfused at 1024 and 128 px, GPU kernel
# time at 1024 px, cProfile at 128 px: host- or GPU-bound?), `extraction` (where a warm extraction's time
# goes: 9 pairs of it and its first k steps, its stages, SLIC and voting alone;
# `vote_bench.py`, `slic_bench.py`), `staging` (4 subjects: 8 masked steps with the terms prefetched and
# resident, GPU kernel time, the pinned copy rate), `sizes` (b and c at 512 and 2048 px, b, c, d at rank 16
# and 64). Results go to OUT_DIR; copy them to docs/bench/, then
# run `python3 bench/report.py`.
#   COMFYUI_PATH=<ComfyUI 0.33> bash bench/device_run.sh OUT_DIR [layers] [main] [subjects] [hooks] [profile]
#       [pairs] [host] [extraction] [staging] [sizes]
# Layers, main and subjects when none is named. EXISTING_PACK, the folder freefuse_comfyui of yaoliliu/FreeFuse,
# lets main run row f (MAIN_ROWS with f). MAIN_ROWS (default bcdpu), MAIN_PAIRS (3) and MAIN_REPEATS (2)
# set main's rows, extraction pairs and timed runs a row, SUBJECT_REPEATS (1) the subjects part's, SIZES
# (512,2048) and RANKS (16,64) the sizes part's;
# `MAIN_ROWS=bcd MAIN_PAIRS=5 ... main` took 135 s on an H200, `main` with every row 210 to 290 s;
# `MAIN_ROWS=bcdB MAIN_PAIRS=9 MAIN_REPEATS=5 ... main` 260 s on a freshly started one, 237 to 239 s after it
# (the logs of main_vote_2..4.json), so give a part on a fresh machine more than 190 s.
set -uo pipefail
out=${1:?usage: bench/device_run.sh OUT_DIR [layers] [main] [subjects] [hooks] [profile] [pairs] [host] [extraction] [staging] [sizes]}
shift
parts=${*:-layers main subjects}
mkdir -p "$out"
export TRITON_PRINT_AUTOTUNING=1   # the logs name the block shapes the fused kernels' autotuning picked
log() { grep --line-buffered -v "it/s" > "$out/$1"; }   # line by line: a part stopped by a timeout keeps its log
# The machine while the parts run: the GPU's clocks, temperature, power and throttle reasons every 0.5 s
# (gpu_monitor_PARTS.csv), and the host's load and CPU time split (user, system, steal: /proc/stat) every 1 s
# (host_monitor_PARTS.txt), each line stamped with seconds since the epoch.
tag=${parts// /_}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active \
    --format=csv -lms 500 > "$out/gpu_monitor_$tag.csv" 2>&1 &
fi
while sleep 1; do echo "$(date +%s.%N) $(cut -d' ' -f1-3 /proc/loadavg) $(head -1 /proc/stat)"; done \
  > "$out/host_monitor_$tag.txt" &
trap 'kill $(jobs -p) 2> /dev/null' EXIT
for part in $parts; do
  case $part in
    layers) python3 bench/layer_bench.py --fused > "$out/fused_layers.txt" 2>&1; cat "$out/fused_layers.txt" ;;
    main) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --rows "${MAIN_ROWS:-bcdpu}" \
            --extraction-repeats "${MAIN_PAIRS:-3}" --repeats "${MAIN_REPEATS:-2}" ${EXISTING_PACK:+--existing-pack "$EXISTING_PACK"} \
            > "$out/main_stdout.txt" 2> >(log main_log.txt)
          tail -16 "$out/main_stdout.txt" ;;
    subjects) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part subjects --subjects 4 \
                --rows bcdp --repeats "${SUBJECT_REPEATS:-1}" > "$out/subjects_stdout.txt" 2> >(log subjects4_log.txt)
              [ -f "$out/subjects.json" ] && mv "$out/subjects.json" "$out/subjects4.json"
              cat "$out/subjects_stdout.txt" ;;
    hooks) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part subjects --subjects 2,3 \
             --rows bcde --repeats 1 > "$out/hooks_stdout.txt" 2> >(log hooks_log.txt)
           [ -f "$out/subjects.json" ] && mv "$out/subjects.json" "$out/hooks.json"
           grep -v warm-up "$out/hooks_log.txt" | cut -c1-160 ;;
    pairs) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part pairs --repeats 3 \
             > "$out/pairs_stdout.txt" 2> >(log pairs_log.txt)
           grep "round" "$out/pairs_log.txt" ;;
    host) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part host \
            > "$out/host_stdout.txt" 2> >(log host_log.txt)
          grep " px: " "$out/host_log.txt" ;;
    profile) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part profile \
               > "$out/profile.txt" 2> >(log profile_log.txt)
             grep "^== " "$out/profile.txt" ;;
    extraction) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part extraction \
                  --extraction-repeats 9 > "$out/extraction_stdout.txt" 2> >(log extraction_log.txt)
                { python3 bench/vote_bench.py; python3 bench/slic_bench.py; } > "$out/extraction_cpu.txt" 2>&1
                grep "pairs\|alone" "$out/extraction_log.txt"; cat "$out/extraction_cpu.txt" ;;
    sizes) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part sizes \
             --sizes "${SIZES:-512,2048}" --ranks "${RANKS-16,64}" \
             > "$out/sizes_stdout.txt" 2> >(log sizes_log.txt)
           cat "$out/sizes_stdout.txt" ;;
    staging) python3 bench/flux_bench.py --comfyui "$COMFYUI_PATH" --out "$out" --part staging --subjects 4 \
               > "$out/staging_stdout.txt" 2> >(log staging_log.txt)
             grep "staging" "$out/staging_log.txt" ;;
    *) echo "unknown part '$part': use layers, main, subjects, hooks, profile, pairs, host, extraction, staging or sizes" >&2
       exit 2 ;;
  esac
done
