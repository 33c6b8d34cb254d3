"""The markdown table of docs/fidelity.md from one or more `results.json` files of `evaluate.py`.

    python3 toyworld/table.py <dir>/results.json [<dir2>/results.json ...]

Variants of later files are added after those of earlier ones (a variant run on its own, say);
a variant present in two files is an error. Then the acceptance lines of issue 7, each with the
numbers it reads.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("present", "identity right", "identity leak", "texture leak", "mask IoU", "all present", "all right")


def merged(paths: list[Path]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {"two": {}, "three": {}}
    for path in paths:
        result = json.loads(path.read_text())
        for part in out:
            for variant, row in result.get(part, {}).items():
                if variant in out[part]:
                    raise ValueError(f"variant '{variant}' ({part}) is in more than one file")
                out[part][variant] = row
    return out


def table(results: dict[str, dict[str, dict]]) -> list[str]:
    lines = ["| variant | samples | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for part, prefix in (("two", ""), ("three", "three: ")):
        for variant, row in results[part].items():
            cells = [f"{row[c]:.3f}" if c in row else "" for c in COLUMNS]
            lines.append(f"| {prefix}{variant} | {row['samples']} | " + " | ".join(cells) + " |")
    return lines


def acceptance(two: dict[str, dict]) -> list[str]:
    """Issue 7's thresholds against the two-character rows."""
    none, merged_, truth, default = (two[k] for k in ("no LoRA", "merged", "ground-truth masks", "FreeFuse default"))
    leak = default["identity leak"]
    checks = [
        ("two-character presence with no LoRA >= 0.90 (all present)", none["all present"] >= 0.9,
         f"{none['all present']:.3f}"),
        ("merged identity leak >= 0.4", merged_["identity leak"] >= 0.4, f"{merged_['identity leak']:.3f}"),
        ("FreeFuse default leak <= 0.5 x merged", leak <= 0.5 * merged_["identity leak"],
         f"{leak:.3f} vs {0.5 * merged_['identity leak']:.3f}"),
        ("FreeFuse default leak within 0.1 of ground-truth masks", abs(leak - truth["identity leak"]) <= 0.1,
         f"{leak:.3f} vs {truth['identity leak']:.3f}"),
        ("FreeFuse default mask IoU >= 0.7", default["mask IoU"] >= 0.7, f"{default['mask IoU']:.3f}"),
    ]
    return [f"- {'met' if ok else 'NOT met'}: {name}: {value}" for name, ok, value in checks]


def main(argv: list[str]) -> None:
    results = merged([Path(a) for a in argv])
    sys.stdout.write("\n".join(table(results) + [""] + acceptance(results["two"])) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
