"""Writes docs/benchmarks.md, docs/bench/ratios.png and the README's benchmark section from the result
files that flux_bench.py wrote (copied from the device into docs/bench/).

    python3 bench/report.py
"""
import csv
import datetime
import json
import re
import statistics
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "bench"
STEP, STEPS = 6, 28
TARGETS = {"c": 1.08, "c4": 1.10, "d": 1 + STEP / STEPS + 0.06, "extraction": 0.02, "peak": 0.5}
DEVICE_RUN = "bash bench/device_run.sh OUT"
STAGE_K = "step k to block b (beside the superpixels)"   # the extraction breakdown's step-k stage
VOTE_STAGE = "voting, whole (_vote)"
VOTE_COMMAND = f"MAIN_ROWS=bcdB MAIN_PAIRS=9 MAIN_REPEATS=5 SUBJECT_REPEATS=2 {DEVICE_RUN} main subjects"
# The H200 main calls of the code since stage 1 became one sampler call, oldest first:
# (file, session, what changed, the command that made it).
CALLS = (
    ("main_onecall.json", "12-02 early", "stage 1 in one sampler call",
     f"MAIN_ROWS=bcd MAIN_PAIRS=7 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_final.json", "12-02 early", "same code", f"MAIN_ROWS=bcd MAIN_PAIRS=9 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_fourth.json", "12-02 early", "same code, rows b and c", f"MAIN_ROWS=bc MAIN_PAIRS=5 MAIN_REPEATS=5 "
                                                                    f"{DEVICE_RUN} main"),
    ("main_clock.json", "12-02 mid", "same code; evaluation clock, row B", f"MAIN_ROWS=bcB MAIN_PAIRS=5 "
                                                                          f"MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_clock2.json", "12-02 mid", "same code", f"MAIN_ROWS=bcdB MAIN_PAIRS=5 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_queued.json", "12-02 late", "x0 image queued behind steps 0..k-1, no wait before step k",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=5 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_queued_2.json", "12-02 late", "same code, another machine",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=5 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_lean.json", "12-02 evening", "host time of a masked layer cut (27e87d9), after the host part",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=5 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_lean_2.json", "12-02 evening", "a few more host trims (47254f0), another machine, after the host part",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=5 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_px128.json", "12-02 night", "SLIC at 128 px by default (2aa7f10), 9 extraction pairs",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=9 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_rowf.json", "12-03", "same FreeFuse code; row f, the existing pack, added (5d4d002)",
     f"EXISTING_PACK=<its folder> MAIN_ROWS=bcdBf MAIN_PAIRS=9 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_rowf_2.json", "12-03", "same code, the next device lease",
     f"EXISTING_PACK=<its folder> MAIN_ROWS=bcdBf MAIN_PAIRS=9 MAIN_REPEATS=5 {DEVICE_RUN} main"),
    ("main_vote.json", "12-03 mid", "voting on the working image (8de15d6, 8ca7150)", VOTE_COMMAND),
    ("main_vote_2.json", "12-03 late", "same code, a new device lease", VOTE_COMMAND),
    ("main_vote_3.json", "12-03 late", "same code, the same lease", VOTE_COMMAND),
    ("main_vote_4.json", "12-03 late", "same code, the same lease",
     f"MAIN_ROWS=bcdB MAIN_PAIRS=9 MAIN_REPEATS=5 SIZES=2048 RANKS= {DEVICE_RUN} main sizes"),
)
HEADLINE, SECOND = "main_vote_4.json", "main_vote_3.json"   # the latest main call and the one before it
SECOND_WHERE = "on the same device lease"
# Sets of one main call and the 4-subject call of the same command (None where its command ran none), with where
# that call ran, oldest first:
TARGET_SETS = (("main_rowf_2.json", "subjects4_rowf_2.json", "on the next device lease: the subjects part of its "
                                                             "command ran out of time there"),
               ("main_vote.json", "subjects4_vote.json", "in the same command"),
               ("main_vote_2.json", "subjects4_vote_2.json", "in the same command"),
               ("main_vote_3.json", "subjects4_vote_3.json", "in the same command"),
               (HEADLINE, None, "its command ran the 2048 px part instead"))
BIG = "sizes_2048_vote.json"   # the sizes part of HEADLINE's command
HOOKS = "hooks_h200.json"   # `device_run.sh OUT hooks`: b, c, d, e with 2 and 3 subjects in one process
VERSIONS = "device_versions_vote_4.txt"   # torch, Triton and the GPU, read in HEADLINE's call
VOTE_CPU = "vote_cpu_working.txt"   # bench/vote_bench.py --px 128 at --full 1024 and 2048, before and after 8de15d6
HOST = (  # the host part (8 steps of b, c, c-unfused): (file, fused_check.py's output in that call or None, code)
    ("host_clock.json", None, "12-02 mid: stage 1 in one sampler call"),
    ("host_lean.json", "fused_check_lean.txt", "12-02 evening: host time of a masked layer cut (27e87d9)"),
    ("host_lean_2.json", "fused_check_lean_2.txt", "12-02 evening: a few more trims (47254f0), another machine"),
)
SUBJECTS = (  # 4 subjects, 1024 px: (file, session, code)
    ("subjects4_onecall_first.json", "12-02 early", "stage 1 in one sampler call, 1 run"),
    ("subjects4_onecall.json", "12-02 early", "same code"),
    ("subjects4_final.json", "12-02 early", "same code"),
    ("subjects4_clock2.json", "12-02 mid", "same code"),
    ("subjects4_queued.json", "12-02 late", "x0 image queued"),
    ("subjects4_lean.json", "12-02 evening", "host time of a masked layer cut (27e87d9)"),
    ("subjects4_lean_2.json", "12-02 evening", "a few more trims (47254f0), the machine of `main_lean_2.json`"),
    ("subjects4_px128.json", "12-02 night", "SLIC at 128 px, in the command of `main_px128.json`"),
    ("subjects4_rowf.json", "12-03", "same code, in the command of `main_rowf.json`"),
    ("subjects4_rowf_2.json", "12-03", "same code, the lease after `main_rowf_2.json`'s"),
    ("subjects4_vote.json", "12-03 mid", "voting on the working image, in the command of `main_vote.json`"),
    ("subjects4_vote_2.json", "12-03 late", "same code, in the command of `main_vote_2.json`"),
    ("subjects4_vote_3.json", "12-03 late", "same code, in the command of `main_vote_3.json`"),
)
EARLIER = (  # H200 main calls of older code: (file, what the code did then)
    ("main.json", "SLIC beside step k, CPU voting, masked forwards built once per model"),
    ("main_fused.json", "terms of the MLP-in and q, k columns in the GELU and q/k norm (off by default then)"),
    ("main_default.json", "those terms fused by default, launches straight to the compiled kernel"),
    ("main_latest.json", "prefetch rings kept across sampler calls, superpixels at 192 px"),
)


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def row(run: dict, letter: str) -> dict | None:
    """The row of a main run named by its letter ("B": b timed again after the FreeFuse rows)."""
    names = {"b": "b stock", "c": "c FreeFuse", "d": "d FreeFuse", "B": "b again", "c'": "c' ", "e": "e core",
             "f": "f existing"}
    return next((v for k, v in run["rows"].items() if k.startswith(names[letter])), None)


def ratio(run: dict, letter: str) -> float | None:
    found = row(run, letter)
    return None if found is None else found["over_b"]


def fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def runs_of(found) -> str:
    runs = found["runs"] if isinstance(found, dict) else found[2]
    return ", ".join(f"{r:.3f}" for r in runs)


def extraction_pairs(run: dict) -> float:
    return run["extraction_over_first_k_steps_seconds"] / row(run, "b")["seconds"]


def extraction_in_run(run: dict) -> float | None:
    seconds = run.get("step_k_to_masks_median_seconds")
    return None if seconds is None else seconds / row(run, "b")["seconds"]


def peak_c(run: dict) -> float:
    return row(run, "c")["peak_gib"] - row(run, "b")["peak_gib"]


def superpixel_ms(run: dict) -> float:
    return 1000 * next(v for k, v in run["extraction_breakdown_seconds"].items() if k.startswith("superpixels"))


def verdict(values: list[float], limit: float) -> str:
    met = sum(v <= limit for v in values)
    return f"met in {met} of {len(values)}" + (" (**met in every call**)" if met == len(values) else "")


# --- the evaluation clock (EvalClock in flux_bench.py) ---

def clocks(found: dict) -> list[dict]:
    """Each timed run's EvalClock summary, where the run has one with every evaluation's GPU time (the first
    calls with the clock, `main_clock.json`, kept only start-to-start medians)."""
    return [c for c in found.get("evaluations") or [] if "eval_ms" in c]


def masked_eval_ms(clock: dict) -> float:
    """Median GPU time of a run's last 28 evaluations: the masked sampler's in c and d, every one in b."""
    return statistics.median(clock["eval_ms"][-STEPS:])


def clock_medians(run: dict, letter: str) -> tuple[float, float] | None:
    """A row's median over its runs of the masked evaluations' GPU time and of the lag, in ms; None without the
    clock."""
    found = row(run, letter)
    if found is None or not clocks(found):
        return None
    each = clocks(found)
    return statistics.median(masked_eval_ms(c) for c in each), statistics.median(c["lag_median_ms"] for c in each)


def eval_line(run: dict, letter: str) -> str:
    medians = clock_medians(run, letter)
    return " | " if medians is None else f"{medians[0]:.1f} | {medians[1]:.0f}"


def lag_split(names: list[str]) -> tuple[list[float], list[float], float]:
    """Masked evaluations' median GPU time of every c and d run in `names`, split at the median lag of those runs."""
    runs = [c for name in names for letter in "cd" if row(load(name), letter) is not None
            for c in clocks(row(load(name), letter))]
    cut = statistics.median(c["lag_median_ms"] for c in runs)
    low = [masked_eval_ms(c) for c in runs if c["lag_median_ms"] < cut]
    high = [masked_eval_ms(c) for c in runs if c["lag_median_ms"] >= cut]
    return low, high, cut


# --- the GPU monitor of device_run.sh ---

def row_windows(log: str) -> dict[str, tuple[float, float]]:
    """Seconds since the epoch at which each row's timed runs began and ended, from a flux_bench log."""
    text = (RESULTS / log).read_text()
    zero = float(re.search(r"the clock's 0 is ([\d.]+) s since the epoch", text).group(1))
    windows = {}
    for at, name, runs in re.findall(r"^\[\s*([\d.]+) s\] ([^:\n]+): ((?:[\d.]+ s, )*[\d.]+ s); gen-2", text, re.M):
        end = zero + float(at)
        windows[name] = (end - sum(float(r.split()[0]) for r in runs.split(", ")), end)
    return windows


def gpu_during(monitor: str, window: tuple[float, float]) -> tuple[float, float, bool]:
    """Mean SM clock (MHz) and power (W) over the busy samples (above 300 W) inside `window`, and whether
    the software power cap (throttle reason 0x4) was active in every one of them."""
    busy = []
    with open(RESULTS / monitor) as handle:
        for record in list(csv.reader(handle))[1:]:
            stamp = datetime.datetime.strptime(record[0], "%Y/%m/%d %H:%M:%S.%f")
            at = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
            watts = float(record[4].split()[0])
            if window[0] <= at <= window[1] and watts > 300:
                busy.append((float(record[1].split()[0]), watts, int(record[5], 16) & 0x4 != 0))
    return (statistics.mean(b[0] for b in busy), statistics.mean(b[1] for b in busy), all(b[2] for b in busy))


# --- sections ---

def rows_table(run: dict) -> list[str]:
    lines = ["| row | seconds | / b | peak GiB | its runs, s |", "|---|---|---|---|---|"]
    for name, found in run["rows"].items():
        lines.append(f"| {name} | {found['seconds']:.3f} | {found['over_b']:.3f} | {found['peak_gib']:.2f} | "
                     f"{runs_of(found)} |")
    return lines


def calls_table() -> list[str]:
    lines = ["| file | session | code | command | b s | c / b | d / b | B / b | extraction, pairs / b "
             "| in the run / b | peak c - b GiB | SLIC ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, session, code, command in CALLS:
        run = load(name)
        lines.append(f"| `{name}` | {session} | {code} | `{command}` | {row(run, 'b')['seconds']:.3f} | "
                     f"{fmt(ratio(run, 'c'))} | "
                     f"{fmt(ratio(run, 'd'))} | {fmt(ratio(run, 'B'))} | {extraction_pairs(run):.4f} | "
                     f"{fmt(extraction_in_run(run), 4)} | {peak_c(run):.2f} | {superpixel_ms(run):.0f} |")
    return lines


def subjects_table() -> list[str]:
    lines = ["| file | session | code | b s | c / b | c runs, s | d / b | c resident / b | peak c - b GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, session, code in SUBJECTS:
        four = load(name)["4"]
        b = four["b"][0]
        lines.append(f"| `{name}` | {session} | {code} | {b:.3f} | {four['c'][0] / b:.3f} | {runs_of(four['c'])} | "
                     f"{four['d'][0] / b:.3f} | {four['c resident'][0] / b:.3f} | {four['c'][1] - four['b'][1]:.2f} |")
    return lines


def subjects_clock_table() -> list[str]:
    """The evaluation clock of the 4-subject calls that kept it: per row, the median over its runs of the
    median GPU time of the last 28 evaluations and of the median lag."""
    lines = ["| file | b eval ms | b lag ms | c masked eval ms | c lag ms | c resident masked eval ms | "
             "c resident lag ms |", "|---|---|---|---|---|---|---|"]
    agree = []
    for name, *_ in SUBJECTS:
        four = load(name)["4"]
        each = {row_name: [c for c in found[4] if "eval_ms" in c] if len(found) > 4 else []
                for row_name, found in four.items()}
        if not all(each[r] for r in ("b", "c", "c resident")):
            continue
        cells = [f"{statistics.median(masked_eval_ms(c) for c in each[r]):.1f} | "
                 f"{statistics.median(c['lag_median_ms'] for c in each[r]):.0f}" for r in ("b", "c", "c resident")]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        evals = {r: statistics.median(masked_eval_ms(c) for c in each[r]) for r in ("c", "c resident")}
        lags = {r: statistics.median(c["lag_median_ms"] for c in each[r]) for r in ("c", "c resident")}
        slower, lower = max(evals, key=evals.get), min(lags, key=lags.get)
        agree.append(slower == lower)
    lines += ["", f"In {sum(agree)} of these {len(agree)} calls the slower of c and c resident was the one with the "
              "lower lag, whichever kept the terms resident."]
    return lines


def clock_section() -> list[str]:
    names = [name for name, *_ in CALLS if clocks(row(load(name), "b"))]
    lines = ["| file | b eval ms | b lag ms | c masked eval ms | c lag ms | d masked eval ms | d lag ms | B eval ms "
             "| B lag ms |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        run = load(name)
        lines.append(f"| `{name}` | " + " | ".join(eval_line(run, letter) for letter in "bcdB") + " |")
    low, high, cut = lag_split(names)
    drift = [abs(ratio(load(n), "B") - 1) for n, *_ in CALLS if ratio(load(n), "B") is not None]
    b_evals = [statistics.median(masked_eval_ms(c) for c in clocks(row(load(n), "b"))) for n in names]
    lines += ["", f"Row B differs from row b by at most {100 * max(drift):.1f} % in the {len(drift)} calls that ran "
              f"both, and b's evaluations took {min(b_evals):.1f} to {max(b_evals):.1f} ms in the {len(names)} calls "
              "with this clock: the merged run is alike on every machine. "
              f"Over the {len(low) + len(high)} timed runs of c and d in these calls, the runs whose median lag was "
              f"under {cut:.0f} ms (the median) had masked evaluations of {statistics.median(low):.1f} ms (median; "
              f"{min(low):.1f} to {max(low):.1f}), the others {statistics.median(high):.1f} ms ({min(high):.1f} to "
              f"{max(high):.1f}): the masked rows are slower where the host's Python falls back towards the GPU, "
              "and a masked step makes several more launches per layer than a merged one."]
    return lines


def monitor_section() -> list[str]:
    lines = ["| call | row | SM clock MHz | power W | power cap active in every busy sample |", "|---|---|---|---|---|"]
    for name in (SECOND, HEADLINE):
        log, monitor = name.replace(".json", "_log.txt"), "gpu_monitor_" + name.replace(".json", ".csv")
        for row_name, window in row_windows(log).items():
            clock, watts, capped = gpu_during(monitor, window)
            lines.append(f"| `{name}` | {row_name} | {clock:.0f} | {watts:.0f} | {'yes' if capped else 'no'} |")
    return lines


def host_table() -> list[str]:
    """Per host-part call: each row's step time at 128 px (about the host's time: 64 image tokens) and at 1024 px,
    kernels launched a step, and the host time of one fused-kernel launch (fused_check.py, direct and through
    Triton's JIT function)."""
    lines = ["| file | code | b 128 px ms | c 128 px ms | c / b 128 px | c-unfused 128 px ms | b 1024 px ms | "
             "c 1024 px ms | kernels a step b, c | fused launch us, direct / JIT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, check, code in HOST:
        run = load(name)
        step = {r: {size: found["step_ms"] for size, found in sizes.items()} for r, sizes in run.items()}
        kernels = [run[r]["1024"].get("kernels_per_step") for r in ("b", "c")]
        launches = re.findall(r"direct\s+([\d.]+) us a launch, through the JIT function\s+([\d.]+) us",
                              (RESULTS / check).read_text()) if check else []
        cell = (f"{statistics.median(float(d) for d, _ in launches):.1f} / "
                f"{statistics.median(float(j) for _, j in launches):.1f}") if launches else ""
        lines.append(f"| `{name}` | {code} | {step['b']['128']:.1f} | {step['c']['128']:.1f} | "
                     f"{step['c']['128'] / step['b']['128']:.2f} | {step['c-unfused']['128']:.1f} | "
                     f"{step['b']['1024']:.1f} | {step['c']['1024']:.1f} | "
                     + (", ".join(f"{k:.0f}" for k in kernels) if None not in kernels else "") + f" | {cell} |")
    runs = [load(name) for name, *_ in HOST]
    ratios = [run["c"]["128"]["step_ms"] / run["b"]["128"]["step_ms"] for run in runs]
    b_steps = [run["b"]["128"]["step_ms"] for run in runs]
    more = runs[-1]["c"]["1024"]["kernels_per_step"] - runs[-1]["b"]["1024"]["kernels_per_step"]
    lines += ["", f"c / b at 128 px was {', '.join(f'{r:.2f}' for r in ratios)} in these calls: the changes since "
              f"`{HOST[0][0]}` did not measurably shorten a masked step's host time relative to b's (3 runs of 8 "
              f"steps a row; b alone moved by {max(b_steps) / min(b_steps) - 1:.0%} between machines). A masked "
              f"step launches {more:.0f} kernels more than b's (the LoRA down and up projections and the mask of "
              "every masked layer)."]
    return lines


def latest_targets() -> list[str]:
    """Which targets hold in each set of TARGET_SETS, newest first."""
    return ["The targets of issue 5 in the latest main calls, each with the 4-subject call after it where its "
            "command ran one, newest first:",
            "", *(targets_of(*found) for found in reversed(TARGET_SETS))]


def targets_of(main: str, subjects: str | None, where: str) -> str:
    head = load(main)
    checks = [(f"c / b {ratio(head, 'c'):.3f} (target <= {TARGETS['c']})", ratio(head, "c") <= TARGETS["c"])]
    if subjects is not None:
        four = load(subjects)["4"]
        four_c = four["c"][0] / four["b"][0]
        checks.append((f"4 subjects c / b {four_c:.3f} (target <= {TARGETS['c4']:.2f})", four_c <= TARGETS["c4"]))
    checks += [(f"d / b {ratio(head, 'd'):.4f} (target <= {TARGETS['d']:.4f})", ratio(head, "d") <= TARGETS["d"]),
              (f"extraction, pairs, {extraction_pairs(head):.4f} of b (target <= {TARGETS['extraction']})",
               extraction_pairs(head) <= TARGETS["extraction"]),
              (f"extraction, in the run, {extraction_in_run(head):.4f} of b (target <= {TARGETS['extraction']})",
               extraction_in_run(head) <= TARGETS["extraction"]),
              (f"peak c - b {peak_c(head):.2f} GiB (target <= {TARGETS['peak']})", peak_c(head) <= TARGETS["peak"])]
    held = [text for text, ok in checks if ok]
    missed = [text for text, ok in checks if not ok]
    four_call = f"the 4-subject call after it (`{subjects}`, {where})" if subjects else f"no 4-subject call ({where})"
    return (f"- `{main}` and {four_call}: held: {'; '.join(held) or 'none'}; missed: {'; '.join(missed) or 'none'}.")


def stages_beside(head: dict, second: dict) -> list[str]:
    """The extraction's stages at the default size in HEADLINE against SECOND's, with b's median lag in each:
    where the extraction's share of b differs between leases."""
    (head_eval, head_lag), (second_eval, second_lag) = clock_medians(head, "b"), clock_medians(second, "b")
    cells = ", ".join(f"{k} {1000 * head['extraction_breakdown_seconds'][k]:.1f} against {1000 * v:.1f} ms"
                      for k, v in second["extraction_breakdown_seconds"].items())
    return [f"`{HEADLINE}` against `{SECOND}` ({SECOND_WHERE}): {cells}; extraction "
            f"{extraction_pairs(head):.4f} against {extraction_pairs(second):.4f} of b, whose evaluations took "
            f"{head_eval:.1f} against {second_eval:.1f} ms on the GPU with a median lag of {head_lag:.0f} against "
            f"{second_lag:.0f} ms."]


def voting_lines() -> list[str]:
    """`_vote` before and after 8de15d6: on the device (the extraction part of the old code, the main calls of
    the new) and on this repository's CPU machine (VOTE_CPU: both trees' vote_bench.py in one command)."""
    old = 1000 * load("extraction_px128.json")["stages_per_extraction_s"][VOTE_STAGE]
    new = [(name, 1000 * load(name)["extraction_breakdown_seconds"][VOTE_STAGE]) for name, *_ in CALLS
           if VOTE_STAGE in load(name)["extraction_breakdown_seconds"]]
    cpu = {}
    for block in (RESULTS / VOTE_CPU).read_text().split("== ")[1:]:
        head, *stages = block.strip().splitlines()
        rev, full = head.split()[0], int(head.split()[2])
        cpu[rev, full] = {name: float(ms) for name, ms in (re.match(r"(.*?)\s+([\d.]+) ms \(", line).groups()
                                                           for line in stages)}
    cells = []
    for (rev, full), stages in cpu.items():
        in_vote = sum(ms for name, ms in stages.items() if "first read" not in name)
        later = sum(ms for name, ms in stages.items() if "first read" in name)
        cells.append(f"{rev} at {full} px: {in_vote:.1f} ms in `_vote`"
                     + (f" and {later:.1f} ms on the pixel masks' first read" if later else ""))
    return ["The voting after SLIC (`_vote`: Eq. 12-13, the ownership and the token masks) works on SLIC's working "
            "image since 8de15d6: the attention maps reach it as `Wy S Wx^T` (one bilinear matrix a side, no "
            "full-size maps), the token masks are counted on the working ownership where the full size is a whole "
            "multiple of it, and the full-size pixel masks are made on their first read (Mask Preview). On the "
            f"device, `_vote` took {old:.1f} ms before (`extraction_px128.json`, the extraction part) and "
            + ", ".join(f"{ms:.1f} ms in `{name}`" for name, ms in new) + " after. On this repository's 2-core CPU "
            f"machine, SLIC at 128 px (`{VOTE_CPU}`: `python3 bench/vote_bench.py --px 128 --full F` for F of 1024 "
            "and 2048, in a worktree of 5543f84 and in this one, one after the other): " + "; ".join(cells) + "."]


def default_px() -> int:
    """The pack's SLIC working size (`SUPERPIXEL_PX` in freefuse_comfy/sampling.py)."""
    source = (ROOT / "freefuse_comfy" / "sampling.py").read_text()
    return int(re.search(r"^SUPERPIXEL_PX = (\d+)", source, re.M).group(1))


def default_px_lines(head: dict) -> list[str]:
    """The pack's SLIC working size now, against the one the latest call ran at, with SLIC's CPU time at both
    (`slic_cpu_px.txt`: `for px in 192 128; do python3 bench/slic_bench.py --px $px; done`)."""
    default = default_px()
    if default == head["superpixel_px"]:
        return px128_lines(default, head)
    text = (RESULTS / "slic_cpu_px.txt").read_text()
    ms = {int(px): float(t) for px, t in re.findall(r"^(\d+) px, paper's count: \d+ segments, median ([\d.]+) ms",
                                                      text, re.M)}
    return [f"The pack's default `superpixel_px` is now {default} (4 x 4 px of the copy per superpixel at 1024 px, "
            "a density at which the toy world votes as at full size, `docs/fidelity.md`): SLIC with the paper's "
            f"1024 superpixels took {ms[head['superpixel_px']]:.1f} ms at {head['superpixel_px']} px and "
            f"{ms[default]:.1f} ms at {default} px on this repository's 2-core CPU machine (`slic_cpu_px.txt`), "
            f"where the calls above, at {head['superpixel_px']} px, took {superpixel_ms(head):.0f} ms on the "
            f"device and step k's run to block b about {1000 * head['extraction_breakdown_seconds'][STAGE_K]:.0f} "
            "ms beside it.", "", *px128_lines(default, None)]


def px128_lines(default: int, head: dict | None) -> list[str]:
    """The extraction part at the new default (`extraction_px128.json`, `bash bench/device_run.sh OUT extraction`,
    its `SUPERPIXEL_PX` line in `extraction_px128_default.txt`): it times no row b, so its shares of b use the
    b of every main call (another process, another machine); `head`, a main call at that size, or None."""
    run = load("extraction_px128.json")
    line = (RESULTS / "extraction_px128_default.txt").read_text()
    if f"SUPERPIXEL_PX = {default}" not in line:
        raise SystemExit(f"extraction_px128.json ran at {line.strip()!r}, not at the current default {default}")
    b_range = [row(load(name), "b")["seconds"] for name, *_ in CALLS]
    pairs = [p["added"] for p in run["pairs"]]
    in_run = [p["step_k_to_masks"] for p in run["pairs"]]
    alone = run["alone_ms"]

    def share(seconds: float) -> str:
        return f"{seconds / max(b_range):.4f} to {seconds / min(b_range):.4f}"

    return [f"At {default} px, `extraction_px128.json` (`bash bench/device_run.sh OUT extraction`, {len(pairs)} pairs "
            f"on an H200, 2026-12-02): the extraction minus its first k steps took {1000 * min(pairs):.0f} to "
            f"{1000 * max(pairs):.0f} ms (median {1000 * run['added_median_s']:.0f} ms); step k to the masks, in the "
            f"run, {1000 * min(in_run):.0f} to {1000 * max(in_run):.0f} ms (median "
            f"{1000 * run['step_k_to_masks_median_s']:.0f} ms); SLIC alone {alone['SLIC alone at 128 px']:.1f} ms "
            f"at 128 px and {alone['SLIC alone at 192 px']:.1f} ms at 192 px on that host. That part times no row b: "
            f"against the b of the main calls ({min(b_range):.3f} to {max(b_range):.3f} s, other processes and "
            f"machines, so not a ratio within one run) the medians are {share(run['added_median_s'])} (pairs) and "
            f"{share(run['step_k_to_masks_median_s'])} (in the run) of b. "
            + (f"No main call has run at {default} px yet." if head is None else
               f"Within one run, `{HEADLINE}` at {default} px: {extraction_pairs(head):.4f} (pairs) and "
               f"{extraction_in_run(head):.4f} (in the run) of its b.")]


def sizes_lines() -> list[str]:
    old, new, three = load("sizes.json"), load("sizes_px128.json"), load("subjects3_px128.json")["3"]
    lines = ["| case | code, device | b s | c s | c / b | d / b | peak c - b GiB |", "|---|---|---|---|---|---|---|"]
    for name, code in (("sizes_2048.json", "x0 image queued, H200"),
                       ("sizes_2048_2.json", "full-size voting (5543f84), H200, the lease after `main_rowf_2.json`'s"),
                       (BIG, f"voting on the working image, H200, in the command of `{HEADLINE}`")):
        big = load(name)["sizes"]["2048"]
        lines.append(f"| 2048 px | {code} (`{name}`) | {big['b'][0]:.2f} | {big['c'][0]:.2f} | "
                     f"{big['c'][0] / big['b'][0]:.3f} | | {big['c'][1] - big['b'][1]:.2f} |")
    cases = [(f"{size} px", "sizes_px128.json", found) for size, found in new["sizes"].items()]
    cases += [(f"rank {rank}", "sizes_px128.json", found) for rank, found in new["ranks"].items()]
    cases.append(("3 subjects", "subjects3_px128.json", three))
    for case, source, found in cases:
        d = f"{found['d'][0] / found['b'][0]:.3f}" if "d" in found else ""
        lines.append(f"| {case} | SLIC at 128 px, H200 (`{source}`) | {found['b'][0]:.2f} | {found['c'][0]:.2f} | "
                     f"{found['c'][0] / found['b'][0]:.3f} | {d} | {found['c'][1] - found['b'][1]:.2f} |")
    for size, found in old["sizes"].items():
        lines.append(f"| {size} px | before prefetching, H100 (`sizes.json`) | {found['b'][0]:.2f} | "
                     f"{found['c'][0]:.2f} | {found['c'][0] / found['b'][0]:.3f} | | |")
    done, _ = subjects_log()
    lines.append(f"| 3 subjects | before prefetching, H100 (`subjects_log.txt`) | {done['b 3']:.2f} | "
                 f"{done['c 3']:.2f} | {done['c 3'] / done['b 3']:.3f} | | |")
    for rank, found in old["ranks"].items():
        lines.append(f"| rank {rank} | before prefetching, H100 (`sizes.json`) | {found['b'][0]:.2f} | "
                     f"{found['c'][0]:.2f} | {found['c'][0] / found['b'][0]:.3f} | | |")
    return lines


def f_calls() -> list[str]:
    """The main calls that ran row f."""
    return [name for name, *_ in CALLS if row(load(name), "f") is not None]


def f_line() -> str:
    """Row f beside row d, in every call that ran both."""
    parts = [f"`{name}`: d / b {ratio(load(name), 'd'):.3f}, f / b {ratio(load(name), 'f'):.3f}" for name in f_calls()]
    return ("The existing FreeFuse pack (row f) in the same process: " + "; ".join(parts)
            + " (issue 5's figure for it, on an H100: 2.05).")


def f_section() -> list[str]:
    lines = ["`bench/existing_pack.py` builds the pack's Flux workflow (`workflows/flux_freefuse_api.json` of "
             "yaoliliu/FreeFuse) from its nodes, imported under a module name of their own, on the benchmark's "
             "model and LoRA files: `FreeFuseLoRALoader` per LoRA, `FreeFuseConceptMap`, the token positions given "
             "directly (the benchmark has no text encoder), `FreeFusePhase1Sampler` (its first pass, to collect "
             "step 5 at block 18, temperature 4000, top-k 0.1), `FreeFuseMaskApplicator` (attention bias on every "
             "block), then the same KSampler call as row b for the second pass. A run is both passes; all-ones masks "
             "(the pack's fallback when its phase 1 fails) stop the benchmark.", "",
             "| call | b s | c / b | d / b | f s | f / b | peak b GiB | peak d GiB | peak f GiB | f's runs, s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in f_calls():
        run = load(name)
        b, d, f = (row(run, letter) for letter in "bdf")
        lines.append(f"| `{name}` | {b['seconds']:.3f} | {ratio(run, 'c'):.3f} | {ratio(run, 'd'):.3f} | "
                     f"{f['seconds']:.3f} | {f['over_b']:.3f} | {b['peak_gib']:.2f} | {d['peak_gib']:.2f} | "
                     f"{f['peak_gib']:.2f} | {runs_of(f)} |")
    return lines


def hooks_table() -> list[str]:
    """Row e beside b, c, d of the same process, per subject count; e's time split into its model evaluations
    (one per region a step) and the rest (ComfyUI patching each hook's LoRA weights in and out between them)."""
    lines = ["| subjects | b s | c / b | d / b | e s | e / b | e evaluations | in them, s | between them, s | "
             "peak b GiB | peak c GiB | peak e GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for subjects, found in load(HOOKS).items():
        b, c, d, e = (found[k] for k in "bcde")
        clock = e[4][0]
        lines.append(f"| {subjects} | {b[0]:.3f} | {c[0] / b[0]:.3f} | {d[0] / b[0]:.3f} | {e[0]:.2f} | "
                     f"{e[0] / b[0]:.2f} | {clock['evaluations']} | {clock['eval_sum_ms'] / 1000:.2f} | "
                     f"{clock['between_sum_ms'] / 1000:.2f} | {b[1]:.2f} | {c[1]:.2f} | {e[1]:.2f} |")
    return lines


def hooks_line() -> str:
    found = load(HOOKS)
    parts = [f"{n} subjects e / b {v['e'][0] / v['b'][0]:.2f} (c {v['c'][0] / v['b'][0]:.3f}, d "
             f"{v['d'][0] / v['b'][0]:.3f}, peak e {v['e'][1]:.1f} GiB)" for n, v in found.items()]
    return "; ".join(parts)


def subjects_log() -> tuple[dict[str, float], list[str]]:
    """The H100 subjects part's log: seconds of each row's one timed run ("c 3", "e 2 at 512 px"), and the rows
    that began their warm-up but never finished (the call's time ran out)."""
    text = (RESULTS / "subjects_log.txt").read_text()
    found = re.findall(r"^\[\s*[\d.]+ s\] ([^:\n]+): ([\d.]+) s$", text, re.M)
    done = {name: float(seconds) for name, seconds in found}
    begun = re.findall(r"^\[\s*[\d.]+ s\] ([^:\n]+): warm-up$", text, re.M)
    return done, [name for name in begun if name not in done]


def settings_table() -> list[str]:
    lines = ["| run | b s | c s | c / b | c resident / b | peak c - b GiB | first run b s | first run c s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, name in (("fp8 weights (`--fp8`), SLIC at 128 px (`main_fp8_px128.json`)", "main_fp8_px128.json"),
                        ("`--disable-dynamic-vram`, SLIC at 128 px (`main_nodyn_px128.json`)", "main_nodyn_px128.json"),
                        ("fp8 weights, older code (`main_fp8.json`)", "main_fp8.json"),
                        ("`--disable-dynamic-vram`, older code (`main_nodyn.json`)", "main_nodyn.json")):
        run = load(name)
        first, resident = run["first_run_after_lora_change"], ratio(run, "c'")
        lines.append(f"| {label} | {row(run, 'b')['seconds']:.2f} | {row(run, 'c')['seconds']:.2f} | "
                     f"{ratio(run, 'c'):.3f} | {resident:.3f} | {peak_c(run):.2f} | "
                     f"{first['b merged']:.1f} | {first['c FreeFuse continue']:.1f} |")
    return lines


def earlier_table() -> list[str]:
    lines = ["| file | code | b s | c / b | d / b |", "|---|---|---|---|---|"]
    for name, code in EARLIER:
        run = load(name)
        lines.append(f"| `{name}` | {code} | {row(run, 'b')['seconds']:.3f} | {fmt(ratio(run, 'c'))} | "
                     f"{fmt(ratio(run, 'd'))} |")
    return lines


def plot(path: Path) -> None:
    """c / b and d / b of every main call in CALLS, with the targets as lines."""
    width, height, left, bottom, top_value, right = 1500, 360, 60, 300, 1.40, 130   # right: the target labels
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (bottom - 30) / (top_value - 1.0)
    y_of = lambda v: bottom - (v - 1.0) * scale  # noqa: E731
    draw.text((10, 8), "FreeFuse / merged LoRA, H200, 1024 px, 2 subjects (blue: continue c, orange: restart d)",
              fill="black")
    for target, label in ((TARGETS["c"], "c target"), (TARGETS["d"], "d target")):
        draw.line([left, y_of(target), width - right, y_of(target)], fill=(150, 150, 150))
        draw.text((width - right + 8, y_of(target) - 6), f"{label} {target:.3f}", fill=(90, 90, 90))
    slot = (width - left - right) / len(CALLS)
    for i, (name, *_) in enumerate(CALLS):
        run = load(name)
        x = left + i * slot
        for j, (letter, color) in enumerate((("c", (60, 120, 200)), ("d", (230, 140, 40)))):
            value = ratio(run, letter)
            if value is None:
                continue
            x0 = x + 10 + j * (slot / 2 - 10)
            draw.rectangle([x0, y_of(value), x0 + slot / 2 - 20, bottom], fill=color)
            draw.text((x0, y_of(value) - 14), f"{value:.3f}", fill="black")
        draw.text((x + 6, bottom + 8), name.removeprefix("main_").removesuffix(".json"), fill="black")
    draw.line([left, bottom, width - right, bottom], fill="black")
    draw.text((10, bottom - 6), "1.00", fill="black")
    image.save(path)


def summary(head: dict, second: dict) -> list[str]:
    """The README's benchmark section."""
    c_values = [ratio(load(n), "c") for n, *_ in CALLS]
    d_values = [ratio(load(n), "d") for n, *_ in CALLS if ratio(load(n), "d") is not None]
    pairs = [extraction_pairs(load(n)) for n, *_ in CALLS]
    peaks = [peak_c(load(n)) for n, *_ in CALLS]
    return [
        "[`docs/benchmarks.md`](docs/benchmarks.md) (written by `python3 bench/report.py` from the result files in "
        "`docs/bench/`): FreeFuse against a merged LoRA run on a FLUX.1-dev-sized model (random bf16 weights), "
        "1024 px, 28 steps, two rank-32 LoRAs, every row in one process on an NVIDIA H200.",
        "",
        f"The latest call (`{HEADLINE}`) and the one before it (`{SECOND}`, {SECOND_WHERE}) gave "
        f"`freefuse / merged = {ratio(head, 'd'):.2f}` and {ratio(second, 'd'):.2f} (restart, the default) and "
        f"continue {ratio(head, 'c'):.2f} and {ratio(second, 'c'):.2f}. Over the {len(CALLS)} main calls of the "
        f"current stage 1, continue ranged {min(c_values):.3f} to {max(c_values):.3f} and restart "
        f"{min(d_values):.3f} to {max(d_values):.3f}; the mask extraction took {min(pairs):.4f} to "
        f"{max(pairs):.4f} of the merged run, and peak GPU memory was at most {max(peaks):.2f} GiB above it. "
        "Not every target of issue 5 holds in every "
        "call: the benchmark page lists each target per call, and what makes the calls differ.",
        "",
        *latest_targets(),
        "",
        f_line(),
    ]


def main() -> None:
    head, second = load(HEADLINE), load(SECOND)
    c_values = [ratio(load(n), "c") for n, *_ in CALLS]
    d_values = [ratio(load(n), "d") for n, *_ in CALLS if ratio(load(n), "d") is not None]
    pairs = [extraction_pairs(load(n)) for n, *_ in CALLS]
    in_run = [v for v in (extraction_in_run(load(n)) for n, *_ in CALLS) if v is not None]
    peaks = [peak_c(load(n)) for n, *_ in CALLS]
    four = [load(n)["4"]["c"][0] / load(n)["4"]["b"][0] for n, *_ in SUBJECTS]
    big = load(BIG)["sizes"]["2048"]
    h100 = load("main_h100.json")
    hooks, unfinished = subjects_log()
    first = head["first_run_after_lora_change"]
    stages = head["extraction_breakdown_seconds"]
    versions = (RESULTS / VERSIONS).read_text().splitlines()[0].strip()
    px_note = (f" (the pack's default since: {default_px()} px, see Mask extraction)"
               if default_px() != head["superpixel_px"] else "")
    plot(RESULTS / "ratios.png")
    lines = [
        "# Benchmark: FreeFuse against an ordinary LoRA run",
        "",
        f"**freefuse / merged = {ratio(head, 'd'):.2f}** (restart, the default; 2 subjects, 1024 px); continue: "
        f"**{ratio(head, 'c'):.2f}**. Device: {head['device']}, the latest main call (`{HEADLINE}`, medians of "
        f"{len(row(head, 'b')['runs'])} runs, 2026-{CALLS[-1][1]}; torch and Triton of the device's "
        f"image, read in that call: {versions})."
        f" The one before it ({SECOND_WHERE}, "
        f"`{SECOND}`): restart {ratio(second, 'd'):.2f}, continue {ratio(second, 'c'):.2f}.",
        "",
        *latest_targets(),
        "",
        f"Setup: a FLUX.1-dev-sized Flux (19 double + 38 single blocks, hidden 3072) with random bf16 weights built "
        f"through ComfyUI 0.33.0's classes; two random rank-{head['rank']} LoRAs in ai-toolkit/diffusers format on "
        f"every linear layer of every block, saved as safetensors and loaded through the pack's loader; random "
        f"conditioning of the real shapes; {head['size']} x {head['size']} px, {head['steps']} steps, euler/simple, "
        f"cfg 1, batch 1; ComfyUI's default memory management (dynamic VRAM {head['dynamic_vram']}). Rows after one "
        f"warm-up each, all in one process; ratios are to row b of the same process. Mask extraction defaults: "
        f"step {STEP}, block 16, VAE decode of x0, superpixels at {head['superpixel_px']} px{px_note}. Rows: b the "
        "LoRAs through ComfyUI's stock loader (merged); c FreeFuse continue (extract, then the masked sampler from "
        "step k); d FreeFuse restart (extract, then the masked sampler from step 0: the default); B row b again after "
        "the FreeFuse rows; f the existing FreeFuse pack for ComfyUI (yaoliliu/FreeFuse) on the same model, LoRAs "
        "and conditioning, where the call ran it (see Row f).",
        "",
        "Commands: on the device, `COMFYUI_PATH=<ComfyUI 0.33> " + CALLS[-1][3] + "` for the latest call, each "
        "other call's in the table of every call below (row f needs `EXISTING_PACK=<its folder>`, the folder "
        "`freefuse_comfyui` of yaoliliu/FreeFuse, which this repository does not contain, and `f` in `MAIN_ROWS`); "
        "copy OUT's files to `docs/bench/` under the names the tables below use; here, `python3 bench/report.py`. "
        "On the device, ComfyUI's requirements that its image lacks came as wheels installed with `pip --no-deps "
        "--target`, and PyAV as a stand-in module whose names resolve (ComfyUI imports it; nothing here decodes "
        "video). "
        f"`flux_bench.py` ends by printing the two ratio lines (`{HEADLINE.replace('.json', '_stdout.txt')}`).",
        "",
        f"## The latest main call and the one before it (`{HEADLINE}`, `{SECOND}`)",
        "",
        f"`{HEADLINE}`:",
        "",
        *rows_table(head),
        "",
        f"`{SECOND}`:",
        "",
        *rows_table(second),
        "",
        "![ratios](bench/ratios.png)",
        "",
        "## The targets of issue 5, per call",
        "",
        f"- Continue, 2 subjects, 1024 px, c / b <= {TARGETS['c']}: "
        + ", ".join(fmt(v) for v in c_values) + f": {verdict(c_values, TARGETS['c'])} calls.",
        f"- Continue, 4 subjects, c / b <= {TARGETS['c4']:.2f}: " + ", ".join(fmt(v) for v in four)
        + f": {verdict(four, TARGETS['c4'])} calls.",
        f"- Restart (default), d / b <= 1 + k/steps + 0.06 = {TARGETS['d']:.4f}: " + ", ".join(fmt(v) for v in d_values)
        + f": {verdict(d_values, TARGETS['d'])} calls that ran row d. "
        + f_line(),
        f"- Mask extraction <= {TARGETS['extraction']} of b, as the extraction minus its own first k steps (pairs): "
        + ", ".join(f"{v:.4f}" for v in pairs) + f": {verdict(pairs, TARGETS['extraction'])}; clocked inside the run "
        "(from the GPU's end of step k-1 to the voted masks): " + ", ".join(f"{v:.4f}" for v in in_run)
        + f": {verdict(in_run, TARGETS['extraction'])}.",
        f"- Peak memory c - b <= {TARGETS['peak']} GiB at 1024 px: " + ", ".join(f"{v:.2f}" for v in peaks)
        + f": {verdict(peaks, TARGETS['peak'])}.",
        f"- 2048 px: b {big['b'][0]:.2f} s, c {big['c'][0]:.2f} s (c / b {big['c'][0] / big['b'][0]:.3f}), peak c - b "
        f"{big['c'][1] - big['b'][1]:.2f} GiB (`{BIG}`, current code, one timed run each). Stage 1 allocates no "
        "`N x N` tensor: the capture reads q, k of block b and builds only the rows it needs (asserted in "
        "`tests/core` at a 64 x 64 token grid).",
        f"- Row e (ComfyUI core hooks with the same LoRAs confined to the same masks), on the H200 with the pack code "
        f"of `main_rowf.json`, before the voting change (`{HOOKS}`, one timed run each): {hooks_line()}; see Row e "
        f"below. Earlier, on an H100 with older code (`main_h100.json`): e {ratio(h100, 'e'):.1f} x b, next to c "
        f"{ratio(h100, 'c'):.2f} and d "
        f"{ratio(h100, 'd'):.2f}; at 512 px with 2 subjects e took {hooks['e 2 at 512 px']:.1f} s against "
        f"{hooks['d 2 at 512 px']:.2f} s for FreeFuse restart, and {', '.join(unfinished)} did not finish inside "
        "the 10-minute call (`subjects_log.txt`).",
        "",
        "Every call of the current stage 1:",
        "",
        *calls_table(),
        "",
        "## Where the difference between calls comes from: the evaluation clock",
        "",
        "`flux_bench.EvalClock` records a CUDA event at the start and the end of every model evaluation of a timed "
        "run and reads the host's clock at its start. Per row, the median over its runs of: the median GPU time of "
        "the last 28 evaluations (the masked sampler's in c and d) and the median lag (how far the GPU was behind "
        "the host when an evaluation started; near 0 means the host's Python work is the bottleneck):",
        "",
        *clock_section(),
        "",
        "The GPU's clock and power during each row's timed runs (the monitor of `device_run.sh`, samples above "
        "300 W): a lower power at a higher clock than row b's means a GPU that waited more.",
        "",
        *monitor_section(),
        "",
        "## Mask extraction",
        "",
        "From `main_queued.json` on, the x0 image is decoded on the GPU and copied to pinned host memory behind "
        "steps 0..k-1, without the host waiting: the host queues step k's evaluation while the GPU still runs the "
        "steps before it, and the SLIC thread waits for the copy alone. Before, the decode's copy to the CPU "
        "emptied the GPU's queue, and step k began only after ComfyUI's VAE.decode had returned. Stages in "
        f"`{HEADLINE}` (each timed on its own with a sync around it, so they add up to more than the whole): "
        + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in stages.items()) + f" (at {head['superpixel_px']} px)"
        + ("; the same at 192 px, the default before: " + ", ".join(
            f"{k} {1000 * v:.1f} ms" for k, v in head["extraction_breakdown_seconds_192px"].items())
           if "extraction_breakdown_seconds_192px" in head else "") + ".",
        "",
        *stages_beside(head, second),
        "",
        *voting_lines(),
        "",
        *default_px_lines(head),
        "",
        "## Host time of a masked step",
        "",
        "`bash bench/device_run.sh OUT host` (8 steps of b, c and c-unfused, after a warm-up; medians of 3 runs): at "
        "128 px a step's GPU work is small, so its wall time is about the host's Python and launch time. The "
        "masked layer's hot path now works out once what it used to per call (the rank-mask memo key, `U^T` views, "
        "which slices a consumer holds), and the fused kernels launch through the compiled kernel's own launcher; "
        "the host's speed differs between machines, so compare c with b of the same call.",
        "",
        *host_table(),
        "",
        "## Row f: the existing FreeFuse pack",
        "",
        *f_section(),
        "",
        "## Row e: ComfyUI's core hooks",
        "",
        "`bash bench/device_run.sh OUT hooks` (on the H200, 2026-12-02): per subject count, b, c, d and e in one "
        "process, 1024 px, 28 steps, one timed run each after a warm-up (e's warm-up: the same graph for 2 steps). "
        "Row e is Create Hook LoRA (Model Only) per LoRA, each hook set on the conditioning with that subject's "
        "mask from the extraction, the conditionings combined, then KSampler: one model evaluation per region a "
        "step; between them ComfyUI swaps the model's weights to the next region's hook group "
        "(`ModelPatcher.patch_hooks`: merged once, then copied from a cache of merged weights it keeps on the GPU "
        "while memory allows, hence e's peak).",
        "",
        *hooks_table(),
        "",
        "## 4 subjects, 1024 px",
        "",
        "`SUBJECT_REPEATS=N bash bench/device_run.sh OUT subjects` (b, c, d, and c with every LoRA term resident "
        "on the GPU instead of prefetched; medians of N runs, c's runs listed):",
        "",
        *subjects_table(),
        "",
        "Their evaluation clock, where the call kept it:",
        "",
        *subjects_clock_table(),
        "",
        "## Sizes and ranks",
        "",
        "One timed run each after a warm-up. The rows of `sizes_px128.json` and `subjects3_px128.json` ran in one "
        "device command right after the one of `main_px128.json`: `python3 bench/flux_bench.py --comfyui "
        "$COMFYUI_PATH --out OUT --part sizes --sizes 1536 --ranks 16,64`, then `... --part subjects --subjects 3 "
        "--rows bcd --repeats 1`.",
        "",
        *sizes_lines(),
        "",
        "## Memory and the first run after a LoRA change",
        "",
        f"The LoRA tensors stay in pinned host memory ({head['lora_gib']['pinned_host']:.2f} GiB for the two LoRAs) "
        "and are copied to the GPU in groups of two blocks, two groups ahead of use, into a ring of three buffers "
        f"({head['lora_gib']['gpu']:.2f} GiB on the GPU). First run after a LoRA or strength change "
        f"(load and sampling), `{HEADLINE}`: merged {first['b merged']:.1f} s, FreeFuse continue "
        f"{first['c FreeFuse continue']:.1f} s (its Triton kernels compile and autotune in that run).",
        "",
        "## Other settings (H200, one timed run each)",
        "",
        "The code of `main_px128.json` (SLIC at 128 px, before the voting change): `python3 bench/flux_bench.py "
        "--comfyui $COMFYUI_PATH --out OUT --rows bcp --repeats 1 "
        "--extraction-repeats 1 --fp8` (and `--disable-dynamic-vram` instead of `--fp8`), one device command after "
        "the one of `sizes_px128.json`; older code: before stage 1 became one sampler call.",
        "",
        *settings_table(),
        "",
        "## Earlier code (H200, one call each)",
        "",
        "This page's earlier versions, in git, discuss the other result files in `docs/bench/`; these calls show "
        "how the ratios came down:",
        "",
        *earlier_table(),
    ]
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Benchmark\n") + len("## Benchmark\n")
    end = readme.index("\n## ", start)
    (ROOT / "README.md").write_text(readme[:start] + "\n" + "\n".join(summary(head, second)) + "\n" + readme[end:])


if __name__ == "__main__":
    main()
